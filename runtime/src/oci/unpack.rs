//! Unpacks an image layer (a tar stream) into a directory of its own, as
//! hostile input.
//!
//! - paths: a leading `/` is dropped (layers are relative to the root);
//!   `..` anywhere refuses the layer; so does a path through a symbolic
//!   link (a layer that plants `etc -> /etc` and then writes `etc/passwd`
//!   must not write the host's);
//! - types: files, directories, symbolic links (stored as they are: they
//!   resolve inside the sandbox), hard links (to a file of the same layer,
//!   checked like any other path), and OCI whiteouts (`.wh.NAME`,
//!   `.wh..wh..opq`, turned into overlayfs's markers); devices and FIFOs
//!   are skipped;
//! - modes: setuid, setgid and sticky bits are cleared; owners are not
//!   kept (everything belongs to the worker, and appears as `nobody` in the
//!   sandbox), so read (and, if the owner had it, execute) permission is
//!   given to all;
//! - sizes: entries and bytes written are counted against [`Limits`].

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use crate::Error;

/// Bounds on what unpacking one image may do.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Layers per image.
    pub max_layers: usize,
    /// Bytes of one layer blob as stored (compressed).
    pub max_layer_bytes: u64,
    /// Bytes written for the whole image, unpacked.
    pub max_unpacked_bytes: u64,
    /// Entries (files, directories, links) in the whole image.
    pub max_entries: u64,
    /// Decompressed bytes beyond file contents (tar headers, extensions,
    /// the data of skipped entries) in the whole image.
    pub max_metadata_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layers: 64,
            max_layer_bytes: 2 << 30,
            max_unpacked_bytes: 8 << 30,
            max_entries: 500_000,
            max_metadata_bytes: 256 << 20,
        }
    }
}

/// Running totals across the layers of one image.
#[derive(Debug, Default)]
pub struct Totals {
    pub bytes: u64,
    pub entries: u64,
    /// Entries skipped (devices, FIFOs).
    pub skipped: u64,
    /// Bytes the layers decompressed to, metadata included.
    pub decompressed: u64,
}

fn bad(message: impl Into<String>) -> Error {
    Error::Image(message.into())
}

/// The path of an entry relative to the root, or why it is refused.
fn relative(raw: &Path) -> Result<PathBuf, Error> {
    let mut out = PathBuf::new();
    for component in raw.components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir => {
                return Err(bad(format!(
                    "layer entry {} leaves the root (`..`)",
                    raw.display()
                )));
            }
            Component::Prefix(_) => return Err(bad("layer entry has a path prefix")),
        }
    }
    if out.as_os_str().len() > 4096 {
        return Err(bad("layer entry path is longer than 4096 bytes"));
    }
    Ok(out)
}

/// Refuses `rel` if any directory on the way to it inside `root` is a
/// symbolic link (or not a directory).
fn no_links_on_the_way(root: &Path, rel: &Path) -> Result<(), Error> {
    let mut at = root.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for part in parts.iter().take(parts.len().saturating_sub(1)) {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(bad(format!(
                    "layer entry {} goes through a symbolic link",
                    rel.display()
                )));
            }
            Ok(meta) if !meta.is_dir() => {
                return Err(bad(format!(
                    "layer entry {} goes through a file",
                    rel.display()
                )));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&at).map_err(|e| bad(format!("create {}: {e}", rel.display())))?;
                fs::set_permissions(&at, fs::Permissions::from_mode(0o755))
                    .map_err(|e| bad(format!("chmod {}: {e}", rel.display())))?;
            }
            Err(e) => return Err(bad(format!("inspect {}: {e}", rel.display()))),
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (file, link or directory tree).
fn remove(path: &Path) -> Result<(), Error> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
    .map_err(|e| bad(format!("remove {}: {e}", path.display())))
}

/// Unpacks one layer (an uncompressed tar stream) into its own directory
/// `root`, whiteouts as overlayfs markers (a `0/0` character device for a
/// hidden name, `trusted.overlay.opaque=y` on an opaque directory).
pub fn apply_layer(
    root: &Path,
    layer: impl Read,
    limits: &Limits,
    totals: &mut Totals,
) -> Result<(), Error> {
    let mut archive = tar::Archive::new(layer);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("layer is not a tar stream: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt layer: {e}")))?;
        totals.entries += 1;
        if totals.entries > limits.max_entries {
            return Err(bad(format!(
                "image has more than {} entries",
                limits.max_entries
            )));
        }
        let raw = entry
            .path()
            .map_err(|e| bad(format!("layer entry path: {e}")))?
            .into_owned();
        let rel = relative(&raw)?;
        if rel.as_os_str().is_empty() {
            continue; // the root itself
        }
        no_links_on_the_way(root, &rel)?;
        let target = root.join(&rel);
        let name = rel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // OCI whiteouts, kept as overlayfs markers (see below).
        // Whiteouts become overlayfs's own markers: the layers stay apart
        // and the kernel hides what they hide.
        if name == ".wh..wh..opq" {
            let dir = target.parent().unwrap_or(root);
            rustix::fs::setxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| bad(format!("opaque whiteout {}: {e}", rel.display())))?;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // The name a whiteout hides must be one plain component:
            // `.wh...` would otherwise name the parent of the directory.
            if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
                return Err(bad(format!(
                    "layer entry {} is not a valid whiteout",
                    rel.display()
                )));
            }
            let hidden = target.with_file_name(hidden);
            remove(&hidden)?;
            nix::sys::stat::mknod(
                &hidden,
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| bad(format!("whiteout {}: {e}", rel.display())))?;
            continue;
        }
        let header = entry.header();
        // Owners are not kept (everything belongs to the worker's root,
        // which is nobody in the sandbox): what the owner could read or run,
        // everyone can. The image holds nothing a sandbox may not read.
        let mode = header.mode().unwrap_or(0o644) & 0o777;
        let mode = mode | 0o444 | if mode & 0o111 != 0 { 0o111 } else { 0 };
        let kind = header.entry_type();
        if kind.is_dir() {
            match fs::symlink_metadata(&target) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    remove(&target)?;
                    fs::create_dir(&target)
                        .map_err(|e| bad(format!("mkdir {}: {e}", rel.display())))?;
                }
                Err(_) => fs::create_dir(&target)
                    .map_err(|e| bad(format!("mkdir {}: {e}", rel.display())))?,
            }
            fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o755))
                .map_err(|e| bad(format!("chmod {}: {e}", rel.display())))?;
        } else if kind.is_file() {
            remove(&target)?;
            let size = header.size().unwrap_or(0);
            if totals.bytes.saturating_add(size) > limits.max_unpacked_bytes {
                return Err(bad(format!(
                    "image unpacks to more than {} bytes",
                    limits.max_unpacked_bytes
                )));
            }
            let mut file = fs::File::create(&target)
                .map_err(|e| bad(format!("create {}: {e}", rel.display())))?;
            // Copies what the header announced, and no more.
            let written = io::copy(&mut (&mut entry).take(size), &mut file)
                .map_err(|e| bad(format!("write {}: {e}", rel.display())))?;
            totals.bytes += written;
            file.set_permissions(fs::Permissions::from_mode(mode))
                .map_err(|e| bad(format!("chmod {}: {e}", rel.display())))?;
        } else if kind.is_symlink() {
            let link = entry
                .link_name()
                .map_err(|e| bad(format!("symlink target: {e}")))?
                .ok_or_else(|| bad("symlink without a target"))?;
            remove(&target)?;
            symlink(&link, &target).map_err(|e| bad(format!("symlink {}: {e}", rel.display())))?;
        } else if kind.is_hard_link() {
            let link = entry
                .link_name()
                .map_err(|e| bad(format!("hard link target: {e}")))?
                .ok_or_else(|| bad("hard link without a target"))?;
            let source_rel = relative(&link)?;
            no_links_on_the_way(root, &source_rel)?;
            let source = root.join(&source_rel);
            let meta = fs::symlink_metadata(&source).map_err(|_| {
                bad(format!(
                    "hard link {} to a missing file (links reach only files of their own layer)",
                    rel.display()
                ))
            })?;
            if !meta.is_file() {
                return Err(bad(format!(
                    "hard link {} to something not a file",
                    rel.display()
                )));
            }
            remove(&target)?;
            fs::hard_link(&source, &target)
                .map_err(|e| bad(format!("link {}: {e}", rel.display())))?;
        } else {
            // Character and block devices, FIFOs and anything else.
            totals.skipped += 1;
        }
    }
    Ok(())
}

/// Extracts an image layout shipped as a tar file into `dest`: only
/// directories and regular files (a link in a layout could make a "blob"
/// of any host file), under the same path rules and size limits as layers.
pub fn extract_layout_archive(
    archive: impl Read,
    dest: &Path,
    limits: &Limits,
) -> Result<(), Error> {
    let mut archive = tar::Archive::new(archive);
    let entries = archive
        .entries()
        .map_err(|e| bad(format!("the layout archive is not a tar file: {e}")))?;
    let mut totals = Totals::default();
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("corrupt layout archive: {e}")))?;
        totals.entries += 1;
        if totals.entries > limits.max_entries {
            return Err(bad("the layout archive has too many entries"));
        }
        let raw = entry
            .path()
            .map_err(|e| bad(format!("layout archive path: {e}")))?
            .into_owned();
        let rel = relative(&raw)?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        no_links_on_the_way(dest, &rel)?;
        let target = dest.join(&rel);
        let kind = entry.header().entry_type();
        if kind.is_dir() {
            fs::create_dir_all(&target)
                .map_err(|e| bad(format!("mkdir {}: {e}", rel.display())))?;
        } else if kind.is_file() {
            let size = entry.header().size().unwrap_or(0);
            totals.bytes = totals.bytes.saturating_add(size);
            if totals.bytes > limits.max_unpacked_bytes {
                return Err(bad("the layout archive is too large"));
            }
            let mut file = fs::File::create(&target)
                .map_err(|e| bad(format!("create {}: {e}", rel.display())))?;
            io::copy(&mut (&mut entry).take(size), &mut file)
                .map_err(|e| bad(format!("write {}: {e}", rel.display())))?;
        } else {
            return Err(bad(format!(
                "layout archive entry {} is not a file or directory",
                rel.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::relative;
    use std::path::Path;

    #[test]
    fn paths_are_made_relative_and_dot_dot_is_refused() {
        assert_eq!(relative(Path::new("/etc/x")).ok(), Some("etc/x".into()));
        assert_eq!(relative(Path::new("./a/./b")).ok(), Some("a/b".into()));
        assert!(relative(Path::new("a/../../b")).is_err());
        assert!(relative(Path::new("../x")).is_err());
    }
}

//! Root filesystems: the built-in image (the `carapace-agent` binary and
//! busybox), kept in a content-addressed cache and shared read-only by
//! every sandbox that uses it.
//!
//! The cache directory is `<cache>/sha256-<digest>/`, the digest
//! covering everything the image is made of; an image is assembled in a
//! temporary directory and renamed into place, so a crash never leaves a
//! half-built image under a final name.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::Error;

/// The agent binary, built static by `build.rs`.
pub const AGENT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/carapace-agent"));

/// Where the agent sits in the built-in image.
pub const AGENT_PATH: &str = "/sbin/carapace-agent";

/// Where the agent is put in an OCI image (beside whatever the image has).
pub const OCI_AGENT_PATH: &str = "/.carapace/carapace-agent";

/// Bumped whenever the layout below changes, so old cache entries are not
/// reused.
const LAYOUT_VERSION: &[u8] = b"builtin-image-v2";

/// Directories every image needs as mount points (the rootfs is read-only,
/// so they must exist before a sandbox starts).
const MOUNT_POINTS: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "tmp",
    "workspace",
    "memory",
    "run",
    "etc",
];

/// Makes sure the built-in image is in `cache`, building it from `busybox`
/// (a static busybox binary) if needed; its root directory.
pub fn ensure_builtin(cache: &Path, busybox: &Path) -> Result<PathBuf, Error> {
    let busybox_bytes = fs::read(busybox)
        .map_err(|e| Error::Image(format!("cannot read busybox at {}: {e}", busybox.display())))?;
    let digest = digest_of(&[LAYOUT_VERSION, AGENT, &busybox_bytes]);
    install(
        cache,
        &format!("sha256-{digest}"),
        "sbin/carapace-agent",
        |tmp| build(tmp, &busybox_bytes, busybox),
    )
}

/// Refuses an image cache that a sandbox's unprivileged root could not
/// reach: a directory on the way without `o+x` fails every container start
/// with an obscure "failed to prepare rootfs".
fn searchable_by_sandboxes(dir: &Path) -> Result<(), Error> {
    let dir = fs::canonicalize(dir).map_err(io("resolve the image cache"))?;
    for ancestor in dir.ancestors() {
        let mode = fs::metadata(ancestor)
            .map_err(io("inspect the image cache"))?
            .permissions()
            .mode();
        if mode & 0o001 == 0 {
            return Err(Error::Image(format!(
                "{} is not searchable by other users (mode {:o}); sandboxes could not open their root filesystem \
                 under {}: choose another image_dir or chmod o+x it",
                ancestor.display(),
                mode & 0o7777,
                dir.display()
            )));
        }
    }
    Ok(())
}

/// Makes sure the image `reference` (or the only image) of the OCI image
/// layout `layout` (a directory, or a tar file of one) is unpacked in
/// `cache` (its layers under `layers/`, shared with other images); the
/// directories of an overlayfs of it, top first: the agent's layer, then
/// the image's layers. A layer already unpacked costs nothing more than
/// reading `index.json` and the manifest.
pub fn ensure_oci(
    cache: &Path,
    layout: &Path,
    reference: Option<&str>,
    limits: &crate::oci::Limits,
    progress: crate::oci::Progress<'_>,
) -> Result<Vec<PathBuf>, Error> {
    // A layout shipped as a tar file is extracted first (strictly: files
    // and directories only), and removed afterwards.
    let extracted = if layout.is_file() {
        fs::create_dir_all(cache).map_err(io("create the image cache"))?;
        static EXTRACTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = EXTRACTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = cache.join(format!(".layout-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).map_err(io("extract the layout"))?;
        let archive = fs::File::open(layout).map_err(io("open the layout archive"))?;
        if let Err(e) = crate::oci::unpack::extract_layout_archive(archive, &dir, limits) {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Some(dir)
    } else {
        None
    };
    let result = ensure_oci_dir(
        cache,
        extracted.as_deref().unwrap_or(layout),
        reference,
        limits,
        progress,
    );
    if let Some(dir) = extracted {
        let _ = fs::remove_dir_all(dir);
    }
    result
}

fn ensure_oci_dir(
    cache: &Path,
    layout: &Path,
    reference: Option<&str>,
    limits: &crate::oci::Limits,
    progress: crate::oci::Progress<'_>,
) -> Result<Vec<PathBuf>, Error> {
    fs::create_dir_all(cache).map_err(io("create the image cache"))?;
    searchable_by_sandboxes(cache)?;
    let (layers, totals) =
        crate::oci::unpack_layers(layout, reference, &cache.join("layers"), limits, progress)?;
    if totals.skipped > 0 {
        tracing::info!(
            skipped = totals.skipped,
            "device nodes and FIFOs in the image were skipped"
        );
    }
    let mut lower = vec![agent_layer(cache)?];
    // A layer can appear twice in a manifest (empty layers often do), and
    // overlayfs refuses a directory twice: the topmost occurrence is kept,
    // which the lower copies of the same content cannot change.
    for layer in layers.into_iter().rev() {
        if !lower.contains(&layer) {
            lower.push(layer);
        }
    }
    Ok(lower)
}

/// The layer laid over every OCI image: the agent at [`OCI_AGENT_PATH`]
/// and the sandbox's mount points as directories (hiding whatever an image
/// has at those names). Built by the worker, never from image content.
fn agent_layer(cache: &Path) -> Result<PathBuf, Error> {
    let digest = digest_of(&[LAYOUT_VERSION, AGENT]);
    install(
        cache,
        &format!("agent-{digest}"),
        OCI_AGENT_PATH.trim_start_matches('/'),
        |tmp| {
            for dir in MOUNT_POINTS.iter().chain(&[".carapace"]) {
                fs::create_dir_all(tmp.join(dir)).map_err(io("create a mount point"))?;
                fs::set_permissions(tmp.join(dir), fs::Permissions::from_mode(0o755))
                    .map_err(io("set a directory mode"))?;
            }
            write(
                &tmp.join(OCI_AGENT_PATH.trim_start_matches('/')),
                AGENT,
                0o755,
            )?;
            fs::set_permissions(tmp, fs::Permissions::from_mode(0o755))
                .map_err(io("set a directory mode"))
        },
    )
}

/// The hex SHA-256 of length-prefixed parts.
fn digest_of(parts: &[&[u8]]) -> String {
    let mut digest = Sha256::new();
    for part in parts {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part);
    }
    digest
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `cache/name`, built by `build` into a temporary directory and renamed
/// into place unless it is there already (its `marker` file exists): a
/// crash never leaves a half-built image under a final name, and two
/// builders of the same image both end with the one that landed.
fn install(
    cache: &Path,
    name: &str,
    marker: &str,
    build: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<PathBuf, Error> {
    fs::create_dir_all(cache).map_err(io("create the image cache"))?;
    searchable_by_sandboxes(cache)?;
    let root = cache.join(name);
    if root.join(marker).exists() {
        return Ok(root);
    }
    static BUILDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let build_no = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let short = name.get(..20).unwrap_or(name);
    let tmp = cache.join(format!(".build-{}-{build_no}-{short}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    if let Err(e) = build(&tmp) {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match fs::rename(&tmp, &root) {
        Ok(()) => Ok(root),
        Err(_) if root.join(marker).exists() => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(root)
        }
        Err(e) => Err(Error::Image(format!("cannot install the image: {e}"))),
    }
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::Image(format!("cannot {what}: {e}"))
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), Error> {
    let mut f = fs::File::create(path).map_err(io("write an image file"))?;
    f.write_all(data).map_err(io("write an image file"))?;
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("set a file mode"))?;
    Ok(())
}

fn build(root: &Path, busybox_bytes: &[u8], busybox: &Path) -> Result<(), Error> {
    for dir in MOUNT_POINTS
        .iter()
        .chain(&["bin", "sbin", "usr/bin", "usr/sbin"])
    {
        fs::create_dir_all(root.join(dir)).map_err(io("create an image directory"))?;
    }
    write(&root.join("bin/busybox"), busybox_bytes, 0o755)?;
    write(&root.join("sbin/carapace-agent"), AGENT, 0o755)?;
    write(
        &root.join("etc/passwd"),
        b"root:x:0:0:root:/workspace:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        0o644,
    )?;
    write(
        &root.join("etc/group"),
        b"root:x:0:\nnogroup:x:65534:\n",
        0o644,
    )?;
    write(
        &root.join("etc/hosts"),
        b"127.0.0.1 localhost\n::1 localhost\n",
        0o644,
    )?;
    // One link per applet, as `busybox --install -s` would make.
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .map_err(|e| Error::Image(format!("cannot list busybox applets: {e}")))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains('/') || applet == "busybox" {
            continue;
        }
        let link = root.join("bin").join(applet);
        if !link.exists() {
            symlink("busybox", &link).map_err(io("link a busybox applet"))?;
        }
    }
    for dir in ["", "tmp", "workspace", "memory"] {
        let mode = if dir == "tmp" { 0o1777 } else { 0o755 };
        fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode))
            .map_err(io("set a directory mode"))?;
    }
    Ok(())
}

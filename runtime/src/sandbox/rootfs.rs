//! Root filesystems of sandboxes that run an OCI image: a read-only
//! overlayfs of the image's layers (shared by every sandbox and image that
//! has them) under the agent's layer, mounted on the host at
//! `<image_dir>/mnt/<worker>/<container>` (the path must be searchable by
//! the sandbox's unprivileged root, like the image cache itself) and
//! unmounted when the sandbox goes. No upper layer: the root is read-only.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::Error;

/// Mounts the overlay of `lower` (top first) read-only at `target`.
pub fn mount_overlay(target: &Path, lower: &[PathBuf]) -> Result<(), Error> {
    let mut option = String::from("lowerdir=");
    for (i, dir) in lower.iter().enumerate() {
        let dir = dir
            .to_str()
            .ok_or_else(|| Error::Image("an image path is not UTF-8".into()))?;
        // overlayfs separates layers with ':' and options with ','.
        if dir.contains([':', ',', '\\']) {
            return Err(Error::Image(format!(
                "the image path {dir} contains ':', ',' or a backslash"
            )));
        }
        if i > 0 {
            option.push(':');
        }
        option.push_str(dir);
    }
    // The kernel takes mount options up to a page.
    if option.len() > 4000 {
        return Err(Error::Image(
            "the image has too many layers to mount".into(),
        ));
    }
    std::fs::create_dir_all(target)
        .map_err(|e| Error::Io(format!("create {}: {e}", target.display())))?;
    // The sandbox's root reaches its root filesystem through these, as an
    // unprivileged user: whatever the umask, they must be searchable.
    for dir in target.ancestors().take(3) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_RDONLY | MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
        Some(option.as_str()),
    )
    .map_err(|e| Error::Sandbox(format!("cannot mount the image: {e}")))
}

/// Unmounts `target` (if mounted) and removes the directory.
pub fn unmount(target: &Path) {
    let _ = umount2(target, MntFlags::MNT_DETACH);
    let _ = std::fs::remove_dir(target);
}

/// Unmounts and removes every mount point under `dir` (a worker's, after
/// a crash); how many.
pub fn unmount_all(dir: &Path) -> usize {
    let mut count = 0;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            unmount(&entry.path());
            count += 1;
        }
    }
    count
}

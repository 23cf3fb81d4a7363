//! Leftover sandbox cgroups: after a crash, a sandbox's cgroups may outlive
//! its container state. Every cgroup under `carapace/<worker>/` in any
//! hierarchy (v1 controllers, the v2 unified tree, or a pure v2 host) has
//! its processes killed and is removed. Other workers' cgroups on the same
//! host are left alone.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

fn carapace_dirs(worker: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut dirs = vec![root.join("carapace").join(worker)];
    if let Ok(entries) = fs::read_dir(root) {
        dirs.extend(
            entries
                .flatten()
                .map(|e| e.path().join("carapace").join(worker)),
        );
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

/// Kills and removes every sandbox cgroup; how many sandboxes had one.
pub fn remove_leftovers(worker: &str) -> usize {
    let mut names = HashSet::new();
    for parent in carapace_dirs(worker) {
        let Ok(entries) = fs::read_dir(&parent) else {
            continue;
        };
        for cgroup in entries.flatten().map(|e| e.path()).filter(|p| p.is_dir()) {
            if let Some(name) = cgroup.file_name() {
                names.insert(name.to_owned());
            }
            remove(&cgroup);
        }
        // The worker's own level goes too; it is made again when needed.
        let _ = fs::remove_dir(&parent);
    }
    names.len()
}

fn remove(cgroup: &Path) {
    for _ in 0..50 {
        let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if fs::remove_dir(cgroup).is_ok() || !cgroup.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(cgroup = %cgroup.display(), "cannot remove a leftover sandbox cgroup");
}

/// Whether sandboxes' swap can be limited: cgroup v1 with swap accounting
/// (`memory.memsw.*`), or cgroup v2.
pub fn accounts_swap() -> bool {
    let root = Path::new(CGROUP_ROOT);
    root.join("memory/memory.memsw.limit_in_bytes").exists()
        || root.join("cgroup.controllers").exists()
}

/// How many times the kernel's OOM killer has killed a process in the
/// sandbox's cgroup (`container` of `worker`): `oom_kill` in v1's
/// `memory.oom_control` or v2's `memory.events`.
pub fn oom_kills(worker: &str, container: &str) -> Option<u64> {
    let root = Path::new(CGROUP_ROOT);
    let candidates = [
        root.join("memory/carapace")
            .join(worker)
            .join(container)
            .join("memory.oom_control"),
        root.join("carapace")
            .join(worker)
            .join(container)
            .join("memory.events"),
    ];
    candidates.iter().find_map(|file| {
        let text = fs::read_to_string(file).ok()?;
        text.lines().find_map(|l| {
            l.strip_prefix("oom_kill ")
                .and_then(|v| v.trim().parse().ok())
        })
    })
}

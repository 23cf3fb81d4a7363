//! The hardened OCI runtime spec of every sandbox. Tenants choose limits
//! within bounds; nothing here can be turned down by them.
//!
//! - a new user namespace mapping container ids 0..65536 onto a host range
//!   of the sandbox's own, plus PID, mount, network, IPC, UTS and cgroup
//!   namespaces;
//! - no capabilities at all, `no_new_privileges`, the seccomp allow-list
//!   of [`super::seccomp`];
//! - a read-only root filesystem, size-limited tmpfs on `/tmp` and
//!   `/workspace`, `/proc` and `/sys` with the usual paths masked or
//!   read-only, `/sys` read-only entirely;
//! - memory (and memory plus swap, where the host accounts swap), CPU and
//!   pids limits, no devices beyond null, zero, full, random, urandom and
//!   tty.

use std::path::Path;

use serde_json::{Value, json};

use super::seccomp;

/// How many user and group ids each sandbox's user namespace maps.
pub const ID_RANGE: u32 = 65_536;

/// The most an agent's memory can hold in a sandbox's `/memory` (a tmpfs:
/// a ceiling, not a reservation; what it holds counts against the
/// sandbox's memory limit). The memory quota is checked when it syncs.
pub const MEMORY_DIR_MIB: u64 = 1024;

pub use carapace_scheduler::Limits;

/// The paths of `/proc` and `/sys` hidden from sandboxes (Docker's list).
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/config.gz",
    "/proc/modules",
];

/// The paths of `/proc` made read-only.
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Everything that varies between sandboxes.
pub struct SpecInput<'a> {
    pub id: &'a str,
    /// The worker's tag (see [`cgroup_path`]).
    pub worker: &'a str,
    pub rootfs: &'a Path,
    /// First host uid/gid of the sandbox's own range of [`ID_RANGE`] ids.
    pub host_id_base: u32,
    pub limits: Limits,
    /// Path of the container init (the agent) inside the rootfs.
    pub init: &'a str,
    /// Whether the host accounts swap per cgroup: then memory plus swap is
    /// limited to the memory limit (no swap at all).
    pub limit_swap: bool,
}

/// The cgroup path of a sandbox, relative to each hierarchy's root:
/// `/carapace/<worker>/<id>`, so that workers sharing a host (tests do)
/// never touch each other's cgroups.
pub fn cgroup_path(worker: &str, id: &str) -> String {
    format!("/carapace/{worker}/{id}")
}

/// The OCI `config.json` of a sandbox.
pub fn build(input: &SpecInput<'_>) -> Value {
    let limits = input.limits;
    let memory = u64::from(limits.memory_mib) << 20;
    let period: u64 = 100_000;
    let quota = u64::from(limits.cpu_millis) * period / 1000;
    let map = json!([{"containerID": 0, "hostID": input.host_id_base, "size": ID_RANGE}]);
    let empty: [&str; 0] = [];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [input.init],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/workspace"],
            "cwd": "/workspace",
            "capabilities": {
                "bounding": empty, "effective": empty, "inheritable": empty,
                "permitted": empty, "ambient": empty,
            },
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 4096},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
            ],
            "noNewPrivileges": true,
            "oomScoreAdj": 1000,
        },
        "root": {"path": input.rootfs, "readonly": true},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=1m"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=16m"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", format!("size={}m", limits.tmp_mib)]},
            {"destination": "/workspace", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755", format!("size={}m", limits.workspace_mib)]},
            {"destination": "/memory", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=755", format!("size={MEMORY_DIR_MIB}m")]},
        ],
        "linux": {
            "uidMappings": map,
            "gidMappings": map,
            "namespaces": [
                {"type": "user"}, {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"},
            ],
            "cgroupsPath": cgroup_path(input.worker, input.id),
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": if input.limit_swap {
                    json!({"limit": memory, "swap": memory, "disableOOMKiller": false})
                } else {
                    json!({"limit": memory, "disableOOMKiller": false})
                },
                "cpu": {"quota": quota, "period": period},
                "pids": {"limit": limits.pids},
            },
            "maskedPaths": MASKED,
            "readonlyPaths": READ_ONLY,
            "seccomp": seccomp::profile(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use libcontainer::oci_spec::runtime::{LinuxNamespaceType, Spec};

    fn spec() -> Spec {
        let value = build(&SpecInput {
            id: "sbx-test",
            worker: "w",
            rootfs: Path::new("/images/x"),
            host_id_base: 1 << 28,
            limits: Limits::default(),
            init: "/sbin/carapace-agent",
            limit_swap: true,
        });
        match serde_json::from_value(value) {
            Ok(spec) => spec,
            Err(e) => panic!("the spec must parse: {e}"),
        }
    }

    #[test]
    fn every_hardening_is_present() {
        let spec = spec();
        let process = spec
            .process()
            .as_ref()
            .map(|p| (p.no_new_privileges(), p.capabilities().clone()));
        let Some((Some(true), Some(caps))) = process else {
            panic!("no_new_privileges and capabilities")
        };
        assert!(caps.bounding().as_ref().is_some_and(|c| c.is_empty()));
        assert!(caps.effective().as_ref().is_some_and(|c| c.is_empty()));
        assert!(caps.ambient().as_ref().is_some_and(|c| c.is_empty()));
        assert_eq!(spec.root().as_ref().and_then(|r| r.readonly()), Some(true));
        let Some(linux) = spec.linux() else {
            panic!("linux section")
        };
        let kinds: Vec<_> = linux
            .namespaces()
            .iter()
            .flatten()
            .map(|n| n.typ())
            .collect();
        for kind in [
            LinuxNamespaceType::User,
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Network,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Cgroup,
        ] {
            assert!(kinds.contains(&kind), "{kind:?}");
        }
        let uid = linux
            .uid_mappings()
            .iter()
            .flatten()
            .next()
            .map(|m| (m.container_id(), m.host_id()));
        assert_eq!(uid, Some((0, 1 << 28)));
        assert!(linux.seccomp().is_some());
        let resources = linux.resources().as_ref();
        assert!(
            resources
                .and_then(|r| r.memory().as_ref())
                .and_then(|m| m.limit())
                .is_some()
        );
        assert!(resources.and_then(|r| r.pids().as_ref()).is_some());
        assert!(
            linux
                .masked_paths()
                .iter()
                .flatten()
                .any(|p| p == "/proc/kcore")
        );
    }

    #[test]
    fn limits_have_bounds() {
        assert_eq!(Limits::default().out_of_bounds(), None);
        let huge = Limits {
            memory_mib: 1 << 20,
            ..Limits::default()
        };
        assert_eq!(huge.out_of_bounds().map(|f| f.0), Some("memory_mib"));
        let none = Limits {
            pids: 1,
            ..Limits::default()
        };
        assert_eq!(none.out_of_bounds().map(|f| f.0), Some("pids"));
    }
}

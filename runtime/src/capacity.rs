//! How much CPU and memory this host can give to runs.
//!
//! [`probe`] reads the real limits of the process it runs in: the host's CPUs
//! and memory, each further limited by the cgroup v2 the process lives in (a
//! worker inside a container or a systemd slice only owns what that cgroup
//! allows, not the whole machine). The parsing is split into pure functions
//! over `&str` so it can be tested without a particular host.
//!
//! Only cgroup v2 is consulted. On a cgroup v1 host the CPU figure still
//! honours v1 quotas (through [`std::thread::available_parallelism`]), but a
//! v1 memory limit is not seen.

use std::io;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

/// Where the cgroup v2 hierarchy is mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// What this host can offer to runs. Reported by the worker in heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// CPU time available, in thousandths of a CPU (`1500` is one and a half
    /// CPUs). Millis rather than whole CPUs because cgroup quotas are often
    /// fractional.
    pub cpus_millis: u64,
    /// Memory available, in bytes.
    pub memory_bytes: u64,
}

/// Why the host's capacity could not be determined.
#[derive(Debug, thiserror::Error)]
pub enum CapacityError {
    /// A file that should be readable could not be read.
    #[error("could not read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// The standard library could not tell how many CPUs there are.
    #[error("could not determine the number of CPUs: {0}")]
    Parallelism(io::Error),
    /// A kernel-provided file did not have the expected shape.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// Which file or value, e.g. `"cpu.max"`.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

fn malformed(what: &'static str, detail: impl Into<String>) -> CapacityError {
    CapacityError::Malformed {
        what,
        detail: detail.into(),
    }
}

/// Reads this host's capacity as seen by the current process.
///
/// - CPUs: [`std::thread::available_parallelism`] (which already honours CPU
///   affinity), times 1000, lowered to the tightest cgroup v2 `cpu.max`
///   quota of the process's cgroup or any of its ancestors.
/// - Memory: `MemTotal` from `/proc/meminfo`, lowered to the tightest cgroup
///   v2 `memory.max` of the process's cgroup or any of its ancestors.
///
/// Cgroup files that do not exist (no cgroup v2, the root cgroup, a
/// controller not enabled) impose no limit. Files that exist but cannot be
/// read or parsed are errors: reporting more capacity than the host has
/// would get runs placed where they cannot fit.
///
/// This does blocking file I/O; call it at start-up or from a blocking task.
pub fn probe() -> Result<Capacity, CapacityError> {
    let cpus = std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .map_err(CapacityError::Parallelism)?;
    let mut cpus_millis = u64::try_from(cpus)
        .ok()
        .and_then(|n| n.checked_mul(1000))
        .ok_or_else(|| malformed("CPU count", format!("{cpus} CPUs overflows")))?;

    let meminfo = read("/proc/meminfo")?;
    let mut memory_bytes = parse_meminfo_total(&meminfo)?;

    for dir in cgroup_dirs()? {
        if let Some(text) = read_if_exists(&dir.join("cpu.max"))?
            && let Some(limit) = parse_cpu_max(&text)?
        {
            cpus_millis = cpus_millis.min(limit);
        }
        if let Some(text) = read_if_exists(&dir.join("memory.max"))?
            && let Some(limit) = parse_memory_max(&text)?
        {
            memory_bytes = memory_bytes.min(limit);
        }
    }

    Ok(Capacity {
        cpus_millis,
        memory_bytes,
    })
}

/// The cgroup v2 directories whose limits apply to this process: its own
/// cgroup first, then each ancestor up to (not including) the root, since a
/// limit set on a parent slice binds its children too. Empty when the process
/// has no cgroup v2 membership.
fn cgroup_dirs() -> Result<Vec<PathBuf>, CapacityError> {
    let Some(text) = read_if_exists(Path::new("/proc/self/cgroup"))? else {
        return Ok(Vec::new());
    };
    Ok(match parse_cgroup_v2_path(&text)? {
        Some(path) => ancestor_dirs(Path::new(CGROUP_ROOT), path),
        None => Vec::new(),
    })
}

/// `root/a/b/c`, `root/a/b`, `root/a` for the cgroup path `/a/b/c`; nothing
/// for `/`. The root cgroup carries no `cpu.max` or `memory.max`.
fn ancestor_dirs(root: &Path, cgroup_path: &str) -> Vec<PathBuf> {
    let components: Vec<&str> = cgroup_path.split('/').filter(|c| !c.is_empty()).collect();
    (1..=components.len())
        .rev()
        .map(|n| {
            components[..n]
                .iter()
                .fold(root.to_path_buf(), |p, c| p.join(c))
        })
        .collect()
}

fn read(path: &str) -> Result<String, CapacityError> {
    std::fs::read_to_string(path).map_err(|source| CapacityError::Read {
        path: path.into(),
        source,
    })
}

fn read_if_exists(path: &Path) -> Result<Option<String>, CapacityError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CapacityError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Total memory in bytes from the contents of `/proc/meminfo`, whose line
/// looks like `MemTotal:       24684096 kB`.
pub fn parse_meminfo_total(meminfo: &str) -> Result<u64, CapacityError> {
    const WHAT: &str = "/proc/meminfo";
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .ok_or_else(|| malformed(WHAT, "no MemTotal line"))?;
    let mut fields = line.split_whitespace();
    let (Some(number), Some("kB"), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(malformed(
            WHAT,
            format!("MemTotal is not `<n> kB`: {line:?}"),
        ));
    };
    let kib: u64 = number
        .parse()
        .map_err(|_| malformed(WHAT, format!("MemTotal is not a number: {number:?}")))?;
    let bytes = kib
        .checked_mul(1024)
        .ok_or_else(|| malformed(WHAT, format!("MemTotal {kib} kB overflows")))?;
    if bytes == 0 {
        return Err(malformed(WHAT, "MemTotal is zero"));
    }
    Ok(bytes)
}

/// The CPU limit in thousandths of a CPU from a cgroup v2 `cpu.max` file,
/// which holds `$QUOTA $PERIOD` in microseconds: `200000 100000` is two
/// CPUs, `max 100000` is no limit (`None`).
pub fn parse_cpu_max(cpu_max: &str) -> Result<Option<u64>, CapacityError> {
    const WHAT: &str = "cpu.max";
    let mut fields = cpu_max.split_whitespace();
    let (Some(quota), Some(period), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(malformed(
            WHAT,
            format!("expected `$QUOTA $PERIOD`, got {cpu_max:?}"),
        ));
    };
    let period: u64 =
        period.parse().ok().filter(|&p| p > 0).ok_or_else(|| {
            malformed(WHAT, format!("period is not a positive number: {period:?}"))
        })?;
    if quota == "max" {
        return Ok(None);
    }
    let quota: u64 = quota.parse().ok().filter(|&q| q > 0).ok_or_else(|| {
        malformed(
            WHAT,
            format!("quota is not a positive number or `max`: {quota:?}"),
        )
    })?;
    let millis = quota
        .checked_mul(1000)
        .ok_or_else(|| malformed(WHAT, format!("quota {quota} overflows")))?
        / period;
    Ok(Some(millis))
}

/// The path of this process's cgroup v2 from the contents of
/// `/proc/self/cgroup`, i.e. `/path` from the line `0::/path`. `None` when
/// there is no such line (a cgroup v1-only host). Other lines (cgroup v1
/// hierarchies) are ignored.
pub fn parse_cgroup_v2_path(proc_self_cgroup: &str) -> Result<Option<&str>, CapacityError> {
    const WHAT: &str = "/proc/self/cgroup";
    let Some(path) = proc_self_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
    else {
        return Ok(None);
    };
    if !path.starts_with('/') {
        return Err(malformed(
            WHAT,
            format!("cgroup v2 path is not absolute: {path:?}"),
        ));
    }
    // A process outside its cgroup namespace's root sees `/..` paths, which
    // cannot be resolved under the mount point.
    if path.split('/').any(|c| c == "..") {
        return Err(malformed(
            WHAT,
            format!("cgroup v2 path leaves the namespace: {path:?}"),
        ));
    }
    Ok(Some(path))
}

/// The memory limit in bytes from a cgroup v2 `memory.max` file: a number of
/// bytes, or `max` for no limit (`None`).
pub fn parse_memory_max(memory_max: &str) -> Result<Option<u64>, CapacityError> {
    const WHAT: &str = "memory.max";
    match memory_max.trim() {
        "max" => Ok(None),
        value => value
            .parse()
            .map(Some)
            .map_err(|_| malformed(WHAT, format!("expected bytes or `max`, got {memory_max:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_malformed<T: std::fmt::Debug>(result: Result<T, CapacityError>, expected: &str) {
        match result {
            Err(CapacityError::Malformed { what, .. }) => assert_eq!(what, expected),
            other => panic!("expected a malformed {expected} error, got {other:?}"),
        }
    }

    const MEMINFO: &str = "\
MemTotal:       24684096 kB
MemFree:        22626000 kB
MemAvailable:   23867932 kB
Buffers:          102400 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        assert_eq!(parse_meminfo_total(MEMINFO).unwrap(), 24_684_096 * 1024);
    }

    #[test]
    fn meminfo_total_need_not_be_first() {
        let text = "MemFree: 10 kB\nMemTotal: 2048 kB\n";
        assert_eq!(parse_meminfo_total(text).unwrap(), 2048 * 1024);
    }

    #[test]
    fn malformed_meminfo_is_rejected() {
        for text in [
            "",
            "MemFree:        22626000 kB\n",
            "MemTotal:\n",
            "MemTotal:       24684096\n",
            "MemTotal:       24684096 MB\n",
            "MemTotal:       24684096 kB extra\n",
            "MemTotal:       -1 kB\n",
            "MemTotal:       lots kB\n",
            "MemTotal:       0 kB\n",
            "MemTotal:       18446744073709551615 kB\n",
            "memtotal:       1024 kB\n",
        ] {
            assert_malformed(parse_meminfo_total(text), "/proc/meminfo");
        }
    }

    #[test]
    fn cpu_max_without_quota_is_unlimited() {
        assert_eq!(parse_cpu_max("max 100000\n").unwrap(), None);
    }

    #[test]
    fn cpu_max_quota_becomes_millis() {
        assert_eq!(parse_cpu_max("200000 100000\n").unwrap(), Some(2000));
        assert_eq!(parse_cpu_max("150000 100000").unwrap(), Some(1500));
        assert_eq!(parse_cpu_max("50000 100000").unwrap(), Some(500));
        assert_eq!(parse_cpu_max("100000 1000000").unwrap(), Some(100));
        // Rounds down: never report more than the quota allows.
        assert_eq!(parse_cpu_max("1001 3000").unwrap(), Some(333));
    }

    #[test]
    fn malformed_cpu_max_is_rejected() {
        for text in [
            "",
            "\n",
            "max",
            "200000",
            "200000 100000 7",
            "max 0",
            "200000 0",
            "200000 -100000",
            "-200000 100000",
            "0 100000",
            "max max",
            "lots 100000",
            "2.5 100000",
            "18446744073709551615 100000",
        ] {
            assert_malformed(parse_cpu_max(text), "cpu.max");
        }
    }

    #[test]
    fn cgroup_v2_path_is_found_among_v1_lines() {
        let text = "\
12:pids:/user.slice/user-1000.slice
4:memory:/user.slice/user-1000.slice
1:name=systemd:/user.slice/user-1000.slice/session-2.scope
0::/user.slice/user-1000.slice/session-2.scope
";
        assert_eq!(
            parse_cgroup_v2_path(text).unwrap(),
            Some("/user.slice/user-1000.slice/session-2.scope")
        );
    }

    #[test]
    fn cgroup_v2_only_host() {
        assert_eq!(
            parse_cgroup_v2_path("0::/system.slice/carapace-worker.service\n").unwrap(),
            Some("/system.slice/carapace-worker.service")
        );
        assert_eq!(parse_cgroup_v2_path("0::/\n").unwrap(), Some("/"));
    }

    #[test]
    fn cgroup_v1_only_host_has_no_v2_path() {
        let text = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n";
        assert_eq!(parse_cgroup_v2_path(text).unwrap(), None);
        assert_eq!(parse_cgroup_v2_path("").unwrap(), None);
    }

    #[test]
    fn malformed_cgroup_v2_path_is_rejected() {
        for text in ["0::\n", "0::relative/path\n", "0::/..\n", "0::/../../x\n"] {
            assert_malformed(parse_cgroup_v2_path(text), "/proc/self/cgroup");
        }
    }

    #[test]
    fn memory_max() {
        assert_eq!(parse_memory_max("max\n").unwrap(), None);
        assert_eq!(
            parse_memory_max("4294967296\n").unwrap(),
            Some(4 * 1024 * 1024 * 1024)
        );
        assert_eq!(parse_memory_max("0\n").unwrap(), Some(0));
    }

    #[test]
    fn malformed_memory_max_is_rejected() {
        for text in [
            "",
            "\n",
            "MAX",
            "4G",
            "-1",
            "1.5",
            "max 100",
            "18446744073709551616",
        ] {
            assert_malformed(parse_memory_max(text), "memory.max");
        }
    }

    #[test]
    fn ancestors_run_from_own_cgroup_up_to_below_root() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(
            ancestor_dirs(root, "/system.slice/carapace.service"),
            [
                PathBuf::from("/sys/fs/cgroup/system.slice/carapace.service"),
                PathBuf::from("/sys/fs/cgroup/system.slice"),
            ]
        );
        assert!(ancestor_dirs(root, "/").is_empty());
    }

    #[test]
    fn errors_read_well() {
        let err = parse_cpu_max("200000 0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed cpu.max: period is not a positive number: \"0\""
        );
    }

    #[test]
    fn probe_reads_this_machine() {
        let capacity = probe().unwrap();
        assert!(capacity.cpus_millis >= 1000, "{capacity:?}");
        assert!(capacity.memory_bytes > 0, "{capacity:?}");
    }
}

//! Resource limits of one sandbox, as tenants ask for them and workers
//! enforce them: part of the worker protocol, so that a run's request
//! carries them to whichever worker runs it.

use serde::{Deserialize, Serialize};

/// Resource limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Memory (and page cache charged to it), MiB; there is no swap.
    pub memory_mib: u32,
    /// CPU time per wall-clock second, in thousandths of a core.
    pub cpu_millis: u32,
    /// Processes and threads at once.
    pub pids: u32,
    /// Size of `/workspace`, MiB (counted against memory as well).
    pub workspace_mib: u32,
    /// Size of `/tmp`, MiB (counted against memory as well).
    pub tmp_mib: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 256,
            cpu_millis: 1000,
            pids: 128,
            workspace_mib: 64,
            tmp_mib: 16,
        }
    }
}

impl Limits {
    /// The most any sandbox may have, whatever the tenant asks.
    pub const MAX: Limits = Limits {
        memory_mib: 4096,
        cpu_millis: 2000,
        pids: 1024,
        workspace_mib: 1024,
        tmp_mib: 256,
    };
    /// The least that still runs the agent.
    pub const MIN: Limits = Limits {
        memory_mib: 16,
        cpu_millis: 10,
        pids: 8,
        workspace_mib: 1,
        tmp_mib: 1,
    };

    /// The first field outside [`Limits::MIN`]..=[`Limits::MAX`], if any.
    pub fn out_of_bounds(&self) -> Option<(&'static str, u32, u32)> {
        let fields = [
            (
                "memory_mib",
                self.memory_mib,
                Self::MIN.memory_mib,
                Self::MAX.memory_mib,
            ),
            (
                "cpu_millis",
                self.cpu_millis,
                Self::MIN.cpu_millis,
                Self::MAX.cpu_millis,
            ),
            ("pids", self.pids, Self::MIN.pids, Self::MAX.pids),
            (
                "workspace_mib",
                self.workspace_mib,
                Self::MIN.workspace_mib,
                Self::MAX.workspace_mib,
            ),
            (
                "tmp_mib",
                self.tmp_mib,
                Self::MIN.tmp_mib,
                Self::MAX.tmp_mib,
            ),
        ];
        fields
            .into_iter()
            .find(|(_, v, lo, hi)| v < lo || v > hi)
            .map(|(name, _, lo, hi)| (name, lo, hi))
    }
}

//! How much an agent may keep in memory, and how often a run commits it:
//! the `[memory]` table of the settings file.

use anyhow::bail;
use serde::Deserialize;

/// The `[memory]` settings table; every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryArgs {
    /// Most files in one agent's memory. [default: 10000; 1 to 50000]
    pub max_files: Option<u32>,
    /// Largest file, in MiB. [default: 32; 1 to 32, what moves into or out
    /// of a sandbox in one piece]
    pub max_file_mib: Option<u64>,
    /// Most bytes one version of an agent's memory may hold, in MiB.
    /// [default: 256; from `max_file_mib` to 1024, what a sandbox's
    /// `/memory` holds]
    pub max_total_mib: Option<u64>,
    /// Seconds between a run's commits of its sandbox's `/memory` (it also
    /// commits when it ends). [default: 30; 1 to 3600]
    pub sync_interval_secs: Option<u32>,
    /// Versions kept when old ones are collected (every tenth commit).
    /// [default: 20; 1 to 1000]
    pub keep_versions: Option<usize>,
}

/// The memory quota every agent gets (the same for every tenant until
/// plans exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Most files in one version.
    pub max_files: usize,
    /// Largest file.
    pub max_file_bytes: u64,
    /// Most bytes of all files of one version together.
    pub max_total_bytes: u64,
    /// Default seconds between a run's commits.
    pub sync_interval_s: u32,
    /// Versions kept by garbage collection.
    pub keep_versions: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_files: 10_000,
            max_file_bytes: 32 << 20,
            max_total_bytes: 256 << 20,
            sync_interval_s: 30,
            keep_versions: 20,
        }
    }
}

impl MemoryArgs {
    /// Fills in defaults and validates.
    pub fn resolve(&self) -> anyhow::Result<MemoryLimits> {
        let d = MemoryLimits::default();
        let max_files = self.max_files.map_or(d.max_files, |n| n as usize);
        if !(1..=50_000).contains(&max_files) {
            bail!("memory.max_files must be between 1 and 50000");
        }
        let max_file_mib = self.max_file_mib.unwrap_or(d.max_file_bytes >> 20);
        if !(1..=32).contains(&max_file_mib) {
            bail!("memory.max_file_mib must be between 1 and 32");
        }
        let max_file_bytes = max_file_mib << 20;
        let max_total_mib = self.max_total_mib.unwrap_or(d.max_total_bytes >> 20);
        if max_total_mib < max_file_mib || max_total_mib > 1024 {
            bail!("memory.max_total_mib must be at least max_file_mib and at most 1024");
        }
        let max_total_bytes = max_total_mib << 20;
        let sync_interval_s = self.sync_interval_secs.unwrap_or(d.sync_interval_s);
        if !(1..=3600).contains(&sync_interval_s) {
            bail!("memory.sync_interval_secs must be between 1 and 3600");
        }
        let keep_versions = self.keep_versions.unwrap_or(d.keep_versions);
        if !(1..=1000).contains(&keep_versions) {
            bail!("memory.keep_versions must be between 1 and 1000");
        }
        Ok(MemoryLimits {
            max_files,
            max_file_bytes,
            max_total_bytes,
            sync_interval_s,
            keep_versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        assert_eq!(
            MemoryArgs::default().resolve().unwrap(),
            MemoryLimits::default()
        );
        let small = MemoryArgs {
            max_files: Some(3),
            max_file_mib: Some(1),
            max_total_mib: Some(2),
            sync_interval_secs: Some(1),
            keep_versions: Some(3),
        };
        assert_eq!(small.resolve().unwrap().max_total_bytes, 2 << 20);
        for bad in [
            MemoryArgs {
                max_files: Some(0),
                ..Default::default()
            },
            MemoryArgs {
                max_file_mib: Some(0),
                ..Default::default()
            },
            MemoryArgs {
                max_total_mib: Some(1),
                max_file_mib: Some(2),
                ..Default::default()
            },
            MemoryArgs {
                sync_interval_secs: Some(0),
                ..Default::default()
            },
        ] {
            assert!(bad.resolve().is_err(), "{bad:?}");
        }
    }
}

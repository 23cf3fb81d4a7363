//! The worker protocol: what a worker and the control plane say to each
//! other over the worker's one long-lived connection.
//!
//! The worker opens the connection (so it works from behind NAT) and speaks
//! first: [`WorkerMessage::Hello`] with its capacity and the runs it still
//! holds; the control plane answers [`ControlMessage::Welcome`] with the
//! leases it still grants, and the worker stops every run not among them.
//! From then on the worker sends heartbeats and reports; the control plane
//! sends runs to start and runs to cancel.
//!
//! Every report names a [`Lease`]: the run and the fencing epoch it was
//! placed with. A report whose epoch is no longer the run's is refused
//! ([`ControlMessage::Refused`]), so a worker that comes back from a
//! partition cannot overwrite what happened to the run meanwhile.
//!
//! Messages are JSON objects tagged by `type`, one per WebSocket text
//! frame, each at most [`MAX_MESSAGE_BYTES`]. The same types travel over an
//! in-process channel for the worker `carapace serve` runs itself.

use serde::{Deserialize, Serialize};

use crate::limits::Limits;

/// The protocol version a worker announces in its hello.
pub const VERSION: u32 = 2;
/// The largest message either side accepts (a call's stdin of 1 MiB,
/// base64-encoded, fits).
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The most raw bytes one [`WorkerMessage::CallChunk`] or
/// [`ControlMessage::Upload`] carries.
pub const CHUNK_BYTES: usize = 256 << 10;
/// The most of a run's standard output or error a worker reports (and the
/// control plane keeps).
pub const MAX_OUTPUT_BYTES: usize = 64 << 10;

/// What a worker can give to runs, or what a run needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Resources {
    /// CPU time, thousandths of a core.
    pub cpu_millis: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Sandboxes at once.
    pub slots: u64,
}

impl Resources {
    /// What a run with `limits` takes from its worker: its CPU and memory
    /// limits and one sandbox slot.
    pub fn of(limits: &Limits) -> Self {
        Resources {
            cpu_millis: u64::from(limits.cpu_millis),
            memory_mib: u64::from(limits.memory_mib),
            slots: 1,
        }
    }

    /// Whether `need` fits in `self`.
    pub fn fits(&self, need: &Resources) -> bool {
        self.cpu_millis >= need.cpu_millis
            && self.memory_mib >= need.memory_mib
            && self.slots >= need.slots
    }

    /// `self` minus `other`, never below zero.
    pub fn minus(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mib: self.memory_mib.saturating_sub(other.memory_mib),
            slots: self.slots.saturating_sub(other.slots),
        }
    }
}

/// A run's token for the model gateway (`crt_…`). Its `Debug` shows
/// nothing of it, so that no log line of a message carries it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunToken(String);

impl RunToken {
    /// Wraps a token.
    pub fn new(token: String) -> Self {
        RunToken(token)
    }

    /// The token itself, for the sandbox's environment.
    pub fn reveal(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RunToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunToken([redacted])")
    }
}

/// A worker's claim on a run: the run and the epoch it was placed with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Lease {
    /// The run's id (`run_…`).
    pub run: String,
    /// The placement's fencing epoch.
    pub epoch: i64,
}

/// What a run executes: a command in a fresh sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// `builtin` or an image the worker offers.
    pub image: String,
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Seconds the command may run.
    pub timeout_s: u32,
    /// The sandbox's limits.
    pub limits: Limits,
    /// Host names the sandbox may reach through its egress proxy.
    #[serde(default)]
    pub egress_allow: Vec<String>,
    /// An interactive sandbox: no command of its own; it stays up, taking
    /// calls ([`CallRequest`]), until the run is cancelled.
    #[serde(default)]
    pub interactive: bool,
    /// The agent memory the sandbox works on, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySync>,
}

/// An agent's memory, synced with a run's sandbox: its current version is
/// written into the sandbox's `/memory` before the command starts, and
/// what changed there is committed back as one new version every
/// `interval_s` seconds and when the run ends. The worker does it through
/// the control plane's memory API with the run's token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySync {
    /// The agent (`agt_…`) whose memory it is.
    pub agent: String,
    /// Seconds between commits while the run goes on.
    pub interval_s: u32,
    /// Most files the memory may hold.
    pub max_files: u32,
    /// Most bytes its files may hold together.
    pub max_bytes: u64,
    /// Directories of the memory (relative, e.g. `openclaw/credentials`)
    /// never synced either way: neither written into the sandbox nor
    /// committed from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl MemorySync {
    /// Whether `path` (relative to the memory) is in an excluded directory.
    pub fn excludes(&self, path: &str) -> bool {
        self.exclude.iter().any(|dir| {
            path.strip_prefix(dir.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }
}

/// A request to a running interactive sandbox, answered by
/// [`WorkerMessage::CallChunk`]s and one [`WorkerMessage::CallDone`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CallRequest {
    /// Run a command in `/workspace`.
    Exec {
        /// Program and arguments.
        argv: Vec<String>,
        /// Extra environment.
        env: Vec<(String, String)>,
        /// Standard input, base64.
        stdin: String,
        /// Milliseconds before it is killed.
        timeout_ms: u64,
        /// Send output as chunks while it runs (otherwise after it ends).
        stream: bool,
    },
    /// Write the bytes uploaded for this call ([`ControlMessage::Upload`])
    /// to a file under `/workspace`.
    WriteFile {
        /// Relative path.
        path: String,
    },
    /// Read a file under `/workspace` (sent back as `file` chunks).
    ReadFile {
        /// Relative path.
        path: String,
    },
    /// Commit the run's `/memory` now (a run with [`RunSpec::memory`]).
    CommitMemory,
}

/// Which stream a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// A command's standard output.
    Stdout,
    /// A command's standard error.
    Stderr,
    /// A file's content.
    File,
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallError {
    /// The sandbox is not running on this worker (any more).
    Gone,
    /// A limit (requests in flight, file size) was reached.
    Limits,
    /// The file could not be read or written (bad path, missing...).
    File,
    /// Anything else: the sandbox did not answer properly.
    Failed,
}

/// How a call ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CallResult {
    /// A command ended (its output came as chunks).
    Exec {
        /// Exit code; 128+N for signal N; `None` if it timed out or could
        /// not start.
        exit_code: Option<i32>,
        /// Killed at its timeout.
        timed_out: bool,
        /// Output beyond the sandbox's cap was dropped.
        stdout_truncated: bool,
        /// Likewise for standard error.
        stderr_truncated: bool,
        /// Why it could not start.
        error: Option<String>,
        /// The OOM killer struck while it ran.
        oom_killed: bool,
    },
    /// The file was written.
    Written,
    /// The file was read (its content came as chunks).
    Read,
    /// The run's memory was committed: the version it is now at (the
    /// same as before when nothing had changed).
    Committed {
        /// The agent memory's version.
        version: u64,
    },
    /// The call failed.
    Failed {
        /// How.
        error: CallError,
        /// Why, for the tenant.
        message: String,
    },
}

/// Base64 of `bytes`, for the protocol's byte fields.
pub fn encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Bytes of a protocol byte field; `None` if it is not base64.
pub fn decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// What happened to a run on its worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunEvent {
    /// The worker is preparing the sandbox.
    Starting,
    /// The command is about to be given to the sandbox.
    Running,
    /// The command ended (or timed out).
    Exited {
        /// Its exit code; `None` if it timed out or could not start.
        exit_code: Option<i32>,
        /// Whether it ran out of time.
        timed_out: bool,
        /// Standard output, at most [`MAX_OUTPUT_BYTES`] (lossy UTF-8).
        stdout: String,
        /// Standard error, at most [`MAX_OUTPUT_BYTES`] (lossy UTF-8).
        stderr: String,
    },
    /// The run could not be carried out (e.g. its image is not here).
    Failed {
        /// Why, for the run's owner.
        reason: String,
    },
    /// The run was stopped because the control plane cancelled it.
    Cancelled,
}

/// From a worker to the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WorkerMessage {
    /// First message on every connection.
    Hello {
        /// [`VERSION`].
        version: u32,
        /// What the worker can give to runs in total.
        capacity: Resources,
        /// Images it has ready (`builtin` included), for placement.
        images: Vec<String>,
        /// The runs it holds sandboxes for.
        runs: Vec<Lease>,
    },
    /// I am alive; these are the runs I hold.
    Heartbeat {
        /// What it can give to runs in total now.
        capacity: Resources,
        /// The runs it holds sandboxes for (and those whose reports are
        /// not acknowledged yet).
        runs: Vec<Lease>,
    },
    /// Part of a call's answer.
    CallChunk {
        /// The call.
        call: u64,
        /// Which stream.
        part: Part,
        /// At most [`CHUNK_BYTES`] bytes, base64.
        data: String,
    },
    /// The end of a call's answer.
    CallDone {
        /// The call.
        call: u64,
        /// How it ended.
        result: CallResult,
    },
    /// A run's sandbox asked its egress proxy for a destination its
    /// allow-list does not hold (best effort: not kept, not acknowledged;
    /// the control plane audits it).
    EgressRefused {
        /// Which run, under which lease.
        lease: Lease,
        /// The host asked for (at most 255 bytes).
        host: String,
        port: u16,
        /// Why (at most 500 bytes).
        reason: String,
    },
    /// Something happened to a run. Kept by the worker, and sent again
    /// after a reconnection, until acknowledged.
    Report {
        /// The worker's sequence number of the report (increasing).
        seq: u64,
        /// Which run, under which lease.
        lease: Lease,
        /// What.
        event: RunEvent,
    },
}

/// From the control plane to a worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlMessage {
    /// Answer to a hello.
    Welcome {
        /// The worker's id (`wrk_…`).
        worker: String,
        /// How often to send heartbeats, milliseconds.
        heartbeat_ms: u64,
        /// The leases among those the worker announced that are still its
        /// own; it must stop every other run it holds.
        keep: Vec<Lease>,
    },
    /// Answer to a heartbeat.
    HeartbeatAck,
    /// Every report up to this sequence number was processed (applied,
    /// already known, or refused).
    ReportAck {
        /// The last processed report's `seq`.
        seq: u64,
    },
    /// Run this.
    Start {
        /// The run and its epoch: every report about it names this lease.
        lease: Lease,
        /// What to run.
        spec: RunSpec,
        /// The run's token for the model gateway, valid while the run is
        /// not over; given to its sandbox, never stored by the worker.
        token: RunToken,
    },
    /// Stop this run (kill its sandbox) and report it cancelled.
    Cancel {
        /// The run.
        lease: Lease,
    },
    /// A report was refused: the lease is no longer the worker's (or the
    /// run cannot move that way). The worker stops the run.
    Refused {
        /// The lease the report named.
        lease: Lease,
        /// Why.
        reason: String,
    },
    /// An operator drains this worker: no new runs will come; the runs it
    /// holds go on.
    Drain,
    /// Bytes for a coming [`CallRequest::WriteFile`] of the same call.
    Upload {
        /// The call.
        call: u64,
        /// At most [`CHUNK_BYTES`] bytes, base64.
        data: String,
    },
    /// A request to the interactive sandbox of run `run`.
    Call {
        /// The call's number, unique on this connection.
        call: u64,
        /// The sandbox's run (its lease must be the worker's).
        lease: Lease,
        /// What to do.
        request: CallRequest,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_json() {
        let report = WorkerMessage::Report {
            seq: 7,
            lease: Lease {
                run: "run_1".into(),
                epoch: 3,
            },
            event: RunEvent::Failed {
                reason: "no image".into(),
            },
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(
            text,
            r#"{"type":"report","seq":7,"lease":{"run":"run_1","epoch":3},"event":{"kind":"failed","reason":"no image"}}"#
        );
        assert_eq!(
            serde_json::from_str::<WorkerMessage>(&text).unwrap(),
            report
        );
    }

    #[test]
    fn unknown_or_malformed_messages_are_errors() {
        for bad in [
            r#"{"type":"shutdown_the_control_plane"}"#,
            r#"{"type":"heartbeat","runs":[],"extra":1}"#,
            r#"{"type":"report","lease":{"run":"r","epoch":"x"},"event":{"kind":"running"}}"#,
            r#"[1,2,3]"#,
            "",
        ] {
            assert!(serde_json::from_str::<WorkerMessage>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_start_message_never_shows_its_token_in_debug_output() {
        let start = ControlMessage::Start {
            lease: Lease {
                run: "run_1".into(),
                epoch: 1,
            },
            spec: RunSpec {
                image: "builtin".into(),
                command: vec!["true".into()],
                env: vec![],
                timeout_s: 1,
                limits: Limits::default(),
                egress_allow: vec![],
                interactive: false,
                memory: None,
            },
            token: RunToken::new("crt_secret-canary".into()),
        };
        assert!(!format!("{start:?}").contains("secret-canary"));
        // On the wire it is there, for the worker.
        assert!(
            serde_json::to_string(&start)
                .unwrap()
                .contains("secret-canary")
        );
    }

    #[test]
    fn resources_fit_and_subtract() {
        let free = Resources {
            cpu_millis: 1000,
            memory_mib: 512,
            slots: 1,
        };
        let need = Resources::of(&Limits::default());
        assert!(free.fits(&need));
        let left = free.minus(&need);
        assert_eq!(left.slots, 0);
        assert!(!left.fits(&need));
        assert_eq!(left.minus(&need).cpu_millis, 0);
    }
}

//! Live output of runs on this replica, for `GET /v1/runs/{id}/logs`:
//! what an agent's warm run prints while it answers (its tool loop's
//! steps and diagnostics) is published here as it arrives and handed to
//! whoever follows the run's logs now. Nothing is kept: a follower sees
//! what comes after it started following (and a finished run's stored
//! output).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::broadcast;

/// Pieces waiting for a slow follower before it loses the oldest.
const BACKLOG: usize = 256;
/// Most bytes of one piece (longer ones are cut): a follower that stops
/// reading pins at most `BACKLOG` × this.
const MAX_PIECE: usize = 16 * 1024;

/// One piece of a run's output.
#[derive(Debug, Clone)]
pub struct LogChunk {
    /// `stdout` or `stderr`.
    pub stream: &'static str,
    pub text: String,
}

/// The runs being followed here, each with its channel.
#[derive(Default)]
pub struct RunLogs {
    followed: Mutex<HashMap<String, broadcast::Sender<LogChunk>>>,
}

impl RunLogs {
    /// Hands a piece of `run`'s output to its followers, if it has any.
    pub fn publish(&self, run: &str, stream: &'static str, mut text: String) {
        if text.len() > MAX_PIECE {
            let mut end = MAX_PIECE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            text.push_str("…\n");
        }
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = followed.get(run) else {
            return;
        };
        if tx.send(LogChunk { stream, text }).is_err() {
            // Nobody follows any more.
            followed.remove(run);
        }
    }

    /// Follows `run`'s output from now on.
    pub fn follow(&self, run: &str) -> broadcast::Receiver<LogChunk> {
        let mut followed = self.followed.lock().unwrap_or_else(PoisonError::into_inner);
        followed.retain(|_, tx| tx.receiver_count() > 0);
        followed
            .entry(run.to_owned())
            .or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::RunLogs;

    #[test]
    fn followers_get_what_comes_after_they_start_and_unfollowed_runs_cost_nothing() {
        let logs = RunLogs::default();
        logs.publish("run_a", "stdout", "before".into());
        let mut rx = logs.follow("run_a");
        logs.publish("run_a", "stderr", "after".into());
        logs.publish("run_b", "stdout", "other run".into());
        let chunk = rx.try_recv().unwrap();
        assert_eq!((chunk.stream, chunk.text.as_str()), ("stderr", "after"));
        assert!(rx.try_recv().is_err());
        drop(rx);
        logs.publish("run_a", "stdout", "nobody".into());
        assert!(logs.followed.lock().unwrap().is_empty());
    }
}

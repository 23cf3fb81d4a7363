//! Fixed-window counters per key, kept in memory on each replica (see
//! `WindowLimiter`). Bounded: past 10,000 keys, expired windows are
//! dropped, and if that is not enough the counters start over rather
//! than lock everyone out.

use std::time::Duration;

/// At most so many events per key in a fixed window, on this replica:
/// logins per address and per person, failed credentials, invitation
/// emails.
pub struct WindowLimiter {
    limit: u32,
    window: Duration,
    seen: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

impl WindowLimiter {
    /// At most `per_minute` for each key.
    pub fn new(per_minute: u32) -> Self {
        Self::per_window(per_minute, Duration::from_secs(60))
    }

    /// At most `count` for each key per `window`.
    pub fn per_window(count: u32, window: Duration) -> Self {
        WindowLimiter {
            limit: count,
            window,
            seen: Default::default(),
        }
    }

    /// Counts one attempt for `key`; whether it is within the limit.
    pub fn allow(&self, key: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= 10_000 {
            seen.retain(|_, (since, _)| since.elapsed() < self.window);
            if seen.len() >= 10_000 {
                // Full of fresh keys (many addresses): start over rather
                // than lock everyone out.
                seen.clear();
            }
        }
        let entry = seen
            .entry(key.to_owned())
            .or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= self.window {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= self.limit
    }
}

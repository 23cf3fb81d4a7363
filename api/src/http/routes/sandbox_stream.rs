//! `POST /v1/sandboxes/{id}/exec?stream=true`: a command's output as
//! server-sent events while it runs.
//!
//! Events, in order: any number of `stdout` and `stderr` events, each
//! `{"text": "..."}` (UTF-8; a character split between two reads is sent
//! whole with the second; invalid bytes are replaced), then one `exit`
//! event, `{"exit_code", "timed_out", "error", "oom_killed",
//! "duration_ms"}`, or one `error` event, `{"detail"}`, if the sandbox
//! stopped answering.

use std::time::Instant;

use actix_web::web::Bytes;
use carapace_scheduler::protocol::{CallResult, Part};
use futures_util::Stream;
use sea_orm::DatabaseConnection;
use serde_json::json;
use tokio::sync::mpsc;

use crate::db::TenantScope;
use crate::fleet::CallReply;
use crate::ids::{SandboxId, TenantId};

/// Turns bytes into text without splitting a character: returns what can
/// be decoded now and keeps an incomplete trailing sequence in `carry`.
fn decode(carry: &mut Vec<u8>, data: Vec<u8>) -> String {
    carry.extend(data);
    let complete = match std::str::from_utf8(carry) {
        Ok(_) => carry.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => carry.len(),
    };
    let rest = carry.split_off(complete);
    let text = String::from_utf8_lossy(carry).into_owned();
    *carry = rest;
    text
}

fn event(name: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

struct State {
    events: mpsc::Receiver<CallReply>,
    carry: [Vec<u8>; 2],
    started: Instant,
    done: bool,
    touch: Option<(DatabaseConnection, TenantId, SandboxId)>,
}

/// The SSE body for a streamed command; touches the sandbox's last use
/// when the command ends.
pub fn body(
    events: mpsc::Receiver<CallReply>,
    db: DatabaseConnection,
    tenant: TenantId,
    sandbox: SandboxId,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
    let state = State {
        events,
        carry: [Vec::new(), Vec::new()],
        started: Instant::now(),
        done: false,
        touch: Some((db, tenant, sandbox)),
    };
    futures_util::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        let chunk = match s.events.recv().await {
            Some(CallReply::Chunk(Part::Stdout, data)) => {
                event("stdout", json!({"text": decode(&mut s.carry[0], data)}))
            }
            Some(CallReply::Chunk(Part::Stderr, data)) => {
                event("stderr", json!({"text": decode(&mut s.carry[1], data)}))
            }
            Some(CallReply::Chunk(Part::File, _)) => {
                s.done = true;
                event(
                    "error",
                    json!({"detail": "the sandbox answered the wrong call"}),
                )
            }
            Some(CallReply::Done(CallResult::Exec {
                exit_code,
                timed_out,
                error,
                oom_killed,
                ..
            })) => {
                s.done = true;
                if let Some((db, tenant, sandbox)) = s.touch.take() {
                    let _ = TenantScope::new(&db, &tenant).touch_sandbox(&sandbox).await;
                }
                let mut out = String::new();
                for (name, carry) in [("stdout", &s.carry[0]), ("stderr", &s.carry[1])] {
                    if !carry.is_empty() {
                        let text = String::from_utf8_lossy(carry);
                        out.push_str(&format!(
                            "event: {name}\ndata: {}\n\n",
                            json!({"text": text})
                        ));
                    }
                }
                let exit = json!({
                    "exit_code": exit_code,
                    "timed_out": timed_out,
                    "error": error,
                    "oom_killed": oom_killed,
                    "duration_ms": s.started.elapsed().as_millis() as u64,
                });
                out.push_str(&format!("event: exit\ndata: {exit}\n\n"));
                Bytes::from(out)
            }
            Some(CallReply::Done(CallResult::Failed { message, .. })) => {
                s.done = true;
                event("error", json!({"detail": message}))
            }
            Some(CallReply::Overflow) => {
                s.done = true;
                event(
                    "error",
                    json!({"detail": "the stream was read too slowly; its output was dropped"}),
                )
            }
            Some(CallReply::Done(_)) => {
                s.done = true;
                event(
                    "error",
                    json!({"detail": "the sandbox answered the wrong call"}),
                )
            }
            None => {
                s.done = true;
                event("error", json!({"detail": "the sandbox has stopped"}))
            }
        };
        Some((Ok(chunk), s))
    })
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn characters_split_between_reads_are_sent_whole() {
        let mut carry = Vec::new();
        let euro = "€".as_bytes();
        assert_eq!(
            decode(&mut carry, [b"a".as_slice(), &euro[..1]].concat()),
            "a"
        );
        assert_eq!(decode(&mut carry, euro[1..].to_vec()), "€");
        assert!(carry.is_empty());
        assert_eq!(decode(&mut carry, vec![0xff, b'b']), "\u{fffd}b");
    }
}

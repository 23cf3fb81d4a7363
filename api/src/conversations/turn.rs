//! One turn: a user's message answered by the agent's tool loop
//! (`carapace-agent chat`, run as a command in the agent's warm sandbox,
//! started cold if it has none), its steps recorded as events.
//!
//! What the loop prints is the agent's word, not ours: each line is
//! bounded, parsed as JSON and cut to size before it is recorded; a line
//! that is not one of the loop's events is ignored.

use std::time::Duration;

use actix_web::web;
use carapace_scheduler::protocol::{
    CallError, CallRequest, CallResult, Lease, MemorySync, Part, encode,
};
use serde_json::{Value, json};

use crate::audit::Actor;
use crate::db::{Agent, Flavor, Message, MessageStatus, NewSandbox, SandboxState, TenantScope};
use crate::error::Error;
use crate::fleet::CallReply;
use crate::state::AppState;

/// Most bytes of one line the loop prints.
const MAX_LINE: usize = 1 << 20;
/// Most bytes of a reply kept.
const MAX_REPLY: usize = 64 * 1024;
/// Most bytes of a tool call's arguments or result kept in an event.
const MAX_EVENT_TEXT: usize = 16 * 1024;
/// Most earlier messages handed to the loop, and their bytes.
const HISTORY_MESSAGES: u64 = 40;
const HISTORY_BYTES: usize = 256 * 1024;

/// Where the agent binary is inside a sandbox of `image`.
fn agent_path(image: &str) -> &'static str {
    if image == "builtin" {
        carapace_runtime::image::AGENT_PATH
    } else {
        carapace_runtime::image::OCI_AGENT_PATH
    }
}

/// The agent's running sandbox, to send calls to.
pub(super) struct Warm {
    pub sandbox: crate::ids::SandboxId,
    pub run: String,
    pub worker: String,
    pub lease: Lease,
}

pub(super) fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The agent's sandbox that runs now, if it has one.
async fn find_warm(scope: &TenantScope<'_>, agent: &Agent) -> Result<Option<Warm>, Error> {
    for sandbox in scope.sandboxes().await? {
        if sandbox.agent_id.as_ref() != Some(&agent.id) || sandbox.state != SandboxState::Running {
            continue;
        }
        if let Some((worker, lease)) = crate::sandboxes::call_target(scope, &sandbox).await? {
            return Ok(Some(Warm {
                sandbox: sandbox.id,
                run: lease.run.clone(),
                worker,
                lease,
            }));
        }
    }
    Ok(None)
}

/// Starts the agent's sandbox, on its memory.
async fn start_cold(
    state: &web::Data<AppState>,
    scope: &TenantScope<'_>,
    agent: &Agent,
) -> Result<Warm, Error> {
    let plan = scope.tenant().await?.plan;
    let quota = state.plans.get(&plan).memory;
    let sync = MemorySync {
        agent: agent.id.to_string(),
        interval_s: quota.sync_interval_s,
        max_files: u32::try_from(quota.max_files).unwrap_or(u32::MAX),
        max_bytes: quota.max_total_bytes,
        exclude: match agent.settings.flavor {
            Flavor::Carapace => Vec::new(),
            Flavor::Openclaw => vec![super::openclaw::CREDENTIALS.to_owned()],
        },
    };
    let new = NewSandbox {
        image: agent.image.clone(),
        egress_allow: agent.egress_allow.clone(),
        limits: agent.settings.limits,
        agent: Some((agent.id.clone(), sync)),
        idle_timeout_s: Some(agent.settings.idle_timeout_s),
    };
    let actor = Actor {
        principal: format!("agent:{}", agent.id),
        client_ip: None,
        request_id: None,
    };
    let sandbox =
        crate::sandboxes::start_sandbox(state, scope.tenant_id().clone(), actor, new).await?;
    find_warm(scope, agent)
        .await?
        .filter(|w| w.sandbox == sandbox.id)
        .ok_or_else(|| Error::Unavailable("the agent's sandbox stopped as it started".into()))
}

/// The job handed to the loop on its stdin.
async fn job(scope: &TenantScope<'_>, agent: &Agent, message: &Message) -> Result<Value, Error> {
    let earlier = scope
        .messages(&message.conversation_id, HISTORY_MESSAGES + 1)
        .await?;
    let mut history: Vec<Value> = Vec::new();
    let mut bytes = 0;
    for m in earlier.iter().rev() {
        if m.id.as_str() >= message.id.as_str() || m.status != MessageStatus::Done {
            continue;
        }
        bytes += m.text.len();
        if bytes > HISTORY_BYTES {
            break;
        }
        history.push(json!({"role": m.role, "content": m.text}));
    }
    history.reverse();
    Ok(json!({
        "model": agent.model,
        "message": message.text,
        "history": history,
        "tools": agent.settings.tools,
        "max_steps": agent.settings.max_steps,
        "max_tokens": agent.settings.max_tokens_per_message,
        "shell_timeout_s": agent.settings.shell_timeout_s,
        "today": chrono::Utc::now().format("%Y-%m-%d").to_string(),
    }))
}

/// What came of one run of the loop.
pub(super) enum Ran {
    Replied(String),
    Failed(String),
    /// The sandbox was gone: worth one more try in a new one.
    Gone,
}

/// Answers a message: the reply's text and the sandbox that answered, or
/// why there is none.
pub(super) async fn answer(
    state: &web::Data<AppState>,
    scope: &TenantScope<'_>,
    agent: &Agent,
    message: &Message,
) -> Result<(String, crate::ids::SandboxId), String> {
    let failed = |e: Error| format!("{e}");
    // The built-in loop's job (OpenClaw keeps its own history).
    let job = match agent.settings.flavor {
        Flavor::Carapace => job(scope, agent, message).await.map_err(failed)?,
        Flavor::Openclaw => Value::Null,
    };
    for attempt in 0..2 {
        let (warm, was_warm) = match find_warm(scope, agent).await.map_err(failed)? {
            Some(warm) if attempt == 0 => (warm, true),
            _ => (
                start_cold(state, scope, agent).await.map_err(failed)?,
                false,
            ),
        };
        state
            .conversations
            .record(
                scope,
                &message.conversation_id,
                "run_placed",
                json!({"message_id": message.id, "sandbox_id": warm.sandbox, "run_id": warm.run, "warm": was_warm}),
            )
            .await
            .map_err(failed)?;
        let ran = match agent.settings.flavor {
            Flavor::Carapace => run_loop(state, scope, agent, message, &warm, &job).await,
            Flavor::Openclaw => super::openclaw::run(state, scope, agent, message, &warm).await,
        };
        match ran {
            Ran::Replied(text) => return Ok((text, warm.sandbox)),
            Ran::Failed(detail) => return Err(detail),
            Ran::Gone => {
                scope
                    .set_sandbox_state(&warm.sandbox, SandboxState::Lost)
                    .await
                    .map_err(failed)?;
            }
        }
    }
    Err("the agent's sandbox was lost twice; try again".into())
}

async fn run_loop(
    state: &web::Data<AppState>,
    scope: &TenantScope<'_>,
    agent: &Agent,
    message: &Message,
    warm: &Warm,
    job: &Value,
) -> Ran {
    let timeout = Duration::from_secs(u64::from(agent.settings.message_timeout_s));
    let request = CallRequest::Exec {
        argv: vec![agent_path(&agent.image).to_owned(), "chat".to_owned()],
        env: Vec::new(),
        stdin: encode(job.to_string().as_bytes()),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        stream: true,
    };
    // No touch before: a sandbox with a call in flight is not idle.
    let mut replies = match state
        .fleet
        .call(&warm.worker, warm.lease.clone(), request, None)
        .await
    {
        Ok(replies) => replies,
        Err(e) => return Ran::Failed(format!("{e}; try again shortly")),
    };
    let mut line = Vec::new();
    let mut reply = None;
    let mut error = None;
    let mut stderr = Vec::new();
    // A tool call and its result per step, and a few more: what a loop
    // prints beyond that is not recorded (a sandbox cannot fill the
    // database with events).
    let mut events_left = 2 * u64::from(agent.settings.max_steps) + 8;
    let mut lines_seen = false;
    let result = 'read: loop {
        match replies.recv().await {
            Some(CallReply::Chunk(Part::Stdout, data)) => {
                for byte in data {
                    if byte != b'\n' {
                        if line.len() < MAX_LINE {
                            line.push(byte);
                        }
                        continue;
                    }
                    let text = String::from_utf8_lossy(&line).into_owned();
                    line.clear();
                    lines_seen = true;
                    state
                        .run_logs
                        .publish(&warm.run, "stdout", format!("{text}\n"));
                    match step(state, scope, message, &text, &mut events_left).await {
                        // The reply is the loop's last word: the answer
                        // need not wait for its process to end.
                        Some(Ok(text)) => {
                            reply = Some(text);
                            break 'read None;
                        }
                        Some(Err(detail)) => error = Some(detail),
                        None => {}
                    }
                }
            }
            Some(CallReply::Chunk(Part::Stderr, data)) => {
                state.run_logs.publish(
                    &warm.run,
                    "stderr",
                    String::from_utf8_lossy(&data).into_owned(),
                );
                stderr.extend_from_slice(&data);
                if stderr.len() > 8192 {
                    stderr.drain(..stderr.len() - 4096);
                }
            }
            Some(CallReply::Chunk(Part::File, _)) => {}
            Some(CallReply::Done(result)) => break Some(result),
            Some(CallReply::Overflow) | None => break None,
        }
    };
    if let Some(reply) = reply {
        // The rest of the call is read to its end in the background; the
        // idle timeout counts from the reply (recorded with it).
        tokio::spawn(async move { while replies.recv().await.is_some() {} });
        return Ran::Replied(reply);
    }
    let _ = scope.touch_sandbox(&warm.sandbox).await;
    match result {
        Some(CallResult::Exec {
            timed_out: true, ..
        }) => Ran::Failed(format!(
            "the agent took longer than the message timeout ({} s)",
            agent.settings.message_timeout_s
        )),
        Some(CallResult::Exec {
            oom_killed: true, ..
        }) => Ran::Failed("the agent's sandbox ran out of memory".into()),
        Some(CallResult::Exec {
            exit_code,
            error: e,
            ..
        }) => Ran::Failed(error.or(e).unwrap_or_else(|| {
            let tail = String::from_utf8_lossy(&stderr);
            format!(
                "the agent ended without a reply (exit code {}){}",
                exit_code.map_or("none".to_owned(), |c| c.to_string()),
                if tail.trim().is_empty() {
                    String::new()
                } else {
                    format!(": {}", cut(tail.trim(), 1000))
                }
            )
        })),
        // Tried again in a new sandbox only if nothing ran yet here: the
        // tools it already ran must not run twice.
        Some(CallResult::Failed {
            error: CallError::Gone,
            ..
        }) if !lines_seen => Ran::Gone,
        Some(CallResult::Failed {
            error: CallError::Gone,
            ..
        }) => Ran::Failed("the agent's sandbox stopped while it answered".into()),
        Some(CallResult::Failed { message, .. }) => Ran::Failed(message),
        Some(_) => Ran::Failed("the sandbox answered the wrong call".into()),
        None => Ran::Failed("the agent's sandbox stopped answering".into()),
    }
}

/// Records one line of the loop's output; a reply's text or an error.
async fn step(
    state: &web::Data<AppState>,
    scope: &TenantScope<'_>,
    message: &Message,
    line: &str,
    events_left: &mut u64,
) -> Option<Result<String, String>> {
    let Ok(event) = serde_json::from_str::<Value>(line) else {
        return None;
    };
    let text = |key: &str| event[key].as_str().unwrap_or_default();
    let (kind, data) = match text("event") {
        "tool_call" => (
            "tool_call",
            json!({"message_id": message.id, "call_id": cut(text("id"), 200), "name": cut(text("name"), 100),
                   "arguments": cut(text("arguments"), MAX_EVENT_TEXT)}),
        ),
        "tool_result" => (
            "tool_result",
            json!({"message_id": message.id, "call_id": cut(text("id"), 200), "name": cut(text("name"), 100),
                   "ok": event["ok"].as_bool().unwrap_or(false), "output": cut(text("output"), MAX_EVENT_TEXT)}),
        ),
        "reply" => return Some(Ok(cut(text("text"), MAX_REPLY))),
        "error" => return Some(Err(cut(text("detail"), 4000))),
        _ => return None,
    };
    if *events_left == 0 {
        return None;
    }
    *events_left -= 1;
    if let Err(e) = state
        .conversations
        .record(scope, &message.conversation_id, kind, data)
        .await
    {
        tracing::warn!(error = ?e, "cannot record a conversation event");
    }
    None
}

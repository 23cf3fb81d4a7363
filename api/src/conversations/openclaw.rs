//! One turn of an OpenClaw agent: `openclaw agent --local` from the
//! agent's own image, run in its warm sandbox, wired so that it holds no
//! credential and keeps its state in the synced memory.
//!
//! What Carapace sets, and why (README "OpenClaw agents" says the same):
//! - `OPENCLAW_STATE_DIR=/memory/openclaw` and
//!   `OPENCLAW_WORKSPACE_DIR=/memory/workspace`: its state (sessions) and
//!   workspace (`AGENTS.md`, `SOUL.md`, `MEMORY.md`, `memory/`) live in the
//!   agent's memory, committed encrypted and loaded by the next sandbox —
//!   except `openclaw/credentials/` ([`CREDENTIALS`]), which the worker
//!   never syncs either way: secrets belong to the gateway.
//! - `OPENCLAW_CONFIG_PATH=/workspace/.carapace/openclaw.json`, written
//!   before every turn (outside the memory: it is ours, not the agent's):
//!   its own gateway bound to the sandbox's loopback (`gateway.bind`), and
//!   one model provider, `carapace`, at the Carapace gateway
//!   (`http://carapace.internal/gateway/v1`, OpenAI chat completions) whose
//!   key is `${CARAPACE_RUN_TOKEN}`, resolved by OpenClaw from its
//!   environment (the file holds no secret).
//! - `OPENCLAW_GATEWAY_BIND=loopback`, `OPENCLAW_GATEWAY_PORT=18789`, for
//!   versions that read the gateway's address from the environment.
//! - The worker adds, as for every command: the run's token
//!   (`CARAPACE_RUN_TOKEN`, also as `OPENAI_API_KEY` / `ANTHROPIC_API_KEY`)
//!   with the gateway's URLs (`OPENAI_BASE_URL`, `ANTHROPIC_BASE_URL`), and
//!   the egress proxy; no provider key, API key or other credential.
//!
//! The reply is read from `--json` output (`reply`, `text`, or the `text`
//! of each of `payloads`), else the whole standard output.

use actix_web::web;
use carapace_scheduler::protocol::{CallError, CallRequest, CallResult, encode};
use serde_json::{Value, json};

use super::turn::{Ran, Warm, cut};
use crate::db::{Agent, Message, TenantScope};
use crate::fleet::CallReply;
use crate::state::AppState;

/// The memory directory never synced: OpenClaw's credentials.
pub const CREDENTIALS: &str = "openclaw/credentials";
/// Where the configuration is written, relative to `/workspace`.
const CONFIG: &str = ".carapace/openclaw.json";
/// Most bytes of a reply kept.
const MAX_REPLY: usize = 64 * 1024;

/// The configuration Carapace writes for an agent.
fn config(agent: &Agent) -> Value {
    json!({
        "gateway": {"mode": "local", "bind": "loopback", "port": 18789},
        "agents": {"defaults": {
            "workspace": "/memory/workspace",
            "model": {"primary": format!("carapace/{}", agent.model)},
        }},
        "models": {"providers": {"carapace": {
            "baseUrl": format!("http://{}/gateway/v1", crate::sandboxes::SERVICE_HOST),
            "apiKey": "${CARAPACE_RUN_TOKEN}",
            "api": "openai-completions",
            "models": [{"id": agent.model, "name": agent.model}],
        }}},
    })
}

/// The environment of a turn (the worker adds the run's own).
fn env() -> Vec<(String, String)> {
    [
        ("OPENCLAW_STATE_DIR", "/memory/openclaw"),
        ("OPENCLAW_WORKSPACE_DIR", "/memory/workspace"),
        ("OPENCLAW_CONFIG_PATH", "/workspace/.carapace/openclaw.json"),
        ("OPENCLAW_GATEWAY_BIND", "loopback"),
        ("OPENCLAW_GATEWAY_PORT", "18789"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The reply in OpenClaw's output.
fn reply_of(stdout: &str) -> String {
    let text = match serde_json::from_str::<Value>(stdout.trim()) {
        Ok(out) => ["reply", "text"]
            .iter()
            .find_map(|k| out[k].as_str().map(str::to_owned))
            .or_else(|| {
                let parts: Vec<&str> = out["payloads"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p["text"].as_str())
                    .collect();
                (!parts.is_empty()).then(|| parts.join("\n"))
            })
            .unwrap_or_else(|| stdout.trim().to_owned()),
        Err(_) => stdout.trim().to_owned(),
    };
    cut(&text, MAX_REPLY)
}

/// Reads a call's answer to its end: standard output, standard error and
/// how it ended.
async fn collect(
    mut replies: tokio::sync::mpsc::Receiver<CallReply>,
) -> (Vec<u8>, Vec<u8>, Option<CallResult>) {
    use carapace_scheduler::protocol::Part;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    while let Some(reply) = replies.recv().await {
        match reply {
            CallReply::Chunk(Part::Stdout, data) if out.len() < 1 << 20 => out.extend(data),
            CallReply::Chunk(Part::Stderr, data) if err.len() < 1 << 16 => err.extend(data),
            CallReply::Chunk(..) => {}
            CallReply::Done(result) => return (out, err, Some(result)),
            CallReply::Overflow => break,
        }
    }
    (out, err, None)
}

/// Runs one OpenClaw turn for `message` in the agent's sandbox.
pub(super) async fn run(
    state: &web::Data<AppState>,
    scope: &TenantScope<'_>,
    agent: &Agent,
    message: &Message,
    warm: &Warm,
) -> Ran {
    let call = |request, upload| {
        state
            .fleet
            .call(&warm.worker, warm.lease.clone(), request, upload)
    };
    let written = match call(
        CallRequest::WriteFile {
            path: CONFIG.to_owned(),
        },
        Some(config(agent).to_string().into_bytes()),
    )
    .await
    {
        Ok(replies) => collect(replies).await.2,
        Err(e) => return Ran::Failed(format!("{e}; try again shortly")),
    };
    match written {
        Some(CallResult::Written) => {}
        Some(CallResult::Failed {
            error: CallError::Gone,
            ..
        }) => return Ran::Gone,
        other => {
            return Ran::Failed(format!(
                "OpenClaw's configuration could not be written: {other:?}"
            ));
        }
    }
    let timeout = agent.settings.message_timeout_s;
    let argv = [
        "openclaw",
        "agent",
        "--local",
        "--json",
        "--session-id",
        message.conversation_id.as_str(),
        "--timeout",
        &timeout.to_string(),
        "--message",
        &message.text,
    ];
    let request = CallRequest::Exec {
        argv: argv.iter().map(|a| (*a).to_owned()).collect(),
        env: env(),
        stdin: encode(b""),
        timeout_ms: u64::from(timeout) * 1000,
        stream: false,
    };
    let (stdout, stderr, result) = match call(request, None).await {
        Ok(replies) => collect(replies).await,
        Err(e) => return Ran::Failed(format!("{e}; try again shortly")),
    };
    let _ = scope.touch_sandbox(&warm.sandbox).await;
    let stderr = String::from_utf8_lossy(&stderr);
    match result {
        Some(CallResult::Exec {
            exit_code: Some(0), ..
        }) => Ran::Replied(reply_of(&String::from_utf8_lossy(&stdout))),
        Some(CallResult::Exec {
            timed_out: true, ..
        }) => Ran::Failed(format!(
            "OpenClaw took longer than the message timeout ({timeout} s)"
        )),
        Some(CallResult::Exec {
            exit_code, error, ..
        }) => Ran::Failed(error.unwrap_or_else(|| {
            format!(
                "OpenClaw ended with exit code {}: {}",
                exit_code.map_or("none".to_owned(), |c| c.to_string()),
                cut(stderr.trim(), 1000)
            )
        })),
        Some(CallResult::Failed {
            error: CallError::Gone,
            ..
        }) => Ran::Gone,
        Some(CallResult::Failed { message, .. }) => Ran::Failed(message),
        Some(_) => Ran::Failed("the sandbox answered the wrong call".into()),
        None => Ran::Failed("the agent's sandbox stopped answering".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::reply_of;

    #[test]
    fn replies_are_read_from_openclaws_json_or_taken_whole() {
        assert_eq!(reply_of(r#"{"reply": "hi"}"#), "hi");
        assert_eq!(
            reply_of(r#"{"payloads": [{"text": "a"}, {"text": "b"}]}"#),
            "a\nb"
        );
        assert_eq!(reply_of("plain words\n"), "plain words");
        assert_eq!(reply_of(r#"{"other": 1}"#), r#"{"other": 1}"#);
    }
}

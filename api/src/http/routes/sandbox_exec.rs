//! `POST /v1/sandboxes/{id}/exec`: a command in a sandbox, answered once
//! it has ended, or streamed with `?stream=true` ([`super::sandbox_stream`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix_web::http::header;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use carapace_scheduler::protocol::{CallRequest, CallResult, encode};

use super::sandbox_calls::{call, call_error, collect, running};
use super::sandboxes::invalid;
use crate::auth::extract::{Caller, UseSandboxes};
use crate::error::Error;
use crate::state::AppState;

/// Largest exec request body (the command, its environment and stdin).
pub(super) const MAX_EXEC_BODY: usize = 2 << 20;
/// Largest stdin of one exec.
const MAX_STDIN: usize = 1 << 20;
/// Exec timeout when the request names none.
const DEFAULT_TIMEOUT_S: u64 = 30;

/// A command to run in the sandbox's `/workspace`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecBody {
    /// The program and its arguments (no shell: use `["sh", "-c", "..."]`).
    command: Vec<String>,
    /// Standard input, at most 1 MiB. [default: empty]
    #[serde(default)]
    stdin: Option<String>,
    /// Extra environment variables. `PATH`, `HOME` and the proxy variables
    /// are set already.
    #[serde(default)]
    env: Option<BTreeMap<String, String>>,
    /// Seconds before the command and everything it started are killed.
    /// [default: 30; at most the server's `max_exec_timeout_secs`]
    #[serde(default)]
    timeout_s: Option<f64>,
}

/// Options of an exec.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ExecQuery {
    /// Stream the output as server-sent events while the command runs
    /// (`stdout`, `stderr`, then `exit` or `error`) instead of answering
    /// once it has ended. [default: false]
    stream: Option<bool>,
}

/// How a command ended.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecView {
    /// Exit code (128+N if killed by signal N, e.g. 137 for the OOM
    /// killer); null if it timed out or could not start.
    exit_code: Option<i32>,
    /// Standard output (UTF-8, invalid bytes replaced), at most 1 MiB.
    stdout: String,
    /// Standard error, likewise.
    stderr: String,
    /// Output beyond 1 MiB was dropped.
    stdout_truncated: bool,
    stderr_truncated: bool,
    /// Killed at its timeout.
    timed_out: bool,
    /// Why it could not start, if it could not.
    error: Option<String>,
    /// The kernel's OOM killer killed a process of the sandbox while the
    /// command ran: the sandbox needs more `memory_mib`.
    oom_killed: bool,
    /// Wall-clock time of the run.
    duration_ms: u64,
}
fn exec_request(body: ExecBody, max_timeout: Duration) -> Result<carapace_runtime::Exec, Error> {
    crate::http::validate::command(&body.command)?;
    let env = body.env.unwrap_or_default();
    crate::http::validate::env(&env)?;
    let stdin = body.stdin.unwrap_or_default();
    if stdin.len() > MAX_STDIN {
        return Err(invalid("stdin", format!("at most {MAX_STDIN} bytes")));
    }
    let timeout_s = body.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S as f64);
    if !timeout_s.is_finite() || timeout_s <= 0.0 || timeout_s > max_timeout.as_secs_f64() {
        return Err(invalid(
            "timeout_s",
            format!("must be more than 0 and at most {}", max_timeout.as_secs()),
        ));
    }
    Ok(carapace_runtime::Exec {
        argv: body.command,
        env: env.into_iter().collect(),
        stdin: stdin.into_bytes(),
        timeout: Duration::from_secs_f64(timeout_s),
    })
}

/// Run a command in the sandbox and wait for it (or stream its output with
/// `?stream=true`).
#[utoipa::path(post, path = "/v1/sandboxes/{id}/exec", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ExecQuery),
    request_body = ExecBody,
    responses(
        (status = 200, description = "The command ran (whatever its exit code); with `stream=true`, `text/event-stream` events `stdout`/`stderr` (`{\"text\"}`), then `exit` (as this body without stdout and stderr) or `error`", body = ExecView),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The sandbox is not running", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn exec(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    id: web::Path<String>,
    query: web::Query<ExecQuery>,
    body: web::Json<ExecBody>,
) -> Result<HttpResponse, Error> {
    let exec = exec_request(body.into_inner(), state.sandboxes.config().max_exec_timeout)?;
    let target = running(&caller, &state, &id).await?;
    let stream = query.stream.unwrap_or(false);
    let request = CallRequest::Exec {
        argv: exec.argv,
        env: exec.env,
        stdin: encode(&exec.stdin),
        timeout_ms: u64::try_from(exec.timeout.as_millis()).unwrap_or(u64::MAX),
        stream,
    };
    let started = Instant::now();
    let replies = call(&caller, &state, &target, request, None).await?;
    if stream {
        let body = super::sandbox_stream::body(
            replies,
            state.db.clone(),
            caller.tenant_id().clone(),
            target.id,
        );
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header((header::CACHE_CONTROL, "no-cache"))
            .streaming(body));
    }
    let answer = collect(replies).await?;
    let CallResult::Exec {
        exit_code,
        timed_out,
        stdout_truncated,
        stderr_truncated,
        error,
        oom_killed,
    } = answer.result
    else {
        return Err(match answer.result {
            CallResult::Failed { error, message } => {
                call_error(&caller, &state, &target, error, message).await
            }
            _ => Error::Unavailable("the sandbox answered the wrong call".into()),
        });
    };
    // The idle timeout counts from the end of the last command.
    caller.scope(&state.db).touch_sandbox(&target.id).await?;
    Ok(HttpResponse::Ok().json(ExecView {
        exit_code,
        stdout: String::from_utf8_lossy(&answer.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&answer.stderr).into_owned(),
        stdout_truncated: stdout_truncated || answer.stdout_capped,
        stderr_truncated: stderr_truncated || answer.stderr_capped,
        timed_out,
        error,
        oom_killed,
        duration_ms: started.elapsed().as_millis() as u64,
    }))
}

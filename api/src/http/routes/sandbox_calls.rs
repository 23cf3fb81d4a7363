//! Reaching a running sandbox: finding the worker that holds it (its
//! run's lease), forwarding a call over that worker's connection, reading
//! the answer; and the file transfers `PUT/GET /v1/sandboxes/{id}/files/
//! {path}` built on them.

use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use carapace_scheduler::protocol::{CallError, CallRequest, CallResult, Lease, Part};
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::sandboxes::{invalid, sandbox_id};
use crate::auth::extract::{Caller, UseSandboxes};
use crate::db::SandboxState;
use crate::error::Error;
use crate::fleet::CallReply;
use crate::ids::SandboxId;
use crate::state::AppState;

/// A running sandbox and where it runs.
pub(super) struct Target {
    pub id: SandboxId,
    worker: String,
    lease: Lease,
}

fn lost() -> Error {
    Error::Conflict(
        "the sandbox was lost with its worker (restarted or gone); delete it and create another"
            .into(),
    )
}

/// The tenant's running sandbox `raw`, ready for a command or a transfer.
pub(super) async fn running(
    caller: &Caller<UseSandboxes>,
    state: &AppState,
    raw: &str,
) -> Result<Target, Error> {
    let id = sandbox_id(raw)?;
    let scope = caller.scope(&state.db);
    let sandbox = scope.sandbox(&id).await?;
    match sandbox.state {
        SandboxState::Running => {}
        SandboxState::Starting => {
            return Err(Error::Conflict("the sandbox is still starting".into()));
        }
        SandboxState::Lost => return Err(lost()),
    }
    let (worker, lease) = crate::sandboxes::call_target(&scope, &sandbox)
        .await?
        .ok_or_else(lost)?;
    Ok(Target { id, worker, lease })
}

/// Sends a call to the sandbox; its clock for the idle timeout restarts
/// now (and again when the caller is done).
pub(super) async fn call(
    caller: &Caller<UseSandboxes>,
    state: &AppState,
    target: &Target,
    request: CallRequest,
    upload: Option<Vec<u8>>,
) -> Result<mpsc::Receiver<CallReply>, Error> {
    caller.scope(&state.db).touch_sandbox(&target.id).await?;
    state
        .fleet
        .call(&target.worker, target.lease.clone(), request, upload)
        .await
        .map_err(|e| Error::Unavailable(format!("{e}; retry shortly")))
}

/// A whole answer: each stream's bytes and how it ended.
pub(super) struct Answer {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub file: Vec<u8>,
    /// More output came than an exec answer holds (dropped).
    pub stdout_capped: bool,
    pub stderr_capped: bool,
    pub result: CallResult,
}

/// Most of each output stream an exec answer holds (the sandbox's own cap).
const MAX_OUTPUT: usize = carapace_runtime::sandbox::MAX_OUTPUT as usize;

/// Appends at most up to `MAX_OUTPUT`; whether anything was dropped.
fn append_capped(buffer: &mut Vec<u8>, data: &[u8]) -> bool {
    let room = MAX_OUTPUT.saturating_sub(buffer.len());
    buffer.extend_from_slice(&data[..data.len().min(room)]);
    data.len() > room
}

/// Reads an answer to its end; 503 if the worker's connection broke first.
pub(super) async fn collect(mut replies: mpsc::Receiver<CallReply>) -> Result<Answer, Error> {
    let (mut stdout, mut stderr, mut file) = (Vec::new(), Vec::new(), Vec::new());
    let (mut stdout_capped, mut stderr_capped) = (false, false);
    while let Some(reply) = replies.recv().await {
        match reply {
            CallReply::Chunk(Part::Stdout, data) => {
                stdout_capped |= append_capped(&mut stdout, &data);
            }
            CallReply::Chunk(Part::Stderr, data) => {
                stderr_capped |= append_capped(&mut stderr, &data);
            }
            CallReply::Chunk(Part::File, data) => {
                if file.len() + data.len() > carapace_runtime::sandbox::MAX_FILE as usize {
                    return Err(Error::Unavailable("the worker sent too much".into()));
                }
                file.extend(data);
            }
            CallReply::Overflow => {
                return Err(Error::Unavailable("the answer was too slow to read".into()));
            }
            CallReply::Done(result) => {
                return Ok(Answer {
                    stdout,
                    stderr,
                    file,
                    stdout_capped,
                    stderr_capped,
                    result,
                });
            }
        }
    }
    Err(Error::Unavailable(
        "the connection to the sandbox's worker broke; retry shortly".into(),
    ))
}

/// The answer to a failed call, recording a sandbox that has gone as lost
/// (and stopping its run, so that its worker frees its place).
pub(super) async fn call_error(
    caller: &Caller<UseSandboxes>,
    state: &AppState,
    target: &Target,
    error: CallError,
    message: String,
) -> Error {
    let id = &target.id;
    match error {
        CallError::Gone => {
            let scope = caller.scope(&state.db);
            let _ = scope.set_sandbox_state(id, SandboxState::Lost).await;
            if let Ok(run) = scope.stop_sandbox_run(&target.lease.run).await {
                state.fleet.deliver_cancel(&run).await;
            }
            Error::Conflict("the sandbox has stopped; delete it and create another".into())
        }
        CallError::File => invalid("path", message),
        CallError::Limits => Error::LimitReached(message),
        CallError::Failed => {
            tracing::error!(sandbox = %id, message, "sandbox call failed");
            Error::Unavailable("the sandbox did not answer".into())
        }
    }
}

/// Write a file into the sandbox's `/workspace` (the body, raw bytes, at
/// most 32 MiB; parent directories are created).
#[utoipa::path(put, path = "/v1/sandboxes/{id}/files/{path}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path under /workspace")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Written"),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Larger than 32 MiB", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid path, or the sandbox could not write it", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn upload(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    mut body: web::Payload,
) -> Result<HttpResponse, Error> {
    let (raw_id, file) = path.into_inner();
    let target = running(&caller, &state, &raw_id).await?;
    let limit = carapace_runtime::sandbox::MAX_FILE as usize;
    let mut data = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk =
            chunk.map_err(|e| Error::InvalidQuery(format!("failed to read the body: {e}")))?;
        if data.len() + chunk.len() > limit {
            return Err(Error::PayloadTooLarge { limit });
        }
        data.extend_from_slice(&chunk);
    }
    let request = CallRequest::WriteFile { path: file };
    let answer = collect(call(&caller, &state, &target, request, Some(data)).await?).await?;
    match answer.result {
        CallResult::Written => {
            caller.scope(&state.db).touch_sandbox(&target.id).await?;
            Ok(HttpResponse::NoContent().finish())
        }
        CallResult::Failed { error, message } => {
            Err(call_error(&caller, &state, &target, error, message).await)
        }
        _ => Err(Error::Unavailable(
            "the sandbox answered the wrong call".into(),
        )),
    }
}

/// Read a file from the sandbox's `/workspace` (raw bytes).
#[utoipa::path(get, path = "/v1/sandboxes/{id}/files/{path}", tag = "sandboxes",
    params(("id" = String, Path, description = "Sandbox id"), ("path" = String, Path, description = "Path under /workspace")),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 404, description = "No such sandbox in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid path, missing file, or larger than 32 MiB", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn download(
    caller: Caller<UseSandboxes>,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (raw_id, file) = path.into_inner();
    let target = running(&caller, &state, &raw_id).await?;
    let request = CallRequest::ReadFile { path: file };
    let answer = collect(call(&caller, &state, &target, request, None).await?).await?;
    match answer.result {
        CallResult::Read => {
            caller.scope(&state.db).touch_sandbox(&target.id).await?;
            Ok(HttpResponse::Ok()
                .content_type("application/octet-stream")
                .body(Bytes::from(answer.file)))
        }
        CallResult::Failed { error, message } => {
            Err(call_error(&caller, &state, &target, error, message).await)
        }
        _ => Err(Error::Unavailable(
            "the sandbox answered the wrong call".into(),
        )),
    }
}

//! `GET /v1/runs/{id}/logs`: a run's output as server-sent events.

use std::time::Duration;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, web};
use carapace_scheduler::RunState;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use crate::auth::extract::{Caller, UseRuns};
use crate::db::TenantScope;
use crate::error::Error;
use crate::ids::{RunId, TenantId};
use crate::state::AppState;

/// How often a follower re-reads the run's state.
const CHECK: Duration = Duration::from_secs(1);

fn event(name: &str, data: serde_json::Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// Follow a run's output: `stdout` and `stderr` events (`{"text"}`) as it
/// comes — for an agent's warm run, what its tool loop prints while it
/// answers (followed through the replica that answers) — then, when the
/// run ends, its stored output (for a command's run) and one `end` event
/// (`{"state", "reason"}`). Output printed before following began is not
/// repeated, except a finished run's stored output.
#[utoipa::path(get, path = "/v1/runs/{id}/logs", tag = "runs",
    params(("id" = String, Path, description = "Run id")),
    responses(
        (status = 200, description = "`text/event-stream`: `stdout`, `stderr`, then `end`"),
        (status = 404, description = "No such run in this tenant", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ),
    security(("api_key" = [])))]
pub async fn logs(
    caller: Caller<UseRuns>,
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = super::runs::run_id(&id)?;
    caller.scope(&state.db).run(&id).await?;
    let follower = state.run_logs.follow(id.as_str());
    let state = state.into_inner();
    let tenant = caller.tenant_id().clone();
    let body = futures_util::stream::unfold(
        Some((state, tenant, id, follower)),
        |s: Option<(std::sync::Arc<AppState>, TenantId, RunId, _)>| async move {
            let (state, tenant, id, mut follower) = s?;
            loop {
                match tokio::time::timeout(CHECK, follower.recv()).await {
                    Ok(Ok(chunk)) => {
                        let out = event(chunk.stream, json!({"text": chunk.text}));
                        return Some((
                            Ok::<_, std::convert::Infallible>(out),
                            Some((state, tenant, id, follower)),
                        ));
                    }
                    Ok(Err(RecvError::Lagged(n))) => {
                        let out = event(
                            "stderr",
                            json!({"text": format!("[{n} pieces of output dropped: read faster]\n")}),
                        );
                        return Some((Ok(out), Some((state, tenant, id, follower))));
                    }
                    Ok(Err(RecvError::Closed)) | Err(_) => {}
                }
                let run = match TenantScope::new(&state.db, &tenant).run(&id).await {
                    Ok(run) => run,
                    Err(_) => return Some((Ok(event("end", json!({"state": "unknown"}))), None)),
                };
                if run.state.is_terminal() || run.state == RunState::Lost {
                    let mut out = String::new();
                    for (name, text) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
                        if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                            out.push_str(&format!(
                                "event: {name}\ndata: {}\n\n",
                                json!({"text": text})
                            ));
                        }
                    }
                    out.push_str(&format!(
                        "event: end\ndata: {}\n\n",
                        json!({"state": run.state.as_str(), "reason": run.reason})
                    ));
                    return Some((Ok(Bytes::from(out)), None));
                }
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .streaming(body))
}

//! The worker endpoints, outside `/v1` (workers are not tenants):
//! `POST /worker/v1/join` spends a one-time join token on a node
//! credential; `GET /worker/v1/connect` upgrades to the WebSocket a worker
//! keeps open to this control plane, authenticated by that credential.

use actix_web::{HttpRequest, HttpResponse, web};
use carapace_runtime::worker::Link;
use carapace_scheduler::protocol::{MAX_MESSAGE_BYTES, WorkerMessage};
use carapace_scheduler::store::{self, Credential, JoinToken};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::db::store_error;
use crate::error::Error;
use crate::http::problem::method_not_allowed;
use crate::state::AppState;

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/worker/v1/join")
            .route(web::post().to(join))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::resource("/worker/v1/connect")
            .route(web::get().to(connect))
            .default_service(web::to(method_not_allowed)),
    );
}

/// A worker joining with its one-time token.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The token from `carapace worker-token create`.
    token: String,
    /// The worker's name: 1 to 100 letters, digits, `.`, `_` or `-`,
    /// unique in the fleet.
    name: String,
}

/// The new worker's identity. The credential is shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Joined {
    /// Worker id.
    id: String,
    /// The node credential (`cwc_…`): the worker's bearer token from now on.
    credential: String,
}

/// Spend a join token on a node credential.
#[utoipa::path(post, path = "/worker/v1/join", tag = "workers",
    request_body = JoinBody,
    responses(
        (status = 201, description = "Joined", body = Joined),
        (status = 401, description = "The token is wrong, used or expired", body = crate::http::problem::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = crate::http::problem::Problem, content_type = "application/problem+json"),
    ))]
pub async fn join(
    state: web::Data<AppState>,
    body: web::Json<JoinBody>,
) -> Result<HttpResponse, Error> {
    let body = body.into_inner();
    if body.token.len() > 200 {
        return Err(Error::Unauthenticated(
            "the join token is wrong, already used or expired",
        ));
    }
    let (id, credential) = store::join(&state.db, &JoinToken::new(body.token), &body.name)
        .await
        .map_err(|e| match e {
            store::Error::Invalid(message) => Error::Invalid {
                field: "name",
                message,
            },
            other => store_error(other),
        })?;
    tracing::info!(worker = %id, name = %body.name, "worker joined");
    Ok(HttpResponse::Created().json(Joined {
        id,
        credential: credential.reveal().to_owned(),
    }))
}

/// The worker's connection: a WebSocket of JSON protocol messages.
pub async fn connect(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let bearer = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|v| v.len() <= 200)
        .ok_or(Error::Unauthenticated("a worker credential is required"))?;
    let worker = store::authenticate(&state.db, &Credential::new(bearer.to_owned()))
        .await
        .map_err(|e| match e {
            store::Error::Unauthorized(why) => Error::Unauthenticated(why),
            other => store_error(other),
        })?;
    let (response, mut session, stream) = actix_ws::handle(&req, body)?;
    let mut stream = stream
        .max_frame_size(MAX_MESSAGE_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE_BYTES);
    // `link` stands in for the worker on this side of the socket.
    let (mut link, end) = Link::pair();
    tokio::spawn(state.fleet.clone().serve(worker.clone(), end));
    // Socket → fleet. actix's stream is not `Send`: it runs on this
    // worker thread's local set.
    let mut pong = session.clone();
    let to_fleet = link.tx;
    let reader_worker = worker.clone();
    actix_web::rt::spawn(async move {
        while let Some(frame) = stream.next().await {
            let text = match frame {
                Ok(actix_ws::AggregatedMessage::Text(text)) => text,
                Ok(actix_ws::AggregatedMessage::Ping(bytes)) => {
                    let _ = pong.pong(&bytes).await;
                    continue;
                }
                Ok(actix_ws::AggregatedMessage::Close(_)) => break,
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(worker = %reader_worker, error = %e, "worker socket error");
                    break;
                }
            };
            match serde_json::from_str::<WorkerMessage>(&text) {
                Ok(message) => {
                    if to_fleet.send(message).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %reader_worker, error = %e, "malformed worker message; closing");
                    break;
                }
            }
        }
    });
    // Fleet → socket.
    actix_web::rt::spawn(async move {
        while let Some(message) = link.rx.recv().await {
            let Ok(text) = serde_json::to_string(&message) else {
                continue;
            };
            if session.text(text).await.is_err() {
                return;
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

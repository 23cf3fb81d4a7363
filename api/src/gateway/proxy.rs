//! The gateway's handlers: authenticate, limit, route to a provider with
//! retries and fallback, and pass the answer through.

use super::transcripts::{CallFacts, Capture};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::{Stream, StreamExt};
use serde_json::{Value, json};

use super::Gateway;
use super::config::{Price, Target, WireFormat};
use super::limits::{Permit, Refusal};
use super::usage::{self, StreamTap, Usage};
use super::wire_error::GatewayError;
use crate::audit::Outcome;
use crate::auth::extract::{Caller, UseGateway};
use crate::db::UsageEntry;
use crate::error::Error;
use crate::ids::TenantId;
use crate::state::AppState;

/// Largest non-streamed upstream response passed on.
const MAX_UPSTREAM_BODY: usize = 32 * 1024 * 1024;

type GatewayCaller = Result<Caller<UseGateway>, Error>;

/// OpenAI-compatible chat completions (tools and `stream: true` included).
/// `model` is an alias or a provider's model. Errors use OpenAI's shape.
#[utoipa::path(
    post, path = "/gateway/v1/chat/completions", tag = "gateway",
    request_body(content = Object, description = "An OpenAI chat-completions request"),
    responses(
        (status = 200, description = "The provider's answer, passed through (JSON or text/event-stream)"),
        (status = 400, description = "Malformed body, missing `model`, or `stream_options` not an object"),
        (status = 401, description = "Missing or invalid key"),
        (status = 402, description = "The tenant's monthly budget is spent (`budget_exceeded`)"),
        (status = 403, description = "Key lacks the gateway scope"),
        (status = 404, description = "No provider serves this model"),
        (status = 405, description = "Wrong method"),
        (status = 413, description = "Body larger than `max_body_bytes`"),
        (status = 429, description = "Rate limit; see Retry-After"),
        (status = 502, description = "Every provider failed, or its answer was invalid or too large"),
    ),
    security(("api_key" = []))
)]
pub async fn chat_completions(
    caller: GatewayCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    let format = WireFormat::OpenAi;
    proxy(format, caller, &state, &req, body)
        .await
        .unwrap_or_else(|e| e.respond(format))
}

/// Anthropic-compatible messages (tools and streaming included). Accepts
/// the key as `x-api-key`. Errors use Anthropic's shape.
#[utoipa::path(
    post, path = "/gateway/v1/messages", tag = "gateway",
    request_body(content = Object, description = "An Anthropic messages request"),
    responses(
        (status = 200, description = "The provider's answer, passed through (JSON or text/event-stream)"),
        (status = 400, description = "Malformed body or missing `model`"),
        (status = 401, description = "Missing or invalid key"),
        (status = 402, description = "The tenant's monthly budget is spent (`budget_exceeded`)"),
        (status = 403, description = "Key lacks the gateway scope"),
        (status = 404, description = "No provider serves this model"),
        (status = 405, description = "Wrong method"),
        (status = 413, description = "Body larger than `max_body_bytes`"),
        (status = 429, description = "Rate limit; see Retry-After"),
        (status = 502, description = "Every provider failed, or its answer was invalid or too large"),
    ),
    security(("api_key" = []))
)]
pub async fn messages(
    caller: GatewayCaller,
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> HttpResponse {
    let format = WireFormat::Anthropic;
    proxy(format, caller, &state, &req, body)
        .await
        .unwrap_or_else(|e| e.respond(format))
}

/// Aliases and every provider's models, in OpenAI's list format.
#[utoipa::path(
    get, path = "/gateway/v1/models", tag = "gateway",
    responses((status = 200, description = "OpenAI-style model list")),
    security(("api_key" = []))
)]
pub async fn models(caller: GatewayCaller, state: web::Data<AppState>) -> HttpResponse {
    let format = WireFormat::OpenAi;
    let caller = match caller {
        Ok(caller) => caller,
        Err(e) => return GatewayError::from(e).respond(format),
    };
    let gateway = &state.gateway;
    let config = &gateway.config;
    let own = gateway
        .tenant_providers
        .get(
            &state.db,
            &state.master_key,
            caller.tenant_id(),
            config.allow_private_tenant_endpoints,
        )
        .await;
    let mut data: Vec<Value> = config
        .aliases
        .keys()
        .map(|alias| json!({"id": alias, "object": "model", "created": 0, "owned_by": "carapace"}))
        .collect();
    for provider in own.iter().chain(&config.providers) {
        for model in &provider.models {
            data.push(
                json!({"id": model, "object": "model", "created": 0, "owned_by": provider.name}),
            );
        }
    }
    HttpResponse::Ok().json(json!({"object": "list", "data": data}))
}

async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, GatewayError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            GatewayError::new(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("failed to read the body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("request body larger than {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn invalid(message: impl Into<String>) -> GatewayError {
    GatewayError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

/// A header value safe to forward: short printable ASCII.
fn forwardable(req: &HttpRequest, name: &str) -> Option<String> {
    let value = req.headers().get(name)?.to_str().ok()?;
    (value.len() <= 200 && value.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .then(|| value.to_owned())
}

async fn proxy(
    format: WireFormat,
    caller: GatewayCaller,
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, GatewayError> {
    let started = Instant::now();
    let caller = caller?;
    let gateway = &state.gateway;
    let body = read_body(payload, gateway.config.max_body_bytes).await?;
    let mut json: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(format!("the body is not valid JSON: {e}")))?;
    if !json.is_object() {
        return Err(invalid("the body must be a JSON object"));
    }
    let requested = json
        .get("model")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty() && m.len() <= 200)
        .ok_or_else(|| invalid("`model` must be a non-empty string"))?
        .to_owned();
    let streaming = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let own = gateway
        .tenant_providers
        .get(
            &state.db,
            &state.master_key,
            caller.tenant_id(),
            gateway.config.allow_private_tenant_endpoints,
        )
        .await;
    let targets = gateway.config.targets(&own, &requested, format);
    if targets.is_empty() {
        return Err(GatewayError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!("no provider serves model `{requested}` in this format"),
        ));
    }
    if streaming && format == WireFormat::OpenAi {
        // Ask for the final usage chunk so the ledger is exact.
        match json.get_mut("stream_options") {
            Some(Value::Object(options)) => {
                options.insert("include_usage".to_owned(), Value::Bool(true));
            }
            None | Some(Value::Null) => {
                json["stream_options"] = serde_json::json!({"include_usage": true});
            }
            Some(_) => return Err(invalid("`stream_options` must be an object")),
        }
    }
    let limits = state.plans.get(&caller.principal().tenant().plan).gateway;
    if gateway
        .limiter
        .spend_is_stale_for(caller.tenant_id(), &limits)
    {
        let first_of_month = chrono::Utc::now().format("%Y-%m-01").to_string();
        let spent = caller.scope(&state.db).spend_since(&first_of_month).await?;
        gateway.limiter.set_spend(caller.tenant_id(), spent);
    }
    gateway
        .limiter
        .prime_for(
            &state.db,
            caller.tenant_id(),
            &caller.principal().credential.id(),
            &limits,
        )
        .await
        .map_err(Error::from)?;
    let permit = match gateway.limiter.acquire_for(
        caller.tenant_id(),
        &caller.principal().credential.id(),
        &limits,
    ) {
        Ok(permit) => permit,
        Err(refusal) => {
            let refused = refused_by_limit(refusal);
            let principal = &caller.actor().principal;
            if gateway.refusal_due(caller.tenant_id().as_str(), principal, refused.code) {
                let event = caller
                    .actor()
                    .event("gateway.limit", Outcome::Denied)
                    .reason(refused.message.clone())
                    .in_tenant(caller.tenant_id());
                if let Err(e) = crate::db::platform::record_audit(&state.db, event).await {
                    tracing::warn!(error = ?e, "gateway refusal not audited");
                }
            }
            return Err(refused);
        }
    };

    // A run token's calls are its run's agent's; it may not name another.
    let bound = caller.principal().agent.clone();
    let agent = match forwardable(req, "x-carapace-agent") {
        None => bound,
        Some(raw) if bound.as_ref().is_some_and(|own| own.as_str() == raw) => bound,
        Some(raw) => {
            let not_found = || {
                GatewayError::new(
                    StatusCode::NOT_FOUND,
                    "agent_not_found",
                    "x-carapace-agent names no agent of this tenant",
                )
            };
            let id = crate::ids::AgentId::parse(&raw).map_err(|_| not_found())?;
            match caller.scope(&state.db).agent(&id).await {
                Ok(_) if caller.run().is_some() => {
                    return Err(GatewayError::new(
                        StatusCode::FORBIDDEN,
                        "agent_not_allowed",
                        "a run token calls models only for its own run's agent",
                    ));
                }
                Ok(agent) => Some(agent.id),
                Err(Error::NotFound) => return Err(not_found()),
                Err(e) => return Err(e.into()),
            }
        }
    };
    let call = Call {
        gateway,
        format,
        agent,
        run: match &caller.principal().credential {
            crate::auth::Credential::Run(run) => Some(run.clone()),
            crate::auth::Credential::ApiKey(_) | crate::auth::Credential::Session(_) => None,
        },
        tenant: caller.tenant_id().clone(),
        principal: caller.actor().principal.clone(),
        requested,
        started,
        started_at: chrono::Utc::now()
            - chrono::TimeDelta::from_std(started.elapsed()).unwrap_or_default(),
        // Only for a tenant that opted in (as of its cached record).
        capture: caller
            .principal()
            .tenant()
            .record_gateway_bodies
            .then(|| Capture::new(&body)),
    };
    let mut last_failure = String::from("no attempt made");
    for target in &targets {
        let provider = &target.provider;
        json["model"] = Value::String(target.model.clone());
        let request_body = serde_json::to_vec(&json)
            .map_err(|e| GatewayError::from(Error::Unexpected(e.into())))?;
        for attempt in 0..=gateway.config.max_retries {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(100 << attempt.min(6))).await;
            }
            let sent = Instant::now();
            let outcome = tokio::time::timeout(
                gateway.config.upstream_timeout,
                upstream_request(gateway, target, format, req, request_body.clone()).send(),
            )
            .await;
            gateway
                .upstream_seconds
                // Tenants name their own providers: one label for all of
                // them keeps the metric's cardinality bounded.
                .with_label_values(&[if provider.tenant_owned {
                    "tenant"
                } else {
                    provider.name.as_str()
                }])
                .observe(sent.elapsed().as_secs_f64());
            match outcome {
                Ok(Ok(res)) if res.status().as_u16() == 429 || res.status().is_server_error() => {
                    last_failure = format!("{} answered {}", provider.name, res.status());
                }
                // The platform's own credentials were refused: not the
                // client's fault, and the provider's answer (which can
                // describe the platform's account) is not for the client.
                Ok(Ok(res))
                    if !provider.tenant_owned && matches!(res.status().as_u16(), 401 | 403) =>
                {
                    tracing::error!(provider = %provider.name, status = %res.status(), "provider refused the platform's credentials");
                    last_failure = format!("{} refused the platform's credentials", provider.name);
                }
                Ok(Ok(res)) => {
                    let overhead = started.elapsed().saturating_sub(sent.elapsed());
                    gateway
                        .overhead_seconds
                        .with_label_values(&[call.endpoint()])
                        .observe(overhead.as_secs_f64());
                    return call.respond(res, target, permit).await;
                }
                Ok(Err(e)) => {
                    last_failure = format!(
                        "{} could not be reached: {}",
                        provider.name,
                        e.without_url()
                    );
                }
                Err(_) => last_failure = format!("{} did not answer in time", provider.name),
            }
            tracing::warn!(provider = %provider.name, attempt, failure = %last_failure, "upstream attempt failed");
        }
    }
    call.record(
        None,
        Usage::default(),
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
    );
    Err(GatewayError::new(
        StatusCode::BAD_GATEWAY,
        "upstream_failed",
        format!(
            "every provider for `{}` failed; last: {last_failure}",
            call.requested
        ),
    ))
}

fn upstream_request(
    gateway: &Gateway,
    target: &Target,
    format: WireFormat,
    req: &HttpRequest,
    body: Vec<u8>,
) -> reqwest::RequestBuilder {
    let provider = &target.provider;
    let key = provider.api_key.expose();
    let client = if provider.tenant_owned {
        &gateway.tenant_client
    } else {
        &gateway.client
    };
    let builder = match format {
        WireFormat::OpenAi => {
            let b = client.post(format!("{}/chat/completions", provider.base_url));
            if key.is_empty() {
                b
            } else {
                b.bearer_auth(key)
            }
        }
        WireFormat::Anthropic => {
            let version =
                forwardable(req, "anthropic-version").unwrap_or_else(|| "2023-06-01".to_owned());
            let mut b = client
                .post(format!("{}/messages", provider.base_url))
                .header("x-api-key", key)
                .header("anthropic-version", version);
            if let Some(beta) = forwardable(req, "anthropic-beta") {
                b = b.header("anthropic-beta", beta);
            }
            b
        }
    };
    builder
        .header("content-type", "application/json")
        .body(body)
}

/// One client call, for the ledger.
struct Call<'a> {
    gateway: &'a Gateway,
    format: WireFormat,
    agent: Option<crate::ids::AgentId>,
    run: Option<crate::ids::RunId>,
    tenant: TenantId,
    principal: String,
    requested: String,
    started: Instant,
    started_at: chrono::DateTime<chrono::Utc>,
    /// The bodies, when the tenant keeps transcripts.
    capture: Option<Capture>,
}

impl Call<'_> {
    /// The facts of a transcript of this call.
    fn facts(&self, target: &Target, status: StatusCode) -> CallFacts {
        CallFacts {
            tenant: self.tenant.clone(),
            run: self.run.clone(),
            agent: self.agent.clone(),
            model: target.model.clone(),
            status: status.as_u16(),
            at: self.started_at,
        }
    }

    fn endpoint(&self) -> &'static str {
        match self.format {
            WireFormat::OpenAi => "chat_completions",
            WireFormat::Anthropic => "messages",
        }
    }

    fn entry(
        &self,
        target: Option<&Target>,
        used: Usage,
        status: StatusCode,
        outcome: &'static str,
    ) -> UsageEntry {
        let (provider, model) = target.map_or((String::new(), String::new()), |t| {
            (t.provider.name.clone(), t.model.clone())
        });
        UsageEntry {
            principal: self.principal.clone(),
            agent: self.agent.clone(),
            run: self.run.clone(),
            endpoint: self.endpoint(),
            requested_model: self.requested.clone(),
            cost_micro_usd: self
                .gateway
                .config
                .cost_micro_usd(&model, used.input, used.output),
            provider,
            model,
            input_tokens: used.input,
            output_tokens: used.output,
            latency_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            status: status.as_u16(),
            outcome,
            at: self.started_at,
        }
    }

    fn record(
        &self,
        target: Option<&Target>,
        used: Usage,
        status: StatusCode,
        outcome: &'static str,
    ) {
        self.gateway.ledger.record(
            self.tenant.clone(),
            self.entry(target, used, status, outcome),
        );
    }

    async fn respond(
        mut self,
        res: reqwest::Response,
        target: &Target,
        permit: Permit,
    ) -> Result<HttpResponse, GatewayError> {
        let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        if content_type.starts_with("text/event-stream") {
            let pending = self.entry(
                Some(target),
                Usage::default(),
                status,
                "client_disconnected",
            );
            let transcript = self
                .capture
                .take()
                .map(|capture| (self.facts(target, status), capture));
            let stream = TappedStream {
                transcript,
                transcripts: self.gateway.transcripts.clone(),
                price: self.gateway.config.prices.get(&target.model).copied(),
                inner: Box::pin(res.bytes_stream()),
                tap: StreamTap::new(self.format),
                pending: Some(pending),
                ledger: self.gateway.ledger.clone(),
                tenant: self.tenant.clone(),
                started: self.started,
                permit,
            };
            return Ok(HttpResponse::build(status)
                .content_type(content_type)
                .insert_header(("cache-control", "no-cache"))
                .streaming(stream));
        }
        let body = match read_upstream(res).await {
            Ok(body) => body,
            Err(e) => {
                // The provider may still bill for it: keep the call on record.
                self.record(Some(target), Usage::default(), e.status, "upstream_failed");
                return Err(e);
            }
        };
        if status.is_success() && serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
            self.record(
                Some(target),
                Usage::default(),
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
            );
            return Err(GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_invalid",
                "the provider's answer was not valid JSON",
            ));
        }
        let used = if status.is_success() {
            usage::from_body(self.format, &body)
        } else {
            Usage::default()
        };
        self.record(Some(target), used, status, "completed");
        let cost = self
            .gateway
            .config
            .cost_micro_usd(&target.model, used.input, used.output);
        permit.record(used.input.saturating_add(used.output), cost);
        drop(permit);
        if let Some(mut capture) = self.capture.take() {
            capture.feed(&body);
            let facts = self.facts(target, status);
            self.gateway.transcripts.record(facts, capture);
        }
        Ok(HttpResponse::build(status)
            .content_type(content_type)
            .body(body.freeze()))
    }
}

/// Reads a whole (non-streamed) upstream answer, at most
/// `MAX_UPSTREAM_BODY` bytes.
async fn read_upstream(res: reqwest::Response) -> Result<web::BytesMut, GatewayError> {
    let too_large = || {
        GatewayError::new(
            StatusCode::BAD_GATEWAY,
            "upstream_too_large",
            "upstream response too large",
        )
    };
    if res
        .content_length()
        .is_some_and(|n| n > MAX_UPSTREAM_BODY as u64)
    {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    let mut chunks = res.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            GatewayError::new(
                StatusCode::BAD_GATEWAY,
                "upstream_failed",
                format!("upstream broke off: {}", e.without_url()),
            )
        })?;
        if body.len() + chunk.len() > MAX_UPSTREAM_BODY {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An upstream event stream on its way to the client. It counts tokens as
/// they pass; when it ends — or when the client goes away and actix drops
/// it, which also drops (and so cancels) the upstream request — it writes
/// the ledger entry and frees the concurrency slot.
struct TappedStream {
    inner: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>>>>,
    tap: StreamTap,
    pending: Option<UsageEntry>,
    price: Option<Price>,
    ledger: super::Ledger,
    tenant: TenantId,
    started: Instant,
    permit: Permit,
    /// The call's transcript being gathered, when the tenant keeps them.
    transcript: Option<(CallFacts, Capture)>,
    transcripts: super::Transcripts,
}

impl TappedStream {
    /// Writes the ledger entry once, with what has been counted.
    fn finish(&mut self, outcome: &'static str) {
        if let Some(mut entry) = self.pending.take() {
            let used = self.tap.usage;
            entry.input_tokens = used.input;
            entry.output_tokens = used.output;
            entry.cost_micro_usd = self
                .price
                .map_or(0, |p| p.cost_micro_usd(used.input, used.output));
            self.permit
                .record(used.input.saturating_add(used.output), entry.cost_micro_usd);
            entry.outcome = outcome;
            entry.latency_ms =
                u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.ledger.record(self.tenant.clone(), entry);
        }
        if let Some((facts, capture)) = self.transcript.take() {
            self.transcripts.record(facts, capture);
        }
    }
}

impl Stream for TappedStream {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                self.tap.feed(&chunk);
                if let Some((_, capture)) = &mut self.transcript {
                    capture.feed(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e = e.without_url();
                tracing::warn!(error = %e, "upstream stream broke off");
                self.finish("upstream_failed");
                // An error (not a clean end) makes actix abort the response,
                // so the client sees a truncated stream rather than a
                // complete-looking one.
                Poll::Ready(Some(Err(actix_web::error::ErrorBadGateway(
                    "upstream stream broke off",
                ))))
            }
            Poll::Ready(None) => {
                self.finish("completed");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for TappedStream {
    fn drop(&mut self) {
        // Still pending: the client left before the end. Priced with what
        // had been counted by then.
        self.finish("client_disconnected");
    }
}

/// The answer to a call a limit refused.
fn refused_by_limit(refusal: Refusal) -> GatewayError {
    match refusal {
        Refusal::Rate {
            reason,
            retry_after_secs,
        } => GatewayError {
            retry_after: Some(retry_after_secs),
            ..GatewayError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", reason)
        },
        Refusal::Budget { budget_usd } => GatewayError::new(
            StatusCode::PAYMENT_REQUIRED,
            "budget_exceeded",
            format!(
                "this month's model budget of ${budget_usd:.2} is spent; \
                 it renews on the first of next month (UTC)"
            ),
        ),
    }
}

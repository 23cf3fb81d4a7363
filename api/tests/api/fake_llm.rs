//! A fake model provider for the tests: a real HTTP server speaking
//! OpenAI's chat-completions and Anthropic's messages wire formats,
//! streaming included, with tool calls when tools are offered. It records
//! what it received and can be told to fail.
//!
//! Behaviour by model name: `slow-*` streams 200 chunks 50 ms apart (for
//! disconnect tests); `truncated-*` breaks its stream off after two events;
//! `garbage-*` answers 200 with a body that is not JSON; `huge-*` answers
//! with 40 MiB; anything else answers at once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::Bytes;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

/// What one request looked like when it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
pub struct Shared {
    pub received: Mutex<Vec<Received>>,
    /// Statuses to answer with, one per request, before behaving.
    pub failures: Mutex<VecDeque<u16>>,
    /// Set when a slow stream was dropped before its end.
    pub stream_cancelled: AtomicBool,
}

pub struct FakeLlm {
    pub base_url: String,
    pub shared: Arc<Shared>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let shared = Arc::new(Shared::default());
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(chat))
                .route("/v1/messages", web::post().to(messages))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        FakeLlm {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            shared,
        }
    }

    pub fn fail_next(&self, statuses: &[u16]) {
        self.shared.failures.lock().unwrap().extend(statuses);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

fn record(shared: &Shared, req: &HttpRequest, body: &Value) -> Option<HttpResponse> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    shared.received.lock().unwrap().push(Received {
        path: req.path().to_owned(),
        authorization: header("authorization"),
        x_api_key: header("x-api-key"),
        body: body.clone(),
    });
    let status = shared.failures.lock().unwrap().pop_front()?;
    Some(
        HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap())
            .json(json!({"error": {"message": "forced failure", "type": "server_error"}})),
    )
}

fn sse(events: Vec<String>, slow: bool, shared: Arc<Shared>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(event_stream(events, slow, shared))
}

fn event_stream(
    events: Vec<String>,
    slow: bool,
    shared: Arc<Shared>,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    struct Guard(Arc<Shared>, bool);
    impl Drop for Guard {
        fn drop(&mut self) {
            if !self.1 {
                self.0.stream_cancelled.store(true, Ordering::SeqCst);
            }
        }
    }
    impl Guard {
        /// The stream reached its end: not a cancellation.
        fn complete(mut self) {
            self.1 = true;
        }
    }
    let guard = Guard(shared, false);
    futures_util::stream::unfold(
        (events.into_iter(), guard),
        move |(mut it, guard)| async move {
            match it.next() {
                Some(event) => {
                    if slow {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Some((Ok(Bytes::from(event)), (it, guard)))
                }
                None => {
                    guard.complete();
                    None
                }
            }
        },
    )
}

/// A scripted agent model: the user's last message says which tool to
/// call (`shell: CMD`, `write: PATH|CONTENT`, `read: PATH`, `fetch: URL`,
/// `reply: TEXT`; `loop: CMD` calls `shell` again after every result, as
/// a model that never stops would); once a tool result is back it
/// answers `saw: <the result>`. Anything else is answered `echo: <text>`.
fn script(body: &Value, model: &str) -> Value {
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let calls = messages.iter().filter(|m| m["role"] == "tool").count();
    let call = |name: &str, args: Value| {
        json!({"role": "assistant", "content": null, "tool_calls": [{
            "id": format!("call_{calls}"), "type": "function",
            "function": {"name": name, "arguments": args.to_string()}}]})
    };
    let say = |text: String| json!({"role": "assistant", "content": text});
    let (command, rest) = user.split_once(": ").unwrap_or(("", user.as_str()));
    let message = if command == "loop" {
        call("shell", json!({"command": rest}))
    } else if last["role"] == "tool" {
        say(format!(
            "saw: {}",
            last["content"].as_str().unwrap_or_default()
        ))
    } else {
        match command {
            "shell" => call("shell", json!({"command": rest})),
            "read" => call("read_file", json!({"path": rest})),
            "fetch" => call("http_fetch", json!({"url": rest})),
            "reply" => call("reply", json!({"text": rest})),
            "write" => {
                let (path, content) = rest.split_once('|').unwrap_or((rest, ""));
                call("write_file", json!({"path": path, "content": content}))
            }
            _ => say(format!("echo: {user}")),
        }
    };
    let finish = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    json!({"id": "chatcmpl-script", "object": "chat.completion", "created": 1, "model": model,
           "choices": [{"index": 0, "message": message, "finish_reason": finish}],
           "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
}

fn tool_name(body: &Value) -> Option<String> {
    let tool = body.get("tools")?.as_array()?.first()?;
    tool.pointer("/function/name")
        .or_else(|| tool.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

async fn chat(req: HttpRequest, shared: web::Data<Shared>, body: web::Json<Value>) -> HttpResponse {
    let body = body.into_inner();
    if let Some(failure) = record(&shared, &req, &body) {
        return failure;
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    if model.starts_with("script") {
        return HttpResponse::Ok().json(script(&body, &model));
    }
    if model.starts_with("garbage") {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body("{\"choices\": [truncated");
    }
    if model.starts_with("huge") {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(vec![b' '; 40 * 1024 * 1024]);
    }
    if model.starts_with("truncated") {
        // Pauses let the headers and first events reach the wire before
        // the connection is dropped.
        let events = futures_util::stream::unfold(0u8, |step| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let item = match step {
                0 => Ok(Bytes::from_static(
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n",
                )),
                1 => Ok(Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"con")),
                2 => Err(actix_web::error::ErrorInternalServerError(
                    "connection lost",
                )),
                _ => return None,
            };
            Some((item, step + 1))
        });
        return HttpResponse::Ok()
            .content_type("text/event-stream")
            .streaming(events);
    }
    let tool = tool_name(&body);
    if body["stream"].as_bool().unwrap_or(false) {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )];
        let slow = model.starts_with("slow");
        let words = if slow { 200 } else { 2 };
        match &tool {
            Some(name) => events.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                        "function": {"name": name, "arguments": "{\"city\": \"Paris\"}"}}]}),
                Value::Null,
            )),
            None => {
                for i in 0..words {
                    events.push(chunk(
                        json!({"content": if i == 0 { "Hello" } else { " world" }}),
                        Value::Null,
                    ));
                }
            }
        }
        let finish = if tool.is_some() { "tool_calls" } else { "stop" };
        events.push(chunk(json!({}), json!(finish)));
        if body.pointer("/stream_options/include_usage") == Some(&json!(true)) {
            events.push(format!(
                "data: {}\n\n",
                json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                       "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}})
            ));
        }
        events.push("data: [DONE]\n\n".to_owned());
        return sse(events, slow, shared.into_inner());
    }
    let message = match &tool {
        Some(name) => {
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": name, "arguments": "{\"city\": \"Paris\"}"}}]})
        }
        None => json!({"role": "assistant", "content": "Hello world"}),
    };
    HttpResponse::Ok().json(json!({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
        "choices": [{"index": 0, "message": message,
                     "finish_reason": if tool.is_some() { "tool_calls" } else { "stop" }}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    }))
}

async fn messages(
    req: HttpRequest,
    shared: web::Data<Shared>,
    body: web::Json<Value>,
) -> HttpResponse {
    let body = body.into_inner();
    if let Some(failure) = record(&shared, &req, &body) {
        return failure;
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let tool = tool_name(&body);
    let content = match &tool {
        Some(name) => {
            json!([{"type": "tool_use", "id": "toolu_1", "name": name, "input": {"city": "Paris"}}])
        }
        None => json!([{"type": "text", "text": "Hello world"}]),
    };
    let stop = if tool.is_some() {
        "tool_use"
    } else {
        "end_turn"
    };
    if body["stream"].as_bool().unwrap_or(false) {
        let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
        let mut events = vec![event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant",
                   "model": model, "content": [], "stop_reason": null, "stop_sequence": null,
                   "usage": {"input_tokens": 13, "output_tokens": 1}}}),
        )];
        match &tool {
            Some(name) => {
                events.push(event("content_block_start", json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": "toolu_1", "name": name, "input": {}}})));
                events.push(event("content_block_delta", json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Paris\"}"}})));
            }
            None => {
                events.push(event(
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ));
                for text in ["Hello", " world"] {
                    events.push(event(
                        "content_block_delta",
                        json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "text_delta", "text": text}}),
                    ));
                }
            }
        }
        events.push(event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        ));
        events.push(event(
            "message_delta",
            json!({"type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 5}}),
        ));
        events.push(event("message_stop", json!({"type": "message_stop"})));
        return sse(events, false, shared.into_inner());
    }
    HttpResponse::Ok().json(json!({
        "id": "msg_1", "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": stop, "stop_sequence": null, "usage": {"input_tokens": 13, "output_tokens": 5}
    }))
}

//! `carapace-agent chat`: the built-in agent's tool loop, for one message.
//!
//! The control plane runs it as a command inside the agent's sandbox with
//! the job on stdin (a JSON object: `model`, `message`, `history`,
//! `tools`, `max_steps`, `max_tokens`, `shell_timeout_s`, `today`). It
//! reads the agent's standing files from its memory (`AGENTS.md`,
//! `SOUL.md`, `MEMORY.md`, `memory/<today>.md`, as OpenClaw lays them
//! out), then asks the gateway (OpenAI chat-completions, with the run's
//! token: it holds no other credential) until the model replies, running
//! the tools it asks for. Every step is one JSON line on stdout:
//! `tool_call`, `tool_result`, then `reply` or `error` last.
//!
//! The loop is bounded (steps, tokens, each tool's time and output); the
//! sandbox, its egress proxy and the gateway are the boundaries, not this
//! code: a model can make it do anything a command in the sandbox can.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;
use crate::json::{self, Value};

/// Most bytes of a job on stdin.
const MAX_JOB: usize = 4 << 20;
/// Most bytes of a tool's output handed back to the model.
const MAX_TOOL_OUTPUT: usize = 16 * 1024;
/// Most bytes of one standing memory file put in the prompt.
const MAX_STANDING_FILE: usize = 64 * 1024;
/// Most bytes of a gateway answer.
const MAX_ANSWER: usize = 8 << 20;
/// Longest wait for one gateway answer.
const GATEWAY_TIMEOUT: Duration = Duration::from_secs(300);
/// Most files `list_files` names.
const MAX_LISTED: usize = 500;

const MEMORY_DIR: &str = "/memory";
/// The control plane's name inside a sandbox (through the egress proxy).
const CONTROL_PLANE: &str = "carapace.internal";
const WORKSPACE_DIR: &str = "/workspace";

/// The tools the loop knows, with their JSON-schema parameters.
const TOOLS: [(&str, &str, &str); 6] = [
    (
        "shell",
        "Run a shell command (/bin/sh -c) in the sandbox, in /workspace. Returns its exit code and output.",
        r#"{"type":"object","properties":{"command":{"type":"string"}},"required":["command"]}"#,
    ),
    (
        "read_file",
        "Read a text file from your memory (/memory, the default for relative paths) or /workspace.",
        r#"{"type":"object","properties":{"path":{"type":"string"}},"required":["path"]}"#,
    ),
    (
        "write_file",
        "Write a text file (replacing it) in your memory (/memory, the default for relative paths) or /workspace. What you write in /memory is remembered.",
        r#"{"type":"object","properties":{"path":{"type":"string"},"content":{"type":"string"}},"required":["path","content"]}"#,
    ),
    (
        "list_files",
        "List the files under a directory of /memory (the default) or /workspace.",
        r#"{"type":"object","properties":{"path":{"type":"string"}}}"#,
    ),
    (
        "http_fetch",
        "Fetch an http:// URL (GET) through the sandbox's egress proxy; only allow-listed hosts answer. Requests to http://carapace.internal/ carry your run's token.",
        r#"{"type":"object","properties":{"url":{"type":"string"}},"required":["url"]}"#,
    ),
    (
        "reply",
        "Send your final answer to the user and end this turn.",
        r#"{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}"#,
    ),
];

/// One line of output; the run's token never appears in it (a tool's
/// output can hold it: `env`), since lines become stored events.
fn emit(event: Value) {
    let mut line = event.to_json();
    if let Ok(token) = std::env::var("CARAPACE_RUN_TOKEN")
        && token.len() >= 16
    {
        line = line.replace(&token, "[run token]");
    }
    line.push('\n');
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn fail(detail: &str) -> i32 {
    emit(Value::obj([
        ("event", Value::str("error")),
        ("detail", Value::str(detail)),
    ]));
    1
}

/// The job the control plane hands over.
struct Job {
    model: String,
    message: String,
    history: Vec<(String, String)>,
    tools: Vec<String>,
    max_steps: u64,
    max_tokens: u64,
    shell_timeout: Duration,
    today: String,
}

fn read_job() -> Result<Job, String> {
    let mut raw = Vec::new();
    std::io::stdin()
        .take(MAX_JOB as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("cannot read the job: {e}"))?;
    if raw.len() > MAX_JOB {
        return Err("the job is too large".into());
    }
    let text = String::from_utf8(raw).map_err(|_| "the job is not UTF-8")?;
    let job = json::parse(&text).map_err(|e| format!("the job is not valid JSON: {e}"))?;
    let text_of = |key: &str| job.get(key).as_str().map(str::to_owned);
    let history = job
        .get("history")
        .as_array()
        .iter()
        .filter_map(|m| {
            Some((
                m.get("role").as_str()?.to_owned(),
                m.get("content").as_str()?.to_owned(),
            ))
        })
        .collect();
    Ok(Job {
        model: text_of("model").ok_or("the job has no model")?,
        message: text_of("message").ok_or("the job has no message")?,
        history,
        tools: job
            .get("tools")
            .as_array()
            .iter()
            .filter_map(|t| t.as_str().map(str::to_owned))
            .collect(),
        max_steps: job.get("max_steps").as_u64().unwrap_or(8).clamp(1, 100),
        max_tokens: job.get("max_tokens").as_u64().unwrap_or(100_000),
        shell_timeout: Duration::from_secs(
            job.get("shell_timeout_s")
                .as_u64()
                .unwrap_or(30)
                .clamp(1, 3600),
        ),
        today: text_of("today").unwrap_or_default(),
    })
}

/// The system prompt: who the agent is, and its standing memory files.
fn system_prompt(today: &str) -> String {
    let mut prompt = String::from(
        "You are an agent running inside a Carapace sandbox. Your memory is the directory \
         /memory: what you write there is kept between conversations. Use the tools to act, \
         and the reply tool (or a plain answer) to answer the user.\n",
    );
    let daily = format!("memory/{today}.md");
    let mut names = vec!["AGENTS.md", "SOUL.md", "MEMORY.md"];
    if !today.is_empty() && today.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        names.push(&daily);
    }
    for name in names {
        let path = Path::new(MEMORY_DIR).join(name);
        let Ok(file) = std::fs::File::open(&path) else {
            continue;
        };
        let mut data = Vec::new();
        if file
            .take(MAX_STANDING_FILE as u64)
            .read_to_end(&mut data)
            .is_ok()
        {
            prompt.push_str(&format!(
                "\n## {name}\n{}\n",
                String::from_utf8_lossy(&data)
            ));
        }
    }
    prompt
}

fn tool_definitions(allowed: &[String]) -> Value {
    Value::Arr(
        TOOLS
            .iter()
            .filter(|(name, _, _)| *name == "reply" || allowed.iter().any(|a| a == name))
            .map(|(name, description, schema)| {
                Value::obj([
                    ("type", Value::str("function")),
                    (
                        "function",
                        Value::obj([
                            ("name", Value::str(*name)),
                            ("description", Value::str(*description)),
                            ("parameters", json::parse(schema).unwrap_or(Value::Null)),
                        ]),
                    ),
                ])
            })
            .collect(),
    )
}

fn message(role: &str, content: &str) -> Value {
    Value::obj([("role", Value::str(role)), ("content", Value::str(content))])
}

/// Runs the loop; the process's exit code.
pub fn main() -> i32 {
    let job = match read_job() {
        Ok(job) => job,
        Err(e) => return fail(&e),
    };
    let (Ok(gateway), Ok(token)) = (
        std::env::var("CARAPACE_GATEWAY_URL"),
        std::env::var("CARAPACE_RUN_TOKEN"),
    ) else {
        return fail("the sandbox has no gateway URL or run token");
    };
    let url = format!("{}/chat/completions", gateway.trim_end_matches('/'));
    let auth = format!("Bearer {token}");
    let mut messages = vec![message("system", &system_prompt(&job.today))];
    for (role, content) in &job.history {
        if role == "user" || role == "assistant" {
            messages.push(message(role, content));
        }
    }
    messages.push(message("user", &job.message));
    let tools = tool_definitions(&job.tools);
    let mut tokens = 0u64;
    for step in 1..=job.max_steps {
        let body = Value::obj([
            ("model", Value::str(job.model.as_str())),
            ("messages", Value::Arr(messages.clone())),
            ("tools", tools.clone()),
        ])
        .to_json();
        let answer = match http::request(
            "POST",
            &url,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
            GATEWAY_TIMEOUT,
            MAX_ANSWER,
        ) {
            Ok(answer) => answer,
            Err(e) => return fail(&format!("the gateway could not be reached: {e}")),
        };
        let text = String::from_utf8_lossy(&answer.body);
        if answer.status != 200 {
            let cut: String = text.chars().take(2000).collect();
            return fail(&format!("the gateway answered {}: {cut}", answer.status));
        }
        let Ok(answer) = json::parse(&text) else {
            return fail("the gateway's answer is not JSON");
        };
        tokens += answer
            .get("usage")
            .get("total_tokens")
            .as_u64()
            .unwrap_or(0);
        let said = answer
            .get("choices")
            .as_array()
            .first()
            .map(|c| c.get("message").clone())
            .unwrap_or(Value::Null);
        let calls = said.get("tool_calls").as_array().to_vec();
        let content = said.get("content").as_str().unwrap_or_default().to_owned();
        if calls.is_empty() {
            return done(&content, step, tokens);
        }
        messages.push(said.clone());
        for call in &calls {
            let id = call.get("id").as_str().unwrap_or("call").to_owned();
            let name = call
                .get("function")
                .get("name")
                .as_str()
                .unwrap_or_default();
            let arguments = call
                .get("function")
                .get("arguments")
                .as_str()
                .unwrap_or("{}");
            emit(Value::obj([
                ("event", Value::str("tool_call")),
                ("id", Value::str(id.as_str())),
                ("name", Value::str(name)),
                ("arguments", Value::str(arguments)),
            ]));
            let args = json::parse(arguments).unwrap_or(Value::Null);
            if name == "reply" {
                let text = args.get("text").as_str().unwrap_or(&content).to_owned();
                return done(&text, step, tokens);
            }
            let (ok, output) = if job.tools.iter().any(|t| t == name) {
                run_tool(name, &args, job.shell_timeout)
            } else {
                (
                    false,
                    format!("the tool {name:?} is not allowed for this agent"),
                )
            };
            let output = cut(output);
            emit(Value::obj([
                ("event", Value::str("tool_result")),
                ("id", Value::str(id.as_str())),
                ("name", Value::str(name)),
                ("ok", Value::Bool(ok)),
                ("output", Value::str(output.as_str())),
            ]));
            messages.push(Value::obj([
                ("role", Value::str("tool")),
                ("tool_call_id", Value::str(id)),
                ("content", Value::str(output)),
            ]));
        }
        if tokens > job.max_tokens {
            return fail(&format!(
                "the token limit of this message ({}) was reached",
                job.max_tokens
            ));
        }
    }
    fail(&format!(
        "the step limit of this message ({}) was reached without a reply",
        job.max_steps
    ))
}

fn done(text: &str, steps: u64, tokens: u64) -> i32 {
    emit(Value::obj([
        ("event", Value::str("reply")),
        ("text", Value::str(text)),
        ("steps", Value::Num(steps as f64)),
        ("tokens", Value::Num(tokens as f64)),
    ]));
    0
}

/// Keeps at most [`MAX_TOOL_OUTPUT`] bytes, on a character boundary.
fn cut(mut text: String) -> String {
    if text.len() > MAX_TOOL_OUTPUT {
        let mut end = MAX_TOOL_OUTPUT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("\n[output cut]");
    }
    text
}

fn run_tool(name: &str, args: &Value, shell_timeout: Duration) -> (bool, String) {
    let arg = |key: &str| args.get(key).as_str().unwrap_or_default();
    let result = match name {
        "shell" => shell(arg("command"), shell_timeout),
        "read_file" => resolve(arg("path")).and_then(|p| {
            let file = std::fs::File::open(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut data = Vec::new();
            file.take(MAX_TOOL_OUTPUT as u64 + 1)
                .read_to_end(&mut data)
                .map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&data).into_owned())
        }),
        "write_file" => resolve(arg("path")).and_then(|p| {
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&p, arg("content")).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok(format!(
                "wrote {} bytes to {}",
                arg("content").len(),
                p.display()
            ))
        }),
        "list_files" => {
            let path = if arg("path").is_empty() {
                MEMORY_DIR
            } else {
                arg("path")
            };
            resolve(path).map(|root| {
                let mut found = Vec::new();
                list(&root, &root, &mut found);
                found.join("\n")
            })
        }
        "http_fetch" => {
            // The run's token goes to the control plane only, never to
            // another host.
            let token = std::env::var("CARAPACE_RUN_TOKEN").unwrap_or_default();
            let auth = format!("Bearer {token}");
            let own = arg("url").starts_with(&format!("http://{CONTROL_PLANE}/"));
            let headers: &[(&str, &str)] = if own && !token.is_empty() {
                &[("Authorization", auth.as_str())]
            } else {
                &[]
            };
            http::request(
                "GET",
                arg("url"),
                headers,
                &[],
                Duration::from_secs(30),
                MAX_TOOL_OUTPUT,
            )
            .map(|r| format!("status {}\n{}", r.status, String::from_utf8_lossy(&r.body)))
        }
        other => Err(format!("unknown tool {other:?}")),
    };
    match result {
        Ok(output) => (true, output),
        Err(e) => (false, e),
    }
}

/// A tool's path: inside `/memory` (relative paths too) or `/workspace`,
/// without `..`.
fn resolve(path: &str) -> Result<PathBuf, String> {
    let candidate = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(MEMORY_DIR).join(path)
    };
    if candidate
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err("paths may not contain ..".into());
    }
    if !(candidate.starts_with(MEMORY_DIR) || candidate.starts_with(WORKSPACE_DIR)) {
        return Err("paths must be inside /memory or /workspace".into());
    }
    Ok(candidate)
}

fn list(root: &Path, dir: &Path, found: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if found.len() >= MAX_LISTED {
            return;
        }
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => list(root, &path, found),
            Ok(t) if t.is_file() => found.push(
                path.strip_prefix(root)
                    .unwrap_or(&path)
                    .display()
                    .to_string(),
            ),
            _ => {}
        }
    }
}

/// Runs `sh -c command` with a deadline; exit code and output.
fn shell(command: &str, timeout: Duration) -> Result<String, String> {
    let dir = if Path::new(WORKSPACE_DIR).is_dir() {
        WORKSPACE_DIR
    } else {
        "/"
    };
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("the command could not start: {e}"))?;
    // Readers pass chunks on as they come: a command that leaves a
    // background process holding its pipes must not hold the loop up.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Option<Vec<u8>>)>();
    let pipes = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ];
    for (i, pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            if let Some(mut pipe) = pipe {
                while let Ok(n @ 1..) = pipe.read(&mut buf) {
                    if tx.send((i, Some(buf[..n].to_vec()))).is_err() {
                        return;
                    }
                }
            }
            let _ = tx.send((i, None));
        });
    }
    drop(tx);
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("waiting for the command failed: {e}")),
        }
    };
    let mut output = [Vec::new(), Vec::new()];
    let mut open = 2;
    let grace = Instant::now() + Duration::from_millis(500);
    while open > 0 {
        let left = grace.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Some(data))) => {
                if output[i].len() < MAX_TOOL_OUTPUT * 4 {
                    output[i].extend_from_slice(&data);
                }
            }
            Ok((_, None)) => open -= 1,
            Err(_) => break,
        }
    }
    let [stdout, stderr] = output;
    let head = match status.and_then(|s| s.code()) {
        Some(code) => format!("exit code {code}"),
        None if status.is_none() => format!("timed out after {} s", timeout.as_secs()),
        None => "killed by a signal".to_owned(),
    };
    Ok(format!(
        "{head}\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    ))
}

#[cfg(test)]
mod tests {
    use super::{resolve, tool_definitions};

    #[test]
    fn tool_paths_stay_in_memory_or_workspace() {
        assert_eq!(
            resolve("notes.md").unwrap().to_str(),
            Some("/memory/notes.md")
        );
        assert!(resolve("/workspace/a/b").is_ok());
        assert!(resolve("../etc/passwd").is_err());
        assert!(resolve("/memory/../etc/passwd").is_err());
        assert!(resolve("/etc/passwd").is_err());
        assert!(resolve("/memoryx/a").is_err());
    }

    #[test]
    fn only_allowed_tools_and_reply_are_offered() {
        let tools = tool_definitions(&["shell".to_owned()]);
        let names: Vec<_> = tools
            .as_array()
            .iter()
            .map(|t| {
                t.get("function")
                    .get("name")
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(names, ["shell", "reply"]);
    }
}

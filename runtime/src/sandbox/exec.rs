//! Commands in a sandbox: run to completion ([`Runtime::exec`]) or with
//! their output streamed as it comes ([`Runtime::exec_stream`]).

use std::time::Duration;

use carapace_agent::protocol::{ExecReply, ExecRequest, Outcome, Reply, Request};
use tokio::sync::mpsc;

use super::{Exec, ExecResult, Live, MAX_OUTPUT, PROXY_PORT, Runtime};
use crate::Error;

/// What a streamed command produces, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// Bytes the command wrote to standard output.
    Stdout(Vec<u8>),
    /// Bytes it wrote to standard error.
    Stderr(Vec<u8>),
    /// How it ended (its `stdout` and `stderr` are empty: they were
    /// streamed). Always the last event, unless the sandbox went away.
    Done(ExecResult),
    /// The sandbox stopped answering; nothing follows.
    Failed(String),
}

/// The agent's request for `exec`, with the sandbox's standard environment.
fn request(live: &Live, exec: Exec, stream: bool) -> Result<(u64, Request), Error> {
    if exec.argv.is_empty() {
        return Err(Error::Sandbox("the command is empty".into()));
    }
    let mut env = vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
        "HOME=/workspace".to_owned(),
        format!("HTTP_PROXY=http://127.0.0.1:{PROXY_PORT}"),
        format!("HTTPS_PROXY=http://127.0.0.1:{PROXY_PORT}"),
        format!("http_proxy=http://127.0.0.1:{PROXY_PORT}"),
        format!("https_proxy=http://127.0.0.1:{PROXY_PORT}"),
    ];
    env.extend(exec.env.iter().map(|(k, v)| format!("{k}={v}")));
    let id = live.control.next_id();
    let request = Request::Exec(ExecRequest {
        id,
        timeout_ms: u64::try_from(exec.timeout.as_millis()).unwrap_or(u64::MAX),
        max_output: MAX_OUTPUT,
        argv: exec.argv.into_iter().map(String::into_bytes).collect(),
        env: env.into_iter().map(String::into_bytes).collect(),
        cwd: b"/workspace".to_vec(),
        stdin: exec.stdin,
        stream,
    });
    Ok((id, request))
}

fn result(reply: ExecReply, oom_before: Option<u64>, oom_after: Option<u64>) -> ExecResult {
    let (exit_code, timed_out) = match reply.outcome {
        Outcome::Exited(code) => (Some(code), false),
        // A hostile agent picks the number: keep it a signal number.
        Outcome::Signaled(signal) => (Some(128 + signal.clamp(0, 127)), false),
        Outcome::TimedOut => (None, true),
        Outcome::SpawnFailed => (None, false),
    };
    ExecResult {
        exit_code,
        timed_out,
        stdout: reply.stdout,
        stderr: reply.stderr,
        stdout_truncated: reply.stdout_truncated,
        stderr_truncated: reply.stderr_truncated,
        error: (reply.outcome == Outcome::SpawnFailed).then_some(reply.error),
        oom_killed: matches!((oom_before, oom_after), (Some(b), Some(a)) if a > b),
    }
}

/// The agent kills a command at its timeout; this is how long it gets
/// beyond that to say so.
const GRACE: Duration = Duration::from_secs(10);

impl Runtime {
    /// Runs a command in the sandbox's `/workspace` and waits for it.
    pub async fn exec(&self, id: &str, exec: Exec) -> Result<ExecResult, Error> {
        let (live, _busy) = self.enter(id)?;
        let timeout = exec.timeout;
        let (request_id, request) = request(&live, exec, false)?;
        let oom_before = crate::cgroups::oom_kills(&self.tag, &live.container);
        let reply = live
            .control
            .call(request_id, &request, timeout + GRACE)
            .await?;
        let oom_after = crate::cgroups::oom_kills(&self.tag, &live.container);
        match reply {
            Reply::Exec(reply) => Ok(result(reply, oom_before, oom_after)),
            _ => Err(Error::Sandbox(
                "the sandbox agent answered the wrong request".into(),
            )),
        }
    }

    /// Runs a command and streams its output as it comes: the events end
    /// with [`StreamEvent::Done`] (or [`StreamEvent::Failed`]). A reader
    /// that falls behind slows the command down (its pipes fill up); it
    /// never loses output.
    pub async fn exec_stream(
        &self,
        id: &str,
        exec: Exec,
    ) -> Result<mpsc::Receiver<StreamEvent>, Error> {
        let (live, busy) = self.enter(id)?;
        let timeout = exec.timeout;
        let (request_id, request) = request(&live, exec, true)?;
        let oom_before = crate::cgroups::oom_kills(&self.tag, &live.container);
        let mut replies = live.control.call_stream(request_id, &request).await?;
        let (tx, rx) = mpsc::channel(16);
        let (tag, container) = (self.tag.clone(), live.container.clone());
        self.handle.spawn(async move {
            let _busy = busy;
            let deadline = tokio::time::Instant::now() + timeout + GRACE;
            loop {
                let event = match tokio::time::timeout_at(deadline, replies.recv()).await {
                    Ok(Some(Reply::Output { fd: 1, data, .. })) => StreamEvent::Stdout(data),
                    Ok(Some(Reply::Output { data, .. })) => StreamEvent::Stderr(data),
                    Ok(Some(Reply::Exec(reply))) => {
                        let oom_after = crate::cgroups::oom_kills(&tag, &container);
                        let _ = tx
                            .send(StreamEvent::Done(result(reply, oom_before, oom_after)))
                            .await;
                        return;
                    }
                    Ok(Some(_)) => {
                        StreamEvent::Failed("the sandbox agent answered the wrong request".into())
                    }
                    Ok(None) => StreamEvent::Failed("the sandbox has stopped".into()),
                    Err(_) => {
                        StreamEvent::Failed("the sandbox agent did not answer in time".into())
                    }
                };
                let last = matches!(event, StreamEvent::Failed(_));
                // A reader that takes nothing for 30 s is gone.
                let sent = tokio::time::timeout(Duration::from_secs(30), tx.send(event)).await;
                if !matches!(sent, Ok(Ok(()))) || last {
                    live.control.forget(request_id);
                    return;
                }
            }
        });
        Ok(rx)
    }
}

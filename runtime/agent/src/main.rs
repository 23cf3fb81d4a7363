//! `carapace-agent`: init (PID 1) of every Carapace sandbox.
//!
//! Its stdin and stdout are the sandbox's control socket to the worker. It
//! announces itself with a `Ready` frame, then runs what the worker asks
//! (commands, workspace file reads and writes), each in its own thread, and
//! reaps every process that ends in the sandbox, as an init must. When the
//! worker closes the socket the agent exits, and the sandbox with it.
//!
//! std only, built static by `runtime/build.rs` with a bare `rustc`: the
//! few libc calls it needs are declared below.

mod chat;
#[allow(dead_code)]
mod http;
#[allow(dead_code)]
mod json;
#[path = "protocol.rs"]
#[allow(dead_code)]
mod protocol;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use protocol::{ExecReply, ExecRequest, Outcome, Reply, Request};

mod sys {
    // The declarations match the C prototypes of Linux's libc.
    #[allow(unsafe_code)]
    unsafe extern "C" {
        pub fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
        pub fn waitid(idtype: u32, id: u32, info: *mut u8, options: i32) -> i32;
        pub fn kill(pid: i32, sig: i32) -> i32;
        pub fn prctl(option: i32, ...) -> i32;
    }
    pub const PR_SET_DUMPABLE: i32 = 4;
    pub const SIGKILL: i32 = 9;
    pub const P_ALL: u32 = 0;
    pub const WEXITED: i32 = 4;
    pub const WNOWAIT: i32 = 0x0100_0000;
    pub const O_NONBLOCK: i32 = 0o4000;
    #[cfg(any(target_arch = "aarch64", target_arch = "arm"))]
    pub const O_NOFOLLOW: i32 = 0o100000;
    #[cfg(not(any(target_arch = "aarch64", target_arch = "arm")))]
    pub const O_NOFOLLOW: i32 = 0o400000;
}

/// Waits for a zombie among our children without reaping it; its pid.
fn peek_exited() -> io::Result<i32> {
    // siginfo_t is 128 bytes; for SIGCHLD, si_pid is at offset 16 on every
    // 64-bit Linux ABI.
    let mut info = [0u8; 128];
    // SAFETY: `info` is a writable buffer of siginfo_t's size.
    #[allow(unsafe_code)]
    let rc = unsafe {
        sys::waitid(
            sys::P_ALL,
            0,
            info.as_mut_ptr(),
            sys::WEXITED | sys::WNOWAIT,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut pid = [0u8; 4];
    pid.copy_from_slice(&info[16..20]);
    Ok(i32::from_ne_bytes(pid))
}

/// Reaps `pid`, returning its raw wait status.
fn reap(pid: i32) -> io::Result<i32> {
    let mut status = 0i32;
    // SAFETY: `status` is a valid out-pointer; the pid is a zombie child.
    #[allow(unsafe_code)]
    let rc = unsafe { sys::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(status)
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory
    // is involved.
    #[allow(unsafe_code)]
    unsafe {
        sys::kill(-pgid, sys::SIGKILL);
    }
}

/// Who waits for which child. The reaper hands each exited child's status
/// to the thread that spawned it and reaps orphans (anything reparented to
/// us) silently.
#[derive(Default)]
struct Children {
    waiting: HashMap<i32, Sender<i32>>,
    /// Spawns in flight: a zombie we do not know yet may be theirs.
    spawning: usize,
}

struct Reaper {
    children: Mutex<Children>,
    wake: Condvar,
}

impl Reaper {
    fn run(&self) {
        loop {
            match peek_exited() {
                Ok(pid) => {
                    let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(tx) = children.waiting.remove(&pid) {
                        drop(children);
                        if let Ok(status) = reap(pid) {
                            let _ = tx.send(status);
                        }
                    } else if children.spawning > 0 {
                        // Possibly a child whose spawn has not returned yet
                        // (or whose exec failed: std reaps that one itself).
                        drop(children);
                        thread::sleep(Duration::from_millis(1));
                    } else {
                        drop(children);
                        let _ = reap(pid);
                    }
                }
                Err(_) => {
                    // No children at all: sleep until a spawn wakes us.
                    let children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
                    let _ = self.wake.wait_timeout(children, Duration::from_secs(1));
                }
            }
        }
    }
}

type Out = Arc<Mutex<io::Stdout>>;

/// Why a request could not be served: no thread or process could be had.
const NO_ROOM: &str = "the sandbox is at its process limit (pids); nothing more could be started";

fn send(out: &Out, reply: &Reply) {
    let mut out = out.lock().unwrap_or_else(PoisonError::into_inner);
    // A broken control socket means the worker is gone; the read loop sees
    // it too and exits.
    let _ = protocol::write_frame(&mut *out, &reply.encode());
}

/// Where a streamed command's output goes: the control socket, as
/// `Output` frames of this request and pipe.
struct Stream {
    out: Out,
    id: u64,
    fd: u8,
}

/// Reads a pipe to its end, keeping the first `max` bytes, or sending
/// everything as it comes when streaming.
fn drain(
    mut pipe: impl Read,
    max: usize,
    kept: Arc<Mutex<(Vec<u8>, bool)>>,
    stream: Option<Stream>,
) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) if stream.is_some() => {
                if let Some(s) = &stream {
                    send(
                        &s.out,
                        &Reply::Output {
                            id: s.id,
                            fd: s.fd,
                            data: buf[..n].to_vec(),
                        },
                    );
                }
            }
            Ok(n) => {
                let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
                let room = max.saturating_sub(kept.0.len());
                kept.0.extend_from_slice(&buf[..n.min(room)]);
                if n > room {
                    kept.1 = true;
                }
            }
        }
    }
}

fn exec(reaper: &Reaper, req: ExecRequest, out: &Out) -> ExecReply {
    let mut reply = ExecReply {
        id: req.id,
        outcome: Outcome::SpawnFailed,
        stdout: Vec::new(),
        stderr: Vec::new(),
        stdout_truncated: false,
        stderr_truncated: false,
        error: String::new(),
    };
    let Some(program) = req.argv.first() else {
        reply.error = "empty command".into();
        return reply;
    };
    let mut cmd = Command::new(OsStr::from_bytes(program));
    cmd.args(req.argv[1..].iter().map(|a| OsStr::from_bytes(a)))
        .env_clear()
        .current_dir(OsStr::from_bytes(&req.cwd))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    for pair in &req.env {
        let (key, value) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (&pair[..], &b""[..]),
        };
        cmd.env(OsStr::from_bytes(key), OsStr::from_bytes(value));
    }
    let started = Instant::now();
    let (tx, rx): (Sender<i32>, Receiver<i32>) = mpsc::channel();
    let child = {
        reaper
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawning += 1;
        let spawned = cmd.spawn();
        let mut children = reaper
            .children
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        children.spawning -= 1;
        match spawned {
            Ok(child) => {
                children.waiting.insert(child.id() as i32, tx);
                reaper.wake.notify_all();
                child
            }
            Err(e) => {
                reply.error = format!("cannot start {}: {e}", String::from_utf8_lossy(program));
                return reply;
            }
        }
    };
    let pid = child.id() as i32;
    let max = req.max_output as usize;
    let (mut stdin, stdout, stderr) = (child.stdin, child.stdout, child.stderr);
    let input = req.stdin;
    // A sandbox at its pids limit may refuse a thread: the command is then
    // stopped and reported, never left running unwatched.
    let no_room = |mut reply: ExecReply| {
        kill_group(pid);
        reply.error = NO_ROOM.into();
        reply
    };
    let Ok(writer) = thread::Builder::new().spawn(move || {
        if let Some(pipe) = stdin.as_mut() {
            let _ = pipe.write_all(&input);
        }
    }) else {
        return no_room(reply);
    };
    let out_kept = Arc::new(Mutex::new((Vec::new(), false)));
    let err_kept = Arc::new(Mutex::new((Vec::new(), false)));
    let (done_tx, done_rx) = mpsc::channel::<()>();
    for (fd, pipe, kept) in [
        (
            1u8,
            stdout.map(|p| Box::new(p) as Box<dyn Read + Send>),
            out_kept.clone(),
        ),
        (
            2u8,
            stderr.map(|p| Box::new(p) as Box<dyn Read + Send>),
            err_kept.clone(),
        ),
    ] {
        let done = done_tx.clone();
        let stream = req.stream.then(|| Stream {
            out: out.clone(),
            id: req.id,
            fd,
        });
        let drainer = thread::Builder::new().spawn(move || {
            if let Some(pipe) = pipe {
                drain(pipe, max, kept, stream);
            }
            let _ = done.send(());
        });
        if drainer.is_err() {
            return no_room(reply);
        }
    }
    drop(done_tx);
    let deadline = started + Duration::from_millis(req.timeout_ms);
    let status = match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        Ok(status) => Some(status),
        Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
    };
    // Output may still be held open by the command's own children: wait
    // for it until the deadline, then stop the whole group.
    let mut timed_out = status.is_none();
    for _ in 0..2 {
        if done_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_err()
        {
            timed_out = true;
            break;
        }
    }
    let status = if timed_out {
        kill_group(pid);
        status.or_else(|| rx.recv_timeout(Duration::from_secs(5)).ok())
    } else {
        status
    };
    let _ = writer.join();
    // Give the readers a moment to see the end of pipes the kill closed.
    let grace = Instant::now() + Duration::from_millis(100);
    while done_rx
        .recv_timeout(grace.saturating_duration_since(Instant::now()))
        .is_ok()
    {}
    let take = |kept: &Arc<Mutex<(Vec<u8>, bool)>>| {
        let mut kept = kept.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut kept.0), kept.1)
    };
    (reply.stdout, reply.stdout_truncated) = take(&out_kept);
    (reply.stderr, reply.stderr_truncated) = take(&err_kept);
    reply.outcome = match status {
        _ if timed_out => Outcome::TimedOut,
        Some(s) if s & 0x7f == 0 => Outcome::Exited((s >> 8) & 0xff),
        Some(s) => Outcome::Signaled(s & 0x7f),
        None => Outcome::TimedOut,
    };
    reply
}

fn write_file(path: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    let path = std::path::Path::new(OsStr::from_bytes(path));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(path, data).map_err(|e| e.to_string())?;
    Ok(Vec::new())
}

fn read_file(path: &[u8], max: u32) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    // Not through a link at the end of the path (a file swapped for one
    // after it was listed), and never blocking on a FIFO.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(sys::O_NOFOLLOW | sys::O_NONBLOCK)
        .open(OsStr::from_bytes(path))
        .map_err(|e| e.to_string())?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err("not a regular file".to_owned());
    }
    let mut data = Vec::new();
    file.take(u64::from(max) + 1)
        .read_to_end(&mut data)
        .map_err(|e| e.to_string())?;
    if data.len() > max as usize {
        return Err(format!("file is larger than {max} bytes"));
    }
    Ok(data)
}

/// Deepest directory nesting [`list_files`] descends into.
const MAX_DEPTH: usize = 32;

/// The regular files under `root` (see [`Request::ListFiles`]), encoded.
fn list_files(root: &[u8], max: u32) -> Result<Vec<u8>, String> {
    let mut files = Vec::new();
    let root = std::path::Path::new(OsStr::from_bytes(root));
    walk(root, &[], &mut files, max as usize)?;
    Ok(protocol::Listing(files).encode())
}

fn walk(
    dir: &std::path::Path,
    prefix: &[u8],
    files: &mut Vec<protocol::Listed>,
    max: usize,
) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound && prefix.is_empty() => return Ok(()),
        Err(e) => return Err(format!("{}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        // Not followed: a link's target is never what gets listed.
        let meta = std::fs::symlink_metadata(entry.path()).map_err(|e| e.to_string())?;
        let depth = prefix.iter().filter(|&&b| b == b'/').count();
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(entry.file_name().as_bytes());
        if meta.is_dir() {
            if depth + 1 < MAX_DEPTH {
                walk(&entry.path(), &path, files, max)?;
            }
        } else if meta.is_file() {
            if files.len() >= max {
                return Err(format!("more than {max} files"));
            }
            let times = [
                meta.mtime(),
                meta.mtime_nsec(),
                meta.ctime(),
                meta.ctime_nsec(),
            ];
            let stamp = times
                .iter()
                .fold(meta.ino(), |acc, &t| acc.rotate_left(17) ^ (t as u64));
            files.push(protocol::Listed {
                path,
                size: meta.size(),
                stamp,
            });
        }
    }
    Ok(())
}

fn main() {
    // `carapace-agent chat`: the built-in agent's tool loop, run as a
    // command inside the sandbox (not as init).
    if std::env::args_os().nth(1).as_deref() == Some(OsStr::new("chat")) {
        std::process::exit(chat::main());
    }
    // Commands run as the same user as the agent: without this, one could
    // open /proc/1/mem and rewrite the agent (and so forge what the worker
    // hears). Not dumpable, /proc/1 is out of their reach.
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integers only.
    #[allow(unsafe_code)]
    unsafe {
        sys::prctl(sys::PR_SET_DUMPABLE, 0u64, 0u64, 0u64, 0u64);
    }
    let out: Out = Arc::new(Mutex::new(io::stdout()));
    send(&out, &Reply::Ready);
    let reaper = Arc::new(Reaper {
        children: Mutex::default(),
        wake: Condvar::new(),
    });
    {
        let reaper = reaper.clone();
        if thread::Builder::new().spawn(move || reaper.run()).is_err() {
            std::process::exit(3);
        }
    }
    let mut input = io::stdin().lock();
    loop {
        let frame = match protocol::read_frame(&mut input) {
            Ok(Some(frame)) => frame,
            // The worker closed the socket (or broke the protocol): the
            // sandbox ends.
            Ok(None) | Err(_) => std::process::exit(0),
        };
        let Ok(request) = Request::decode(&frame) else {
            std::process::exit(2);
        };
        let (out, reaper) = (out.clone(), reaper.clone());
        // What to answer if no thread can be had for the request (the
        // sandbox is at its pids limit): the agent must not die of it.
        let refused = match &request {
            Request::Exec(req) => Reply::Exec(ExecReply {
                id: req.id,
                outcome: Outcome::SpawnFailed,
                stdout: Vec::new(),
                stderr: Vec::new(),
                stdout_truncated: false,
                stderr_truncated: false,
                error: NO_ROOM.into(),
            }),
            Request::WriteFile { id, .. }
            | Request::ReadFile { id, .. }
            | Request::ListFiles { id, .. } => Reply::File {
                id: *id,
                result: Err(NO_ROOM.into()),
            },
        };
        let worker_out = out.clone();
        let spawned = thread::Builder::new().spawn(move || {
            let out = worker_out;
            let reply = match request {
                Request::Exec(req) => Reply::Exec(exec(&reaper, req, &out)),
                Request::WriteFile { id, path, data } => Reply::File {
                    id,
                    result: write_file(&path, &data),
                },
                Request::ReadFile { id, path, max } => Reply::File {
                    id,
                    result: read_file(&path, max),
                },
                Request::ListFiles { id, root, max } => Reply::File {
                    id,
                    result: list_files(&root, max),
                },
            };
            send(&out, &reply);
        });
        if spawned.is_err() {
            send(&out, &refused);
        }
    }
}

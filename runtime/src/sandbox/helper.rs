//! The container helper: a short-lived, single-threaded process that makes
//! one libcontainer call that forks (creating a container) and exits.
//!
//! libcontainer forks and changes namespaces; doing that from inside a
//! multi-threaded tokio process is unsound, so the worker runs
//! `<helper> create <state-root> <id> <bundle>` with the sandbox's control
//! socket as the helper's standard input. The helper creates the container,
//! giving it the socket as stdin and stdout (its init then waits for the
//! start signal), prints `{"pid": N}` and exits. Errors go to standard
//! error, one line, with exit status 1.
//!
//! The worker starts the container itself ([`super::pool::signal_start`]),
//! not with libcontainer's `start`: that one reaches the notify socket by
//! `chdir`-ing next to it, which moves the whole process (and races between
//! threads).

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;

/// Entry point of the helper; `args` are the arguments after the helper's
/// own name (or subcommand). Returns the process exit status.
pub fn main(args: &[OsString]) -> i32 {
    match run(args) {
        Ok(pid) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{{\"pid\": {pid}}}");
            0
        }
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            1
        }
    }
}

fn run(args: &[OsString]) -> Result<i32, String> {
    let [verb, root, id, bundle] = args else {
        return Err("usage: create STATE_ROOT ID BUNDLE".into());
    };
    if verb != "create" {
        return Err(format!("unknown helper command {verb:?}"));
    }
    let id = id.to_str().ok_or("the sandbox id is not UTF-8")?.to_owned();
    let socket = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| format!("standard input is not the control socket: {e}"))?;
    let socket_out = socket
        .try_clone()
        .map_err(|e| format!("dup control socket: {e}"))?;
    let null = OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .map_err(|e| format!("open /dev/null: {e}"))?;
    let container = ContainerBuilder::new(id, SyscallType::default())
        .validate_id()
        .and_then(|b| b.with_root_path(PathBuf::from(root)))
        .map_err(|e| format!("container id or state root: {e}"))?
        .with_stdin(socket)
        .with_stdout(socket_out)
        .with_stderr(null)
        .as_init(PathBuf::from(bundle))
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("create container: {e}"))?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| "created container has no pid".into())
}

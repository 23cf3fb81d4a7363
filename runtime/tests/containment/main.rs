//! The containment suite: attacks run from inside real sandboxes, each of
//! which must fail while the worker keeps serving other sandboxes.
//!
//! Needs root (namespaces, cgroups) and `/bin/busybox` from Debian's
//! `busybox-static`, as `infra/install-deps` installs. Each test starts its
//! own worker on its own state directory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use carapace_runtime::egress::Policy;
use carapace_runtime::{Exec, ExecResult, Limits, Runtime, RuntimeConfig, SandboxSpec};

struct Worker {
    runtime: std::sync::Arc<Runtime>,
    _dir: tempfile::TempDir,
}

async fn worker_with(helper: PathBuf, helper_args: Vec<std::ffi::OsString>) -> Worker {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let runtime = Runtime::start(RuntimeConfig {
        state_dir: dir.path().join("state"),
        image_dir: dir.path().join("images"),
        helper,
        helper_args,
        busybox: "/bin/busybox".into(),
        // Some sandboxes start from the pool, some from scratch: both
        // paths face every attack.
        pool_size: 1,
    })
    .await
    .unwrap_or_else(|e| panic!("worker start: {e}"));
    Worker { runtime, _dir: dir }
}

fn helper() -> PathBuf {
    env!("CARGO_BIN_EXE_carapace-sandbox-helper").into()
}

async fn worker() -> Worker {
    worker_with(helper(), vec![]).await
}

async fn sandbox(worker: &Worker, id: &str, spec: SandboxSpec) {
    worker
        .runtime
        .create(id, spec)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e}"));
}

async fn sh(worker: &Worker, id: &str, script: &str) -> ExecResult {
    sh_with(worker, id, script, Duration::from_secs(20)).await
}

async fn sh_with(worker: &Worker, id: &str, script: &str, timeout: Duration) -> ExecResult {
    let exec = Exec {
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![],
        stdin: vec![],
        timeout,
    };
    worker
        .runtime
        .exec(id, exec)
        .await
        .unwrap_or_else(|e| panic!("exec in {id}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The bystander check: the worker still runs commands in another sandbox.
async fn still_serving(worker: &Worker, id: &str) {
    let r = sh(worker, id, "echo alive").await;
    assert_eq!(
        (r.exit_code, text(&r.stdout)),
        (Some(0), "alive\n".into()),
        "{id} must still answer"
    );
}

/// The syscall probe, compiled once per test run into a static binary.
fn probe() -> &'static [u8] {
    static PROBE: OnceLock<Vec<u8>> = OnceLock::new();
    PROBE.get_or_init(|| {
        let out = std::env::temp_dir().join(format!("carapace-probe-{}", std::process::id()));
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/containment/probe.rs");
        let status =
            std::process::Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
                .args([
                    "--edition",
                    "2024",
                    "-C",
                    "opt-level=1",
                    "-C",
                    "target-feature=+crt-static",
                    "-o",
                ])
                .arg(&out)
                .arg(&source)
                .status()
                .unwrap_or_else(|e| panic!("rustc: {e}"));
        assert!(status.success(), "the probe must compile");
        let bytes = std::fs::read(&out).unwrap_or_else(|e| panic!("probe: {e}"));
        let _ = std::fs::remove_file(&out);
        bytes
    })
}

async fn install_probe(worker: &Worker, id: &str) {
    worker
        .runtime
        .write_file(id, "probe", probe().to_vec())
        .await
        .unwrap_or_else(|e| panic!("upload: {e}"));
    let r = sh(worker, id, "chmod +x /workspace/probe").await;
    assert_eq!(r.exit_code, Some(0), "{}", text(&r.stderr));
}

/// A host HTTP server on 127.0.0.1 answering `host-secret` to anyone.
fn host_http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\nhost-secret");
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filesystem_is_read_only_outside_the_workspace_and_hides_the_host() {
    let w = worker().await;
    sandbox(&w, "fs", SandboxSpec::default()).await;
    let marker = tempfile::NamedTempFile::new().unwrap_or_else(|e| panic!("{e}"));
    let marker_name = marker
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();

    for target in [
        "/bin/evil",
        "/etc/passwd",
        "/evil",
        "/sbin/carapace-agent",
        "/usr/evil",
        "/proc/evil",
    ] {
        let r = sh(&w, "fs", &format!("echo x > {target}")).await;
        assert_ne!(r.exit_code, Some(0), "writing {target} must fail");
    }
    let r = sh(
        &w,
        "fs",
        "echo kept > /workspace/ok && cat /workspace/ok && echo t > /tmp/t",
    )
    .await;
    assert_eq!(
        (r.exit_code, text(&r.stdout)),
        (Some(0), "kept\n".into()),
        "the workspace is writable"
    );

    let r = sh(&w, "fs", &format!("find / -name '{marker_name}' 2>/dev/null; ls /root /home /etc/shadow 2>&1; cat /proc/1/root/etc/hostname 2>&1")).await;
    let out = text(&r.stdout);
    assert!(
        !out.contains(&marker_name),
        "a host file must not be visible: {out}"
    );
    assert!(
        out.contains("No such file"),
        "host directories must not exist: {out}"
    );
    // Setuid bits cannot help: no_new_privileges, and nosuid mounts.
    let r = sh(
        &w,
        "fs",
        "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status",
    )
    .await;
    assert_eq!(text(&r.stdout), "NoNewPrivs:\t1\nSeccomp:\t2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_of_the_host_and_of_other_sandboxes_are_invisible() {
    let w = worker().await;
    sandbox(&w, "a", SandboxSpec::default()).await;
    sandbox(&w, "b", SandboxSpec::default()).await;
    let r = sh(&w, "b", "sleep 300 >/dev/null 2>&1 & echo started").await;
    assert_eq!(r.exit_code, Some(0));
    let r = sh(&w, "a", "ps -o pid,args").await;
    let out = text(&r.stdout);
    assert!(
        !out.contains("sleep 300"),
        "another sandbox's process must be invisible: {out}"
    );
    assert!(out.contains("carapace-agent"), "own init is visible: {out}");
    let pids: Vec<u32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    let r = sh(&w, "a", "ls /proc | grep -c '^[0-9]'").await;
    let visible: usize = text(&r.stdout).trim().parse().unwrap_or(usize::MAX);
    assert!(
        visible < 10 && visible < pids.len(),
        "only the sandbox's own processes: {visible} of the host's {}",
        pids.len()
    );
    // Container root is a different unprivileged host id in each sandbox.
    let map_a = text(&sh(&w, "a", "cat /proc/self/uid_map").await.stdout);
    let map_b = text(&sh(&w, "b", "cat /proc/self/uid_map").await.stdout);
    let host_id = |map: &str| {
        map.split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(
        host_id(&map_a) >= 1 << 28 && host_id(&map_b) >= 1 << 28,
        "{map_a} {map_b}"
    );
    assert_ne!(
        host_id(&map_a),
        host_id(&map_b),
        "each sandbox has its own id range"
    );
    let r = sh(
        &w,
        "a",
        &format!("kill -9 {} 2>&1; echo rc=$?", std::process::id()),
    )
    .await;
    assert!(
        text(&r.stdout).contains("rc=1"),
        "the worker's pid is not a process in there: {}",
        text(&r.stdout)
    );
    still_serving(&w, "b").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_is_loopback_only_and_the_proxy_refuses_what_is_not_allowed() {
    let w = worker().await;
    let host = host_http_server();
    let spec = SandboxSpec {
        image: None,
        limits: Limits::default(),
        egress: Policy {
            // `localhost` is allow-listed on purpose: it resolves to
            // loopback, so the proxy must still refuse it (DNS rebinding).
            allow_hosts: vec!["localhost".into(), "metadata.google.internal".into()],
            services: vec![("carapace.internal".into(), 80, host)],
        },
    };
    sandbox(&w, "net", spec).await;
    sandbox(&w, "other", SandboxSpec::default()).await;

    let r = sh(&w, "net", "ip -o addr | awk '{print $2}' | sort -u").await;
    assert_eq!(
        text(&r.stdout),
        "lo\n",
        "only loopback: {}",
        text(&r.stderr)
    );
    // Direct connections: nothing but the sandbox's own loopback exists.
    for target in [
        format!("127.0.0.1 {}", host.port()),
        "10.0.0.1 80".into(),
        "169.254.169.254 80".into(),
        "8.8.8.8 53".into(),
    ] {
        let r = sh(
            &w,
            "net",
            &format!("echo | nc -w 2 {target} 2>&1; echo rc=$?"),
        )
        .await;
        let out = text(&r.stdout);
        assert!(
            !out.contains("host-secret") && !out.contains("rc=0"),
            "{target} must be unreachable: {out}"
        );
    }
    // Through the proxy (spoken with nc: busybox's static wget cannot
    // resolve names without NSS modules, and must not need to).
    let via_proxy =
        |request: String| format!("printf '{request}\\r\\n\\r\\n' | nc -w 5 127.0.0.1 3128");
    let refused = [
        format!("GET http://127.0.0.1:{}/ HTTP/1.1", host.port()),
        "GET http://169.254.169.254/latest/meta-data/ HTTP/1.1".into(),
        "GET http://[fd00::1]/ HTTP/1.1".into(),
        "GET http://10.0.0.1/ HTTP/1.1".into(),
        "GET http://example.com/ HTTP/1.1".into(),
        format!("GET http://localhost:{}/ HTTP/1.1", host.port()),
        "GET http://metadata.google.internal/ HTTP/1.1".into(),
        format!("GET http://carapace.internal:{}/ HTTP/1.1", host.port()),
        format!("CONNECT 127.0.0.1:{} HTTP/1.1", host.port()),
        "CONNECT localhost:22 HTTP/1.1".into(),
        "CONNECT 169.254.169.254:443 HTTP/1.1".into(),
    ];
    for request in &refused {
        let r = sh(&w, "net", &via_proxy(request.clone())).await;
        let out = text(&r.stdout);
        assert!(
            out.starts_with("HTTP/1.1 403 Forbidden"),
            "{request} must be refused: {out}"
        );
        assert!(!out.contains("host-secret"), "{out}");
    }
    // The one service endpoint the worker named is reachable.
    let r = sh(
        &w,
        "net",
        &via_proxy("GET http://carapace.internal/ HTTP/1.1\\r\\nHost: carapace.internal".into()),
    )
    .await;
    assert!(
        text(&r.stdout).ends_with("host-secret"),
        "the service endpoint: {}",
        text(&r.stdout)
    );
    let counts = w
        .runtime
        .egress_counts("net")
        .unwrap_or_else(|| panic!("counts"));
    assert_eq!(counts.allowed, 1);
    assert!(counts.refused >= refused.len() as u64, "{counts:?}");
    still_serving(&w, "other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_system_calls_fail() {
    let w = worker().await;
    sandbox(&w, "sys", SandboxSpec::default()).await;
    install_probe(&w, "sys").await;
    let calls = [
        "ptrace_attach",
        "ptrace_traceme",
        "process_vm_readv",
        "keyctl",
        "add_key",
        "bpf",
        "perf_event_open",
        "init_module",
        "finit_module",
        "raw_socket",
        "packet_socket",
        "settimeofday",
        "clock_settime",
        "sethostname",
        "mount",
        "umount",
        "unshare_user",
        "unshare_net",
        "setns",
        "clone_newuser",
        "pivot_root",
        "chroot",
        "mknod_block",
        "io_uring_setup",
        "userfaultfd",
        "kexec_load",
        "reboot",
        "open_by_handle_at",
        "swapon",
    ];
    let r = sh(&w, "sys", &format!("/workspace/probe {}", calls.join(" "))).await;
    let out = text(&r.stdout);
    for call in calls {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{call}=")))
            .unwrap_or_default();
        assert!(
            line.starts_with(&format!("{call}=errno:")),
            "{call} must fail, got {line:?} in\n{out}\n{}",
            text(&r.stderr)
        );
    }
    // The agent (PID 1, the same user as every command) cannot be read or
    // rewritten through /proc: commands must not be able to forge what the
    // worker hears from it.
    for attack in [
        "cat /proc/1/environ",
        "head -c 1 /proc/1/mem",
        "echo x | dd of=/proc/1/mem bs=1 seek=4194304 conv=notrunc",
        "readlink /proc/1/fd/0",
    ] {
        let r = sh(&w, "sys", &format!("{attack} 2>&1")).await;
        assert_ne!(
            r.exit_code,
            Some(0),
            "{attack} must fail: {}",
            text(&r.stdout)
        );
    }
    // The same through ordinary tools, and the host is unchanged.
    let host_name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host_time = std::time::SystemTime::now();
    for attack in [
        "mount -t tmpfs none /tmp",
        "unshare -n true",
        "unshare -r true",
        "hostname evil",
        "date -s '2001-01-01 00:00'",
        "echo 1 > /proc/sys/kernel/panic",
        "echo 1 > /proc/sysrq-trigger",
        "echo x > /sys/kernel/uevent_helper",
        "ping -c 1 -W 1 127.0.0.1",
        // Masked: reads as empty.
        "[ -n \"$(cat /proc/kcore /proc/keys /proc/timer_list 2>/dev/null | head -c 16)\" ]",
        "mknod /tmp/sda b 8 0",
    ] {
        let r = sh(&w, "sys", &format!("{attack} 2>&1")).await;
        // busybox `date -s` reports the refusal but exits 0.
        let refused = r.exit_code != Some(0) || text(&r.stdout).contains("Operation not permitted");
        assert!(refused, "{attack} must fail: {}", text(&r.stdout));
    }
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default(),
        host_name
    );
    assert!(
        host_time
            .elapsed()
            .is_ok_and(|e| e < Duration::from_secs(600)),
        "host clock unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_and_memory_bombs_and_a_full_disk_stay_inside() {
    let w = worker().await;
    let small = Limits {
        memory_mib: 64,
        pids: 64,
        workspace_mib: 8,
        tmp_mib: 4,
        ..Limits::default()
    };
    sandbox(
        &w,
        "bomb",
        SandboxSpec {
            image: None,
            limits: small,
            egress: Policy::default(),
        },
    )
    .await;
    sandbox(&w, "bystander", SandboxSpec::default()).await;

    let started = Instant::now();
    let r = sh_with(&w, "bomb", "b() { b | b & }; b", Duration::from_secs(3)).await;
    // It ends at its deadline, or sooner when the agent finds no room to
    // watch it (and stops it): either way it is reported.
    assert!(
        r.timed_out
            || r.exit_code.is_some()
            || r.error.as_deref().is_some_and(|e| e.contains("pids")),
        "the bomb returns: {r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the bomb is stopped at its deadline"
    );
    still_serving(&w, "bystander").await;
    let host_fork = std::process::Command::new("true").status();
    assert!(
        host_fork.is_ok_and(|s| s.success()),
        "the host can still fork"
    );
    // The sandbox itself survives its bomb: once the bomb's processes are
    // gone (killed, then reaped by the agent) it runs commands again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = sh(&w, "bomb", "echo recovered").await;
        if r.exit_code == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sandbox survives its bomb: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    w.runtime
        .delete("bomb")
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));

    sandbox(
        &w,
        "mem",
        SandboxSpec {
            image: None,
            limits: small,
            egress: Policy::default(),
        },
    )
    .await;
    install_probe(&w, "mem").await;
    let r = sh(&w, "mem", "/workspace/probe membomb").await;
    assert_eq!(
        r.exit_code,
        Some(137),
        "killed by the OOM killer: {}",
        text(&r.stdout)
    );
    assert!(r.oom_killed, "the OOM kill is reported");
    let allocated = text(&r.stdout).lines().count() * 16;
    assert!(
        allocated <= 64,
        "no more than the limit was ever allocated ({allocated} MiB)"
    );
    still_serving(&w, "bystander").await;

    let r = sh(&w, "mem", "dd if=/dev/zero of=/workspace/fill bs=1M count=100 2>&1; echo rc=$?; dd if=/dev/zero of=/tmp/fill bs=1M count=100 2>&1").await;
    let out = text(&r.stdout);
    assert!(
        out.contains("No space left on device"),
        "the workspace is bounded: {out}"
    );
    assert!(!out.contains("rc=0"), "{out}");
    let r = sh(
        &w,
        "mem",
        "rm /workspace/fill /tmp/fill; echo again > /workspace/x && cat /workspace/x",
    )
    .await;
    assert_eq!(
        text(&r.stdout),
        "again\n",
        "the sandbox recovers once it frees space"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_at_its_deadline_and_at_deletion() {
    let w = worker().await;
    sandbox(&w, "stubborn", SandboxSpec::default()).await;
    let started = Instant::now();
    let r = sh_with(
        &w,
        "stubborn",
        "trap '' TERM INT HUP; sleep 1000",
        Duration::from_secs(1),
    )
    .await;
    assert!(r.timed_out, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "killed at its deadline, not when it chose"
    );
    let r = sh(
        &w,
        "stubborn",
        "(trap '' TERM; exec sleep 1000) >/dev/null 2>&1 & echo ok",
    )
    .await;
    assert_eq!(r.exit_code, Some(0));
    let pid = w.runtime.pid("stubborn").unwrap_or_else(|| panic!("pid"));
    let started = Instant::now();
    w.runtime
        .delete("stubborn")
        .await
        .unwrap_or_else(|e| panic!("delete: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "deletion does not wait for cooperation"
    );
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(
        status.is_empty() || status.contains("State:\tZ"),
        "the sandbox's init is gone: {status}"
    );
    assert!(!w.runtime.is_alive("stubborn"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_of_the_worker_reaches_the_sandbox() {
    // The helper runs with a secret in its environment, as a worker with a
    // master key or node credential in its environment would.
    let secret = "carapace-secret-7f3a9c1e";
    let w = worker_with(
        "/usr/bin/env".into(),
        vec![
            format!("CARAPACE_MASTER_KEY={secret}").into(),
            helper().into(),
        ],
    )
    .await;
    sandbox(&w, "env", SandboxSpec::default()).await;
    let r = sh(&w, "env", "env; cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'; cat /proc/1/cmdline; grep -rs carapace-secret / --exclude-dir=proc --exclude-dir=sys 2>/dev/null").await;
    let out = text(&r.stdout);
    assert!(!out.contains(secret), "the secret leaked: {out}");
    assert!(out.contains("HOME=/workspace"), "env was read: {out}");
    // The worker's state (container state, other bundles) is not reachable:
    // mountinfo names the image's host path, but nothing beside it opens.
    let state = w._dir.path().join("state");
    let r = sh(
        &w,
        "env",
        &format!(
            "ls {0} {0}/containers 2>&1; cat {0}/bundles/env/config.json 2>&1",
            state.display()
        ),
    )
    .await;
    let out = text(&r.stdout);
    assert!(
        out.contains("No such file") && !out.contains("ociVersion"),
        "the worker's state is not visible: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_worker_removes_what_a_crashed_one_left() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = RuntimeConfig {
        state_dir: dir.path().join("state"),
        image_dir: dir.path().join("images"),
        helper: helper(),
        helper_args: vec![],
        busybox: "/bin/busybox".into(),
        pool_size: 0,
    };
    let first = Runtime::start(config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    first
        .create("left", SandboxSpec::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let pid = first.pid("left").unwrap_or_else(|| panic!("pid"));
    // A crash: the worker vanishes without deleting anything, and its
    // control socket stays open (as if it hung).
    std::mem::forget(first);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let cgroups: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("carapace"))
        .flat_map(|p| {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("left"))
        })
        .filter(|p| p.exists())
        .collect();
    assert!(!cgroups.is_empty(), "the sandbox has cgroups");

    let second = Runtime::start(config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let dead = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status.is_empty() || status.contains("State:\tZ")
    };
    while !dead() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dead(), "the leftover sandbox was killed");
    for cgroup in cgroups {
        assert!(!cgroup.exists(), "{} was removed", cgroup.display());
    }
    assert_eq!(
        std::fs::read_dir(dir.path().join("state/containers"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    assert_eq!(second.count(), 0);
    second
        .create("left", SandboxSpec::default())
        .await
        .unwrap_or_else(|e| panic!("the name is free again: {e}"));
    second
        .delete("left")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_from_the_pool_is_hardened_like_any_other_and_gets_its_own_policy() {
    let w = worker().await;
    let wait_for_pool = || async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.runtime.pooled() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(w.runtime.pooled(), 1, "the pool fills");
    };
    wait_for_pool().await;
    let host = host_http_server();
    let spec = SandboxSpec {
        image: None,
        limits: Limits::default(),
        egress: Policy {
            allow_hosts: vec![],
            services: vec![("carapace.internal".into(), 80, host)],
        },
    };
    // Counted, not read off the pool's size: the refill may already have
    // replaced the container by the time the sandbox is up.
    let hits = w.runtime.pool_hits();
    sandbox(&w, "pooled", spec).await;
    assert_eq!(
        w.runtime.pool_hits(),
        hits + 1,
        "the sandbox came from the pool"
    );
    let r = sh(&w, "pooled", "grep -E '^(NoNewPrivs|Seccomp|CapEff|CapBnd):' /proc/self/status; cat /proc/self/uid_map; ls /proc | grep -c '^[0-9]'").await;
    let out = text(&r.stdout);
    assert!(
        out.contains("NoNewPrivs:\t1") && out.contains("Seccomp:\t2"),
        "{out}"
    );
    assert!(
        out.contains("CapEff:\t0000000000000000") && out.contains("CapBnd:\t0000000000000000"),
        "{out}"
    );
    // Its proxy serves the policy it was given when it started.
    let r = sh(&w, "pooled", "printf 'GET http://carapace.internal/ HTTP/1.1\\r\\n\\r\\n' | nc -w 5 127.0.0.1 3128; printf 'GET http://example.com/ HTTP/1.1\\r\\n\\r\\n' | nc -w 5 127.0.0.1 3128").await;
    let out = text(&r.stdout);
    assert!(
        out.contains("host-secret") && out.contains("403 Forbidden"),
        "{out}"
    );
    // A limit other than the default is never served from the pool.
    wait_for_pool().await;
    let custom = SandboxSpec {
        image: None,
        limits: Limits {
            memory_mib: 128,
            ..Limits::default()
        },
        egress: Policy::default(),
    };
    sandbox(&w, "custom", custom).await;
    assert_eq!(
        w.runtime.pooled(),
        1,
        "the pooled container is still waiting"
    );
    let r = sh(&w, "custom", "echo ok").await;
    assert_eq!(text(&r.stdout), "ok\n");
    w.runtime.shutdown().await;
    assert_eq!((w.runtime.count(), w.runtime.pooled()), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_as_it_comes() {
    use carapace_runtime::sandbox::StreamEvent;
    let w = worker().await;
    sandbox(&w, "stream", SandboxSpec::default()).await;
    let exec = Exec {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "for i in 1 2 3; do echo $i; sleep 0.3; done; echo oops >&2; exit 4".into(),
        ],
        env: vec![],
        stdin: vec![],
        timeout: Duration::from_secs(10),
    };
    let started = Instant::now();
    let mut events = w
        .runtime
        .exec_stream("stream", exec)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (mut stdout, mut stderr, mut first_at, mut done) = (Vec::new(), Vec::new(), None, None);
    while let Some(event) = events.recv().await {
        match event {
            StreamEvent::Stdout(data) => {
                first_at.get_or_insert(started.elapsed());
                stdout.extend(data);
            }
            StreamEvent::Stderr(data) => stderr.extend(data),
            StreamEvent::Done(result) => done = Some((result, started.elapsed())),
            StreamEvent::Failed(e) => panic!("{e}"),
        }
    }
    let (result, total) = done.unwrap_or_else(|| panic!("the stream ends with Done"));
    assert_eq!(text(&stdout), "1\n2\n3\n");
    assert_eq!(text(&stderr), "oops\n");
    assert_eq!(result.exit_code, Some(4));
    assert!(result.stdout.is_empty(), "streamed output is not repeated");
    let first_at = first_at.unwrap_or_default();
    assert!(
        first_at + Duration::from_millis(500) < total,
        "the first line came before the end: {first_at:?} of {total:?}"
    );
    still_serving(&w, "stream").await;
}

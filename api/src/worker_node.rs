//! `carapace worker`: a worker node. On first start it spends its one-time
//! join token on a node credential (kept in its data directory, mode
//! 0600); from then on it connects to the control plane with that
//! credential, reconnecting whenever the connection breaks, and runs what
//! is placed on it in sandboxes on this host.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use carapace_runtime::worker::{Worker, WorkerConfig};
use carapace_runtime::{Runtime, RuntimeConfig};
use carapace_scheduler::protocol::Resources;

/// The credential file in the worker's data directory.
const CREDENTIAL_FILE: &str = "worker.credential";

/// `carapace worker`'s arguments.
#[derive(Clone, clap::Args)]
pub struct WorkerArgs {
    /// The control plane's base URL (`http(s)://host:port`).
    #[arg(long, env = "CARAPACE_CONTROL_PLANE", value_name = "URL")]
    pub control_plane: String,
    /// A one-time join token from `carapace worker-token create`; needed
    /// only until the worker has its credential. Never logged. Prefer the
    /// environment variable: a command line is visible to every user of
    /// the host.
    #[arg(
        long,
        env = "CARAPACE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,
    /// The worker's name in the fleet. [default: `<hostname>-<tag>`]
    #[arg(long, env = "CARAPACE_WORKER_NAME", value_name = "NAME")]
    pub name: Option<String>,
    /// The worker's own directory: its credential and sandbox state.
    #[arg(
        long,
        env = "CARAPACE_WORKER_DIR",
        value_name = "DIR",
        default_value = "carapace-worker"
    )]
    pub data_dir: PathBuf,
    /// CPU it offers to runs, thousandths of a core (runs reserve their
    /// `cpu_millis` limit). [default: 4 × what this host and its cgroup
    /// have: limits are ceilings, and idle sandboxes use none]
    #[arg(long, value_name = "MILLIS")]
    pub cpu_millis: Option<u64>,
    /// Memory it offers to runs, MiB. [default: what this host and its
    /// cgroup have]
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u64>,
    /// Runs it takes at once.
    #[arg(
        long,
        env = "CARAPACE_WORKER_SLOTS",
        value_name = "N",
        default_value_t = 8
    )]
    pub slots: u64,
    /// The image cache, shared by the workers of a host (every directory
    /// on its path must be `o+x`).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/carapace/images")]
    pub image_dir: PathBuf,
    /// A static busybox for the built-in image.
    #[arg(long, value_name = "PATH", default_value = "/bin/busybox")]
    pub busybox: PathBuf,
    /// Containers kept created ahead for fast starts.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub pool_size: usize,
    /// Log filter in `tracing` syntax.
    #[arg(
        long,
        env = "CARAPACE_LOG",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log: String,
}

/// Prints nothing of the join token.
impl std::fmt::Debug for WorkerArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerArgs")
            .field("control_plane", &self.control_plane)
            .field("name", &self.name)
            .field("data_dir", &self.data_dir)
            .field("slots", &self.slots)
            .finish_non_exhaustive()
    }
}

/// Runs the worker node until SIGTERM or SIGINT; its sandboxes go with it.
pub async fn run(args: WorkerArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&args.slots) {
        anyhow::bail!("--slots must be between 1 and 1000");
    }
    if args.pool_size > 64 {
        anyhow::bail!("--pool-size must be at most 64");
    }
    carapace_runtime::worker::link::endpoint(&args.control_plane)?;
    warn_if_cleartext(&args.control_plane);
    create_private_dir(&args.data_dir)?;
    let runtime = Runtime::start(RuntimeConfig {
        state_dir: args.data_dir.join("sandboxes"),
        image_dir: args.image_dir.clone(),
        helper: std::env::current_exe()?,
        helper_args: vec!["sandbox-helper".into()],
        busybox: args.busybox.clone(),
        pool_size: args.pool_size,
    })
    .await
    .context("this host cannot run sandboxes")?;
    let name = match &args.name {
        Some(name) => name.clone(),
        None => format!("{}-{}", hostname(), runtime.tag()),
    };
    let credential = credential(&args, &name).await?;
    let host = carapace_runtime::worker::default_capacity(args.slots);
    let capacity = Resources {
        cpu_millis: args.cpu_millis.unwrap_or(host.cpu_millis),
        memory_mib: args.memory_mib.unwrap_or(host.memory_mib),
        slots: args.slots,
    };
    let config = WorkerConfig::new(
        capacity,
        Default::default(),
        control_plane_addr(&args.control_plane).await?,
        &args.control_plane,
    );
    tracing::info!(name, slots = args.slots, "worker starting");
    let worker = Worker::new(runtime.clone(), config);
    let serving = tokio::spawn(worker.serve_remote(args.control_plane.clone(), credential));
    let signal = shutdown_signal().await?;
    tracing::info!(signal, "worker stopping: deleting its sandboxes");
    serving.abort();
    runtime.shutdown().await;
    Ok(())
}

/// The stored credential, or a new one bought with the join token.
async fn credential(args: &WorkerArgs, name: &str) -> anyhow::Result<String> {
    let path = args.data_dir.join(CREDENTIAL_FILE);
    if let Ok(stored) = std::fs::read_to_string(&path) {
        let stored = stored.trim().to_owned();
        if !stored.is_empty() {
            return Ok(stored);
        }
    }
    let Some(token) = &args.join_token else {
        anyhow::bail!(
            "this worker has no credential yet ({} is missing): give it a join token from \
             `carapace worker-token create` with --join-token",
            path.display()
        );
    };
    let url = format!(
        "{}/worker/v1/join",
        args.control_plane.trim_end_matches('/')
    );
    let response = reqwest::Client::new()
        .post(&url)
        .json(&serde_json::json!({ "token": token, "name": name }))
        .send()
        .await
        .context("cannot reach the control plane to join")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("no detail");
        anyhow::bail!("the control plane refused to let this worker join ({status}): {detail}");
    }
    let credential = body["credential"]
        .as_str()
        .context("the control plane's join answer has no credential")?
        .to_owned();
    write_private(&path, &credential)?;
    tracing::info!(worker = %body["id"].as_str().unwrap_or(""), name, "joined the control plane");
    Ok(credential)
}

/// The join token and the credential cross the connection: say so when it
/// is not encrypted and leaves the host.
fn warn_if_cleartext(base: &str) {
    let Ok(url) = url::Url::parse(base) else {
        return;
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if matches!(url.scheme(), "http" | "ws") && !loopback {
        tracing::warn!(
            "the control plane URL is not https: the join token and the worker credential cross the network in clear text"
        );
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(content.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
                .take(60)
                .collect()
        })
        .ok()
        .filter(|h: &String| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// Where sandboxes reach the control plane (`carapace.internal`): its host
/// and port, resolved once.
async fn control_plane_addr(base: &str) -> anyhow::Result<SocketAddr> {
    let url = url::Url::parse(base).context("the control plane URL is not a URL")?;
    let host = url
        .host_str()
        .context("the control plane URL has no host")?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

//! Settings: defaults, then a TOML file (`--config`), then `CARAPACE_*`
//! environment variables and command-line flags over it.
//!
//! [`SettingsArgs`] is a single struct that is at the same time the TOML
//! schema (every field optional, unknown keys refused) and the command-line
//! and environment interface (clap), so that `carapace serve --help`
//! documents every setting and the two can never drift apart.
//! [`SettingsArgs::resolve`] fills in defaults and validates, producing
//! [`Settings`], which the rest of the program uses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::secret::Secret;

/// Every setting, each optional: the shape of the TOML file and of the
/// command-line flags and `CARAPACE_*` variables.
#[derive(Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SettingsArgs {
    /// Address and port to listen on.
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "CARAPACE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Directory for the embedded defaults: SQLite database, local object
    /// store and the generated master key.
    /// [default: ./carapace-data]
    #[arg(long, env = "CARAPACE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Database URL: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    /// Never logged. [default: sqlite://<data-dir>/carapace.db]
    #[arg(
        long,
        env = "CARAPACE_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,

    /// Maximum number of pooled database connections. [default: 16]
    #[arg(long, env = "CARAPACE_DATABASE_MAX_CONNECTIONS", value_name = "N")]
    pub database_max_connections: Option<u32>,

    /// Object store URL: `file:///ABSOLUTE/PATH`, `memory://`, or
    /// `s3://BUCKET` (configured by the standard `AWS_*` variables).
    /// [default: file://<data-dir>/objects]
    #[arg(long, env = "CARAPACE_OBJECT_STORE_URL", value_name = "URL")]
    pub object_store_url: Option<String>,

    /// File holding the 256-bit master key (hex). Created with mode 0600 if
    /// missing, never overwritten. [default: <data-dir>/master.key]
    #[arg(long, env = "CARAPACE_MASTER_KEY_FILE", value_name = "PATH")]
    pub master_key_file: Option<PathBuf>,

    /// Log filter in `tracing` syntax, e.g. `info` or `carapace_api=debug`.
    /// [default: info]
    #[arg(long, env = "CARAPACE_LOG", value_name = "FILTER")]
    pub log: Option<String>,

    /// Log format: `auto` (JSON unless standard output is a terminal),
    /// `json` or `text`. [default: auto]
    #[arg(long, env = "CARAPACE_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Largest accepted JSON request body, in bytes; larger ones get 413.
    /// [default: 65536]
    #[arg(long, env = "CARAPACE_MAX_JSON_BYTES", value_name = "BYTES")]
    pub max_json_bytes: Option<usize>,

    /// Seconds that in-flight requests get to finish after SIGTERM or SIGINT.
    /// [default: 30]
    #[arg(long, env = "CARAPACE_SHUTDOWN_TIMEOUT_SECS", value_name = "SECS")]
    pub shutdown_timeout_secs: Option<u64>,

    /// HTTP worker threads. [default: number of CPUs]
    #[arg(long, env = "CARAPACE_HTTP_WORKERS", value_name = "N")]
    pub http_workers: Option<usize>,

    /// How long a verified API key may be served from memory before the
    /// database is asked again, in milliseconds. Bounds how long a
    /// revocation made on another replica takes to apply; at most 1000.
    /// [default: 1000]
    #[arg(long, env = "CARAPACE_AUTH_CACHE_TTL_MS", value_name = "MS")]
    pub auth_cache_ttl_ms: Option<u64>,

    /// If set, `/metrics` requires `Authorization: Bearer <token>`.
    /// Never logged. [default: unset, /metrics is open]
    #[arg(
        long,
        env = "CARAPACE_METRICS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,

    /// The operator's token: `/v1/admin/...` (workers, draining) answer
    /// only `Authorization: Bearer <token>`. Never logged. [default: unset,
    /// the operator endpoints are off]
    #[arg(
        long,
        env = "CARAPACE_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,

    /// The OpenID Connect provider's issuer URL: browsers log in at
    /// `/auth/login`. [default: unset, login off]
    #[arg(long, env = "CARAPACE_OIDC_ISSUER", value_name = "URL")]
    pub oidc_issuer: Option<String>,

    /// This server's client id at the OpenID Connect provider.
    #[arg(long, env = "CARAPACE_OIDC_CLIENT_ID", value_name = "ID")]
    pub oidc_client_id: Option<String>,

    /// This server's client secret at the provider. Never logged.
    #[arg(
        long,
        env = "CARAPACE_OIDC_CLIENT_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub oidc_client_secret: Option<String>,

    /// This server's external base URL, `http(s)://HOST[:PORT]`; the
    /// provider sends browsers back to `{public_url}/auth/callback`.
    #[arg(long, env = "CARAPACE_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,

    /// Who may sign up by logging in: `open` (a first login creates a
    /// tenant) or `closed` (members only). [default: open]
    #[arg(long, env = "CARAPACE_SIGNUP", value_name = "MODE")]
    pub signup: Option<crate::login::SignupMode>,

    /// Hours a login session lasts. [default: 12; 1 to 720]
    #[arg(long, env = "CARAPACE_SESSION_MAX_AGE_HOURS", value_name = "HOURS")]
    pub session_max_age_hours: Option<u64>,

    /// Minutes a login stays recent enough for sensitive actions through
    /// its session (API keys, providers, the access policy, gateway
    /// settings); older, the person must log in again. [default: 15; 0 to
    /// 1440]
    #[arg(long, env = "CARAPACE_REAUTH_MINUTES", value_name = "MINUTES")]
    pub reauth_minutes: Option<u64>,

    /// With open sign-up: only addresses of these domains may sign up
    /// (comma-separated, e.g. `example.com,example.org`). [default: any]
    #[arg(long, env = "CARAPACE_SIGNUP_DOMAINS", value_name = "DOMAINS")]
    pub signup_domains: Option<String>,

    /// The claim holding a person's groups, for access policies that
    /// require some (read from the ID token, else from userinfo; asked for
    /// as a scope of that name when the provider offers one).
    /// [default: groups]
    #[arg(long, env = "CARAPACE_OIDC_GROUPS_CLAIM", value_name = "CLAIM")]
    pub oidc_groups_claim: Option<String>,

    /// Reverse proxies in front of this server (addresses or ranges,
    /// comma-separated, e.g. `10.0.0.0/8,192.0.2.7`): a request whose
    /// peer is one of them is taken to come from the address they put in
    /// `X-Forwarded-For` (read from the right). [default: none, the
    /// header is ignored]
    #[arg(long, env = "CARAPACE_TRUSTED_PROXIES", value_name = "RANGES")]
    pub trusted_proxies: Option<String>,

    /// The SMTP server invitations are sent through:
    /// `smtps://[USER:PASSWORD@]HOST[:PORT]` (TLS), `smtp://…?tls=required`
    /// (STARTTLS) or `smtp://HOST:PORT` (plain, a relay on this host).
    /// Never logged. [default: unset, invitations are not emailed]
    #[arg(
        long,
        env = "CARAPACE_SMTP_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub smtp_url: Option<String>,

    /// The sender of invitation emails, e.g. `Carapace
    /// <no-reply@example.com>`; needed with `smtp_url`.
    #[arg(long, env = "CARAPACE_MAIL_FROM", value_name = "ADDRESS")]
    pub mail_from: Option<String>,

    /// More OpenID Connect providers, beside (or instead of) the
    /// `oidc_issuer` one: the settings file's `[[oidc_providers]]` tables
    /// only (`name`, `issuer`, `client_id`, `client_secret`, optional
    /// `label` and `groups_claim`; see `login::ProviderArgs`).
    #[arg(skip)]
    #[serde(default)]
    pub oidc_providers: Option<Vec<crate::login::ProviderArgs>>,

    /// Whether `carapace serve` runs a worker in-process (placed runs then
    /// execute on this host when it can run sandboxes). [default: true]
    #[arg(long, env = "CARAPACE_LOCAL_WORKER", value_name = "BOOL")]
    pub local_worker: Option<bool>,

    /// The scheduler's quotas and timings: the `[scheduler]` table of the
    /// settings file only (see `fleet::SchedulerArgs`).
    #[arg(skip)]
    #[serde(default)]
    pub scheduler: Option<crate::fleet::SchedulerArgs>,

    /// Plans (per-tenant gateway limits and memory quotas): the
    /// `[plans.NAME]` tables of the settings file only (see `plans`).
    #[arg(skip)]
    #[serde(default)]
    pub plans: Option<std::collections::BTreeMap<String, crate::plans::PlanArgs>>,

    /// Agents' memory quotas and sync interval: the `[memory]` table of
    /// the settings file only (see `memory::MemoryArgs`).
    #[arg(skip)]
    #[serde(default)]
    pub memory: Option<crate::memory::MemoryArgs>,

    /// The model gateway's providers, aliases, prices and limits: the
    /// `[gateway]` table of the settings file only (see `gateway::config`).
    #[arg(skip)]
    #[serde(default)]
    pub gateway: Option<crate::gateway::GatewayArgs>,

    /// Whether this server runs sandboxes: `auto` (if the host can: root,
    /// namespaces; otherwise the sandbox API answers 503), `on` (refuse to
    /// start if it cannot) or `off`. [default: auto]
    #[arg(long, env = "CARAPACE_SANDBOXES", value_name = "MODE")]
    pub sandboxes: Option<crate::sandboxes::SandboxMode>,

    /// Sandbox limits and paths: the `[sandbox]` table of the settings file
    /// only (see `sandboxes::SandboxArgs`).
    #[arg(skip)]
    #[serde(default)]
    pub sandbox: Option<crate::sandboxes::SandboxArgs>,
}

/// Prints nothing of the values: some are secrets (database URL, tokens,
/// provider keys).
impl std::fmt::Debug for SettingsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SettingsArgs { .. }")
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// JSON when standard output is not a terminal, text otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// Complete, validated settings.
#[derive(Debug)]
pub struct Settings {
    /// Where the HTTP server listens.
    pub listen: SocketAddr,
    /// Directory of the embedded defaults.
    pub data_dir: PathBuf,
    /// Database URL (may hold a password).
    pub database_url: Secret<String>,
    /// Pool size.
    pub database_max_connections: u32,
    /// Object store URL.
    pub object_store_url: String,
    /// Master key file.
    pub master_key_file: PathBuf,
    /// Log filter.
    pub log: String,
    /// Log format.
    pub log_format: LogFormat,
    /// JSON body limit in bytes.
    pub max_json_bytes: usize,
    /// Graceful shutdown deadline.
    pub shutdown_timeout: Duration,
    /// HTTP worker threads.
    pub http_workers: usize,
    /// API key verification cache lifetime.
    pub auth_cache_ttl: Duration,
    /// Bearer token guarding `/metrics`, if any.
    pub metrics_token: Option<Secret<String>>,
    /// The model gateway (with no platform providers if none are set).
    pub gateway: crate::gateway::GatewayConfig,
    /// Sandboxes.
    pub sandbox: crate::sandboxes::SandboxConfig,
    /// Operator token, if any.
    pub admin_token: Option<Secret<String>>,
    /// The scheduler.
    pub scheduler: crate::fleet::SchedulerConfig,
    /// Agents' memory quotas (the default plan's).
    pub memory: crate::memory::MemoryLimits,
    /// Every plan, `default` included.
    pub plans: crate::plans::Plans,
    /// Browser login, if an OpenID Connect provider is configured.
    pub login: Option<crate::login::LoginConfig>,
    /// Outgoing mail (invitations), if an SMTP server is configured.
    pub mail: Option<crate::mail::MailConfig>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// The limit above which a revocation would take too long to apply.
pub const MAX_AUTH_CACHE_TTL_MS: u64 = 1000;

/// Addresses or ranges, comma-separated (a bare address is itself alone);
/// at most 100.
fn parse_ranges(text: &str) -> anyhow::Result<Vec<ipnet::IpNet>> {
    let ranges: Vec<ipnet::IpNet> = text
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            r.parse::<ipnet::IpNet>()
                .or_else(|_| r.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| anyhow::anyhow!("{r:?} is not an address or a range"))
        })
        .collect::<anyhow::Result<_>>()?;
    if ranges.len() > 100 {
        bail!("at most 100 ranges");
    }
    Ok(ranges)
}

impl SettingsArgs {
    /// Reads a TOML settings file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read settings file {}", path.display()))?;
        // toml's own Display quotes the offending line, which may hold a
        // secret (a password in a database URL, an API key): report only
        // the message and the line number.
        toml::from_str(&text).map_err(|e| {
            let line = e
                .span()
                .map(|span| {
                    let n = text
                        .get(..span.start)
                        .map_or(0, |t| t.matches('\n').count())
                        + 1;
                    format!(" at line {n}")
                })
                .unwrap_or_default();
            anyhow::anyhow!(
                "invalid settings file {}{line}: {}",
                path.display(),
                e.message()
            )
        })
    }

    /// `self` over `lower`: each setting given in `self` wins.
    pub fn over(self, lower: Self) -> Self {
        Self {
            listen: self.listen.or(lower.listen),
            data_dir: self.data_dir.or(lower.data_dir),
            database_url: self.database_url.or(lower.database_url),
            database_max_connections: self
                .database_max_connections
                .or(lower.database_max_connections),
            object_store_url: self.object_store_url.or(lower.object_store_url),
            master_key_file: self.master_key_file.or(lower.master_key_file),
            log: self.log.or(lower.log),
            log_format: self.log_format.or(lower.log_format),
            max_json_bytes: self.max_json_bytes.or(lower.max_json_bytes),
            shutdown_timeout_secs: self.shutdown_timeout_secs.or(lower.shutdown_timeout_secs),
            http_workers: self.http_workers.or(lower.http_workers),
            auth_cache_ttl_ms: self.auth_cache_ttl_ms.or(lower.auth_cache_ttl_ms),
            metrics_token: self.metrics_token.or(lower.metrics_token),
            admin_token: self.admin_token.or(lower.admin_token),
            local_worker: self.local_worker.or(lower.local_worker),
            scheduler: self.scheduler.or(lower.scheduler),
            memory: self.memory.or(lower.memory),
            plans: self.plans.or(lower.plans),
            oidc_issuer: self.oidc_issuer.or(lower.oidc_issuer),
            oidc_client_id: self.oidc_client_id.or(lower.oidc_client_id),
            oidc_client_secret: self.oidc_client_secret.or(lower.oidc_client_secret),
            public_url: self.public_url.or(lower.public_url),
            signup: self.signup.or(lower.signup),
            session_max_age_hours: self.session_max_age_hours.or(lower.session_max_age_hours),
            reauth_minutes: self.reauth_minutes.or(lower.reauth_minutes),
            signup_domains: self.signup_domains.or(lower.signup_domains),
            oidc_groups_claim: self.oidc_groups_claim.or(lower.oidc_groups_claim),
            oidc_providers: self.oidc_providers.or(lower.oidc_providers),
            smtp_url: self.smtp_url.or(lower.smtp_url),
            trusted_proxies: self.trusted_proxies.or(lower.trusted_proxies),
            mail_from: self.mail_from.or(lower.mail_from),
            gateway: self.gateway.or(lower.gateway),
            sandboxes: self.sandboxes.or(lower.sandboxes),
            sandbox: self.sandbox.or(lower.sandbox),
        }
    }

    /// Fills in defaults and validates.
    pub fn resolve(self) -> anyhow::Result<Settings> {
        let data_dir = self
            .data_dir
            .unwrap_or_else(|| PathBuf::from("carapace-data"));
        let data_dir = std::path::absolute(&data_dir)
            .with_context(|| format!("invalid data directory {}", data_dir.display()))?;
        let database_url = self.database_url.unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                data_dir.join("carapace.db").display()
            )
        });
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            bail!("database_url must start with sqlite:// or postgres://");
        }
        let object_store_url = self
            .object_store_url
            .unwrap_or_else(|| format!("file://{}", data_dir.join("objects").display()));
        let max_json_bytes = self.max_json_bytes.unwrap_or(64 * 1024);
        if !(1024..=16 * 1024 * 1024).contains(&max_json_bytes) {
            bail!("max_json_bytes must be between 1024 and 16777216");
        }
        let auth_cache_ttl_ms = self.auth_cache_ttl_ms.unwrap_or(MAX_AUTH_CACHE_TTL_MS);
        if auth_cache_ttl_ms > MAX_AUTH_CACHE_TTL_MS {
            bail!("auth_cache_ttl_ms must be at most {MAX_AUTH_CACHE_TTL_MS}");
        }
        let database_max_connections = self.database_max_connections.unwrap_or(16);
        if database_max_connections == 0 {
            bail!("database_max_connections must be at least 1");
        }
        let http_workers = match self.http_workers {
            Some(0) => bail!("http_workers must be at least 1"),
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(2, usize::from),
        };
        let sandbox = self.sandbox.unwrap_or_default().resolve(
            self.sandboxes
                .unwrap_or(crate::sandboxes::SandboxMode::Auto),
            &data_dir,
        )?;
        let mut scheduler = self.scheduler.unwrap_or_default();
        if self.local_worker.is_some() {
            scheduler.local_worker = self.local_worker;
        }
        let scheduler = scheduler.resolve()?;
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            bail!("admin_token must be at least 16 characters");
        }
        let memory_args = self.memory.unwrap_or_default();
        let memory = memory_args.resolve()?;
        let gateway = self.gateway.unwrap_or_default().resolve()?;
        let plans = crate::plans::Plans::resolve(
            self.plans.unwrap_or_default(),
            gateway.limits,
            &memory_args,
        )?;
        let login = crate::login::LoginConfig::resolve(crate::login::LoginArgs {
            issuer: self.oidc_issuer,
            client_id: self.oidc_client_id,
            client_secret: self.oidc_client_secret,
            public_url: self.public_url,
            signup: self.signup,
            session_max_age_hours: self.session_max_age_hours,
            reauth_minutes: self.reauth_minutes,
            signup_domains: self.signup_domains,
            groups_claim: self.oidc_groups_claim,
            providers: self.oidc_providers.unwrap_or_default(),
        })?;
        let mail = crate::mail::MailConfig::resolve(self.smtp_url, self.mail_from)?;
        let trusted_proxies = parse_ranges(self.trusted_proxies.as_deref().unwrap_or(""))
            .context("trusted_proxies")?;
        Ok(Settings {
            trusted_proxies,
            login,
            mail,
            memory,
            plans,
            gateway,
            scheduler,
            admin_token: self.admin_token.map(Secret::new),
            listen: self
                .listen
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080))),
            master_key_file: self
                .master_key_file
                .unwrap_or_else(|| data_dir.join("master.key")),
            data_dir,
            database_url: Secret::new(database_url),
            database_max_connections,
            object_store_url,
            log: self.log.unwrap_or_else(|| "info".to_owned()),
            log_format: self.log_format.unwrap_or(LogFormat::Auto),
            max_json_bytes,
            shutdown_timeout: Duration::from_secs(self.shutdown_timeout_secs.unwrap_or(30)),
            http_workers,
            auth_cache_ttl: Duration::from_millis(auth_cache_ttl_ms),
            metrics_token: self.metrics_token.map(Secret::new),
            sandbox,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_live_under_the_data_dir() {
        let settings = SettingsArgs::default().resolve().unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8080");
        assert!(settings.data_dir.ends_with("carapace-data"));
        assert!(settings.master_key_file.starts_with(&settings.data_dir));
        assert!(settings.database_url.expose().starts_with("sqlite://"));
        assert!(settings.object_store_url.starts_with("file:///"));
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file: SettingsArgs =
            toml::from_str("listen = \"127.0.0.1:9000\"\nlog = \"debug\"\n").unwrap();
        let flags = SettingsArgs {
            listen: Some("127.0.0.1:9001".parse().unwrap()),
            ..SettingsArgs::default()
        };
        let settings = flags.over(file).resolve().unwrap();
        assert_eq!(settings.listen.port(), 9001);
        assert_eq!(settings.log, "debug");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<SettingsArgs>("lisen = \"x\"").is_err());
        let too_slow = SettingsArgs {
            auth_cache_ttl_ms: Some(5000),
            ..SettingsArgs::default()
        };
        assert!(too_slow.resolve().is_err());
        let mysql = SettingsArgs {
            database_url: Some("mysql://x".into()),
            ..SettingsArgs::default()
        };
        assert!(mysql.resolve().is_err());
    }

    #[test]
    fn the_database_url_is_not_printed_by_debug() {
        let settings = SettingsArgs {
            database_url: Some("postgres://u:sekrit@h/db".into()),
            ..SettingsArgs::default()
        };
        assert!(!format!("{:?}", settings.resolve().unwrap()).contains("sekrit"));
    }
}

//! Start-up: turning settings into a ready application (data directory,
//! master key, database, object store), and the operator's tenant creation.

use actix_web::dev::Server;
use actix_web::web;
use anyhow::Context;
use sea_orm::DatabaseConnection;

use crate::access::{Role, Scope, Scopes};
use crate::audit::{Actor, Outcome};
use crate::auth::Authenticator;
use crate::auth::api_key::ApiKeySecret;
use crate::config::Settings;
use crate::db::{self, NewApiKey, TenantScope, TenantWithOwner, platform};
use crate::email::EmailAddress;
use crate::gateway::{Gateway, Ledger};
use crate::http;
use crate::http::observe::Metrics;
use crate::master_key::MasterKey;
use crate::sandboxes::SandboxService;
use crate::state::AppState;
use crate::storage;

/// Logins allowed per minute per client address and per person.
const LOGINS_PER_MINUTE: u32 = 20;
/// Failed credentials a client address may present per minute; the next
/// ones are answered 429 (unaudited) for the rest of the minute.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 60;

/// A built, bound, not yet running application.
pub struct Application {
    server: Server,
    port: u16,
    state: web::Data<AppState>,
    ledger_task: tokio::task::JoinHandle<()>,
    transcripts_task: tokio::task::JoinHandle<()>,
    limit_sync: tokio::task::JoinHandle<()>,
    idle_reaper: tokio::task::JoinHandle<()>,
    conversation_sweeper: tokio::task::JoinHandle<()>,
    fleet_loops: tokio::task::JoinHandle<()>,
    local_worker: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Prepares everything `carapace serve` needs and binds the listener.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        create_data_dir(settings)?;
        let (master_key, created) = MasterKey::load_or_create(&settings.master_key_file)?;
        tracing::info!(
            path = %settings.master_key_file.display(),
            fingerprint = %master_key.fingerprint(),
            created,
            "master key ready"
        );
        let db = open_database(settings).await?;
        check_master_key(&db, &master_key, &settings.master_key_file, created).await?;
        let store = storage::open(&settings.object_store_url)?;
        storage::write_probe(store.as_ref()).await?;
        tracing::info!(
            scheme = settings.object_store_url.split("://").next().unwrap_or(""),
            "object store ready"
        );
        let metrics = Metrics::new()?;
        let (ledger, ledger_task) = Ledger::start(db.clone());
        let (transcripts, transcripts_task) = crate::gateway::Transcripts::start(
            db.clone(),
            master_key.clone(),
            settings.gateway.transcript_retention,
        );
        let gateway = Gateway::new(
            settings.gateway.clone(),
            ledger,
            transcripts,
            metrics.registry(),
        )?;
        let limit_sync = tokio::spawn(gateway.limit_sync(db.clone()));
        let sandboxes = std::sync::Arc::new(SandboxService::start(settings.sandbox.clone()).await?);
        let fleet = crate::fleet::Fleet::new(db.clone(), settings.scheduler.clone());
        let fleet_loops = tokio::spawn(fleet.clone().run());
        let idle_reaper = tokio::spawn(sandboxes.clone().reap_idle(db.clone(), fleet.clone()));
        let state = web::Data::new(AppState {
            auth: Authenticator::new(db.clone(), settings.auth_cache_ttl),
            db,
            memory: crate::memory::MemoryStore::new(store.clone()),
            plans: settings.plans.clone(),
            login: settings
                .login
                .clone()
                .map(crate::login::Login::new)
                .transpose()?
                .map(std::sync::Arc::new),
            trusted_proxies: settings.trusted_proxies.clone(),
            mailer: settings
                .mail
                .as_ref()
                .map(crate::mail::Mailer::new)
                .transpose()?
                .map(std::sync::Arc::new),
            invitation_mails: crate::mail::MailLimits::default(),
            login_limiter: crate::rate_limit::WindowLimiter::new(LOGINS_PER_MINUTE),
            auth_failures: crate::rate_limit::WindowLimiter::new(AUTH_FAILURES_PER_MINUTE),
            store,
            master_key,
            metrics,
            metrics_token: settings.metrics_token.clone(),
            gateway,
            sandboxes,
            fleet,
            conversations: crate::conversations::Conversations::new(),
            run_logs: crate::run_logs::RunLogs::default(),
            admin_token: settings.admin_token.clone(),
        });
        let (server, port) = http::serve(settings, state.clone())?;
        let conversation_sweeper = tokio::spawn(crate::conversations::sweep(state.clone()));
        state
            .sandboxes
            .set_service_addr(std::net::SocketAddr::new(settings.listen.ip(), port));
        let local_worker = match (
            &state.sandboxes.runtime_arc(),
            settings.scheduler.local_worker,
        ) {
            (Ok(runtime), true) => Some(
                crate::fleet::start_local_worker(
                    state.fleet.clone(),
                    runtime.clone(),
                    settings.sandbox.images.clone().into_iter().collect(),
                    state.sandboxes.service_addr(),
                )
                .await?,
            ),
            _ => None,
        };
        tracing::info!(address = %settings.listen.ip(), port, "listening");
        Ok(Self {
            server,
            port,
            state,
            ledger_task,
            transcripts_task,
            limit_sync,
            idle_reaper,
            conversation_sweeper,
            fleet_loops,
            local_worker,
        })
    }

    /// The bound port (useful when listening on port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The database, for tests and tools.
    pub fn db(&self) -> &DatabaseConnection {
        &self.state.db
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully: stops
    /// accepting connections and gives in-flight requests the configured
    /// deadline to finish.
    pub async fn run(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let server = self.server;
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => result.context("HTTP server failed")?,
            signal = shutdown_signal() => {
                tracing::info!(signal = signal?, "shutting down: finishing in-flight requests");
                // The server future must keep running to carry out the stop.
                let ((), result) = tokio::join!(handle.stop(true), &mut server);
                result.context("HTTP server failed")?;
            }
        }
        // Counts not yet shared are at most one sync interval's worth.
        self.limit_sync.abort();
        self.idle_reaper.abort();
        self.conversation_sweeper.abort();
        self.fleet_loops.abort();
        if let Some(worker) = &self.local_worker {
            worker.abort();
        }
        // Sandboxes do not outlive the server that runs them.
        self.state.sandboxes.shutdown().await;
        // The last senders go with the state; the writer then drains its
        // queue and ends.
        drop(self.state);
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.ledger_task)
            .await
            .is_err()
        {
            tracing::error!("usage ledger did not drain within 10 s");
        }
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.transcripts_task)
            .await
            .is_err()
        {
            tracing::error!("gateway transcripts did not drain within 10 s");
        }
        tracing::info!("shut down");
        Ok(())
    }
}

/// Waits for SIGTERM or SIGINT and says which.
async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("failed to listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("failed to listen for SIGINT")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Refuses to start with a master key that opens none of the stored tenant
/// data keys — a missing or mistyped key file would otherwise silently
/// produce a fresh key and lock every tenant out of its secrets.
async fn check_master_key(
    db: &DatabaseConnection,
    key: &MasterKey,
    path: &std::path::Path,
    created: bool,
) -> anyhow::Result<()> {
    use crate::crypto::KeyWrapper;
    let wrappers = platform::data_key_wrappers(db)
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let ours = key.id();
    let (mine, others): (Vec<_>, Vec<_>) = wrappers.iter().partition(|(by, _)| *by == ours);
    if mine.is_empty() && !others.is_empty() {
        if created {
            // Do not leave the wrong key behind for the next start.
            let _ = std::fs::remove_file(path);
        }
        anyhow::bail!(
            "the master key {} ({ours}) opens none of the {} stored tenant data keys (wrapped by {}); \
             restore the right key file, or finish a rotation with `carapace master-key rotate`",
            path.display(),
            others.iter().map(|(_, n)| n).sum::<u64>(),
            others
                .iter()
                .map(|(by, _)| by.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !others.is_empty() {
        tracing::warn!(
            others = ?others,
            "some tenant data keys are wrapped by another master key: a rotation is unfinished"
        );
    }
    Ok(())
}

/// Creates the data directory, private to the service's user (it holds the
/// master key and, by default, the database).
pub fn create_data_dir(settings: &Settings) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.data_dir)
        .with_context(|| {
            format!(
                "failed to create data directory {}",
                settings.data_dir.display()
            )
        })
}

/// Connects and applies migrations.
pub async fn open_database(settings: &Settings) -> anyhow::Result<DatabaseConnection> {
    let db = db::connect(&settings.database_url, settings.database_max_connections).await?;
    db::migrate(&db).await?;
    tracing::info!(backend = db::backend_name(&db), "database ready");
    Ok(db)
}

/// Creates a tenant with an owner and the owner's first API key (role
/// owner, scopes `api` and `gateway`), recording it as done by `actor`.
pub async fn create_tenant(
    db: &DatabaseConnection,
    name: &str,
    owner: &str,
    actor: &Actor,
) -> anyhow::Result<(TenantWithOwner, ApiKeySecret)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        anyhow::bail!("tenant name must be 1 to 100 characters without control characters");
    }
    let owner = EmailAddress::parse(owner)
        .map_err(|_| anyhow::anyhow!("`{}` is not a valid email address", owner.trim()))?;
    let secret = ApiKeySecret::generate()?;
    let scopes =
        Scopes::new(vec![Scope::Api, Scope::Gateway]).context("owner key scopes are empty")?;
    let created = platform::create_tenant_with_owner(
        db,
        name,
        &owner,
        NewApiKey {
            name: "owner key",
            secret: &secret,
            scopes: &scopes,
            role: Role::Owner,
            expires_at: None,
        },
        actor.event("tenant.create", Outcome::Success),
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok((created, secret))
}

/// Re-wraps every tenant data key from `old` to `new`; returns how many
/// were re-wrapped and how many were already under `new` or absent.
pub async fn rotate_master_key(
    db: &DatabaseConnection,
    old: &MasterKey,
    new: &MasterKey,
) -> anyhow::Result<(u64, u64)> {
    if old.fingerprint() == new.fingerprint() {
        anyhow::bail!("the new master key is the same as the current one");
    }
    use crate::crypto::KeyWrapper;
    let fail = |e: crate::error::Error| anyhow::anyhow!("{e:?}");
    let (mut rewrapped, mut skipped) = (0, None);
    // A server still running on the old key may create a data key after
    // the pass went by it: go round until every key is under `new`.
    for _ in 0..5 {
        let mut untouched = 0;
        for tenant in platform::tenant_ids(db).await.map_err(fail)? {
            if TenantScope::new(db, &tenant)
                .rewrap_data_key(old, new)
                .await
                .map_err(fail)?
            {
                rewrapped += 1;
            } else {
                untouched += 1;
            }
        }
        skipped.get_or_insert(untouched);
        let left: u64 = platform::data_key_wrappers(db)
            .await
            .map_err(fail)?
            .into_iter()
            .filter(|(by, _)| *by != new.id())
            .map(|(_, n)| n)
            .sum();
        if left == 0 {
            return Ok((rewrapped, skipped.unwrap_or(0)));
        }
    }
    anyhow::bail!(
        "tenant data keys keep appearing under the old master key: stop every server still using it, \
         then run the rotation again (it resumes where it stopped)"
    )
}

/// What deleting a tenant removed.
#[derive(Debug)]
pub struct TenantDeletion {
    /// Agents whose memory was removed.
    pub agents: usize,
    /// Objects removed from the object store.
    pub objects: u64,
    /// Whether a data key existed (and was destroyed).
    pub data_key_destroyed: bool,
}

/// Deletes a tenant: destroys its data key first (crypto-shredding — from
/// that moment its memory and secrets are unreadable, in backups too), then
/// removes its agents' memory objects, then its rows. The audit log keeps
/// the tenant's records, and a `tenant.delete` record is added.
pub async fn delete_tenant(
    db: &DatabaseConnection,
    memory: &crate::memory::MemoryStore,
    master_key: &MasterKey,
    tenant: &crate::ids::TenantId,
    actor: &Actor,
) -> anyhow::Result<TenantDeletion> {
    let fail = |e: crate::error::Error| anyhow::anyhow!("{e:?}");
    let scope = TenantScope::new(db, tenant);
    scope
        .tenant()
        .await
        .map_err(|_| anyhow::anyhow!("no tenant {tenant}"))?;
    let agents = scope.agents().await.map_err(fail)?;
    // The prefixes can only be derived while the key exists.
    let mut prefixes = Vec::with_capacity(agents.len());
    for agent in &agents {
        let key = scope.data_key(master_key).await.map_err(fail)?;
        let ns =
            crate::memory::Namespace::new(tenant.clone(), agent.id.as_str(), key).map_err(fail)?;
        prefixes.push(ns.prefix().to_owned());
    }
    let data_key_destroyed = scope.destroy_data_key().await.map_err(fail)?;
    let mut objects = 0;
    for prefix in &prefixes {
        match memory.destroy_prefix(prefix).await {
            Ok(n) => objects += n,
            Err(e) => {
                // Unreadable already; say where the leftovers are.
                tracing::error!(tenant_id = %tenant, prefix, error = ?e, "could not remove a deleted tenant's objects");
                return Err(anyhow::anyhow!(
                    "the data key is destroyed, but removing objects under {prefix} failed: {e:?}; \
                     remove the remaining prefixes by hand: {}",
                    prefixes.join(" ")
                ));
            }
        }
    }
    platform::delete_tenant(db, tenant, actor.event("tenant.delete", Outcome::Success))
        .await
        .map_err(fail)?;
    Ok(TenantDeletion {
        agents: agents.len(),
        objects,
        data_key_destroyed,
    })
}

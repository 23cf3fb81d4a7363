//! Persistence. Connecting and migrating; every query lives here, behind
//! two doors:
//!
//! - [`TenantScope`], for everything a tenant owns. It cannot be built
//!   without a [`TenantId`](crate::ids::TenantId), and each of its queries
//!   filters by that tenant, so a handler has no way to ask for another
//!   tenant's rows.
//! - [`platform`], for the few operations that are not inside one tenant:
//!   creating a tenant, finding which tenant an API key belongs to, and
//!   platform audit records.
//!
//! Rows ([`entities`]) never leave this module; callers get domain records.

mod agents;
mod conversations;
mod entities;
pub mod members;
pub mod platform;
mod records;
mod runs;
mod sandboxes;
pub mod sessions;
mod sign_in;
mod tenant_scope;
mod tenant_secrets;
mod transcripts;
mod usage;

use std::time::Duration;

use anyhow::Context;
use carapace_migrations::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

use crate::secret::Secret;
pub use agents::{Agent, AgentSettings, AgentSpec, Flavor, TOOLS};
pub use conversations::{
    Conversation, ConversationEvent, MAX_QUEUED, Message, MessageStatus, Posted, Take,
    waiting_conversations,
};
pub use records::{ApiKey, NewApiKey, Tenant, TenantWithOwner};
pub use runs::store_error;
pub use sandboxes::{
    NewSandbox, Sandbox, SandboxState, idle_sandboxes, mark_ended_sandboxes_lost,
    touch_sandboxes_of_runs,
};
pub use tenant_scope::TenantScope;
pub use tenant_secrets::StoredProvider;
pub use transcripts::{StoredTranscript, TranscriptFilter, delete_transcripts_before};
pub use usage::{UsageEntry, UsageGrouping, UsageTotal, append_usage};

/// Opens a connection pool.
pub async fn connect(
    url: &Secret<String>,
    max_connections: u32,
) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(url.expose().clone());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        // SQLite: WAL lets readers proceed while one writer commits; with
        // `synchronous=NORMAL` a commit waits for no flush (the WAL is
        // flushed at checkpoints): an application crash loses nothing, a
        // power cut or kernel crash may lose the last commits, and never
        // corrupts the file. PostgreSQL is the database for durability.
        .map_sqlx_sqlite_opts(|o| {
            use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
        });
    // The error text of a failed connection can quote the URL; say only
    // which kind of database it was.
    let db = Database::connect(options)
        .await
        .map_err(|e| anyhow::anyhow!("{}", redact(&e.to_string(), url.expose())))
        .context("failed to connect to the database")?;
    Ok(db)
}

fn redact(message: &str, url: &str) -> String {
    message.replace(url, "[database url]")
}

/// Applies pending migrations.
pub async fn migrate(db: &DatabaseConnection) -> anyhow::Result<()> {
    Migrator::up(db, None)
        .await
        .context("failed to apply database migrations")
}

/// `sqlite` or `postgres`, for logs.
pub fn backend_name(db: &DatabaseConnection) -> &'static str {
    match db.get_database_backend() {
        DbBackend::Sqlite => "sqlite",
        DbBackend::Postgres => "postgres",
        DbBackend::MySql => "mysql",
    }
}

/// Checks the database answers.
pub async fn ping(db: &DatabaseConnection) -> anyhow::Result<()> {
    db.ping().await.context("database did not answer")
}

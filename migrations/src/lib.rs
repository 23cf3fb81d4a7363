//! Database schema migrations for Carapace.
//!
//! One set of migrations serves both SQLite (the embedded default) and
//! PostgreSQL (production): tables are described with sea-query's builders,
//! and the few statements that differ between the two backends (triggers)
//! branch on the backend explicitly. This crate knows nothing of HTTP or of
//! the domain types; `carapace-api` maps rows to those.

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m0001_foundation;
mod m0002_gateway_usage;
mod m0003_tenant_keys_and_providers;
mod m0004_gateway_buckets;
mod m0005_agents;
mod m0006_usage_agent;
mod m0007_memory_heads;
mod m0008_sandboxes;
mod m0009_scheduler;
mod m0010_sandbox_runs;
mod m0011_run_tokens;
mod m0012_gateway_transcripts;
mod m0013_plans;
mod m0014_sessions;
mod m0015_lowercase_emails;
mod m0016_conversations;
mod m0017_login_providers;

/// Every migration, in the order it is applied.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_foundation::Migration),
            Box::new(m0002_gateway_usage::Migration),
            Box::new(m0003_tenant_keys_and_providers::Migration),
            Box::new(m0004_gateway_buckets::Migration),
            Box::new(m0005_agents::Migration),
            Box::new(m0006_usage_agent::Migration),
            Box::new(m0007_memory_heads::Migration),
            Box::new(m0008_sandboxes::Migration),
            Box::new(m0009_scheduler::Migration),
            Box::new(m0010_sandbox_runs::Migration),
            Box::new(m0011_run_tokens::Migration),
            Box::new(m0012_gateway_transcripts::Migration),
            Box::new(m0013_plans::Migration),
            Box::new(m0014_sessions::Migration),
            Box::new(m0015_lowercase_emails::Migration),
            Box::new(m0016_conversations::Migration),
            Box::new(m0017_login_providers::Migration),
        ]
    }
}

//! The gateway usage ledger: appending calls and summing them, always
//! within one tenant.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use sea_orm::DatabaseConnection;

use super::TenantScope;
use super::entities::gateway_usage;
use crate::error::Result;
use crate::ids::{AgentId, RunId, TenantId};

/// One model call, as the gateway saw it.
#[derive(Debug, Clone)]
pub struct UsageEntry {
    /// Who called (e.g. `api_key:key_…`).
    pub principal: String,
    /// The agent the call was made for, when the caller named one.
    pub agent: Option<AgentId>,
    /// The run that made the call, when a run token made it.
    pub run: Option<RunId>,
    /// `chat_completions` or `messages`.
    pub endpoint: &'static str,
    /// The model (or alias) the client asked for.
    pub requested_model: String,
    /// Provider that served it (empty if none did).
    pub provider: String,
    /// The upstream's model name.
    pub model: String,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Completion tokens.
    pub output_tokens: u64,
    /// Cost in millionths of a dollar.
    pub cost_micro_usd: i64,
    /// Time from request to the end of the response.
    pub latency_ms: u64,
    /// HTTP status given to the client.
    pub status: u16,
    /// `completed`, `client_disconnected` or `upstream_failed`.
    pub outcome: &'static str,
    /// When the call started.
    pub at: DateTime<Utc>,
}

/// Totals for one group.
#[derive(Debug, Clone, FromQueryResult)]
pub struct UsageTotal {
    /// The group key: a day (`YYYY-MM-DD`) or a model.
    pub key: String,
    /// Calls.
    pub requests: i64,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Completion tokens.
    pub output_tokens: i64,
    /// Cost in millionths of a dollar.
    pub cost_micro_usd: i64,
}

/// How to group usage.
#[derive(Debug, Clone, Copy)]
pub enum UsageGrouping {
    /// By UTC day.
    Day,
    /// By upstream model.
    Model,
    /// By agent (`-` for calls made for no agent).
    Agent,
    /// By run (`-` for calls not made with a run token).
    Run,
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row(tenant: &TenantId, entry: UsageEntry) -> gateway_usage::ActiveModel {
    gateway_usage::ActiveModel {
        tenant_id: Set(tenant.to_string()),
        principal: Set(entry.principal),
        endpoint: Set(entry.endpoint.to_owned()),
        requested_model: Set(entry.requested_model.chars().take(200).collect()),
        provider: Set(entry.provider.chars().take(100).collect()),
        model: Set(entry.model.chars().take(200).collect()),
        input_tokens: Set(clamp(entry.input_tokens)),
        output_tokens: Set(clamp(entry.output_tokens)),
        cost_micro_usd: Set(entry.cost_micro_usd),
        latency_ms: Set(clamp(entry.latency_ms)),
        status: Set(i32::from(entry.status)),
        outcome: Set(entry.outcome.to_owned()),
        day: Set(entry.at.format("%Y-%m-%d").to_string()),
        created_at: Set(entry.at),
        agent_id: Set(entry.agent.map(|a| a.to_string())),
        run_id: Set(entry.run.map(|r| r.to_string())),
        ..Default::default()
    }
}

/// Appends many calls, each to its own tenant's ledger, in one statement
/// (the gateway's ledger writer batches what queued up meanwhile).
pub async fn append_usage(
    db: &DatabaseConnection,
    batch: Vec<(TenantId, UsageEntry)>,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    gateway_usage::Entity::insert_many(
        batch.into_iter().map(|(tenant, entry)| row(&tenant, entry)),
    )
    .exec_without_returning(db)
    .await?;
    Ok(())
}

impl TenantScope<'_> {
    /// Appends one call to the ledger.
    pub async fn record_usage(&self, entry: UsageEntry) -> Result<()> {
        row(self.tenant_id(), entry).insert(self.db()).await?;
        Ok(())
    }

    /// Total cost recorded since `from_day` (`YYYY-MM-DD`), in millionths
    /// of a dollar.
    pub async fn spend_since(&self, from_day: &str) -> Result<i64> {
        #[derive(FromQueryResult)]
        struct Total {
            total: Option<i64>,
        }
        let total = gateway_usage::Entity::find()
            .select_only()
            .column_as(
                Expr::col(gateway_usage::Column::CostMicroUsd)
                    .sum()
                    .cast_as("BIGINT"),
                "total",
            )
            .filter(gateway_usage::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(gateway_usage::Column::Day.gte(from_day))
            .into_model::<Total>()
            .one(self.db())
            .await?;
        Ok(total.and_then(|t| t.total).unwrap_or(0))
    }

    /// Sums the ledger between two days (inclusive, `YYYY-MM-DD`).
    pub async fn usage_totals(
        &self,
        grouping: UsageGrouping,
        from_day: &str,
        to_day: &str,
    ) -> Result<Vec<UsageTotal>> {
        let key = match grouping {
            UsageGrouping::Day => gateway_usage::Column::Day,
            UsageGrouping::Model => gateway_usage::Column::Model,
            UsageGrouping::Agent => gateway_usage::Column::AgentId,
            UsageGrouping::Run => gateway_usage::Column::RunId,
        };
        let rows = gateway_usage::Entity::find()
            .select_only()
            .column_as(
                sea_orm::sea_query::SimpleExpr::from(sea_orm::sea_query::Func::coalesce([
                    Expr::col(key).into(),
                    Expr::val("-").into(),
                ])),
                "key",
            )
            .column_as(Expr::col(gateway_usage::Column::Id).count(), "requests")
            .column_as(
                Expr::col(gateway_usage::Column::InputTokens)
                    .sum()
                    .cast_as("BIGINT"),
                "input_tokens",
            )
            .column_as(
                Expr::col(gateway_usage::Column::OutputTokens)
                    .sum()
                    .cast_as("BIGINT"),
                "output_tokens",
            )
            .column_as(
                Expr::col(gateway_usage::Column::CostMicroUsd)
                    .sum()
                    .cast_as("BIGINT"),
                "cost_micro_usd",
            )
            .filter(gateway_usage::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(gateway_usage::Column::Day.gte(from_day))
            .filter(gateway_usage::Column::Day.lte(to_day))
            .group_by(key)
            .order_by_asc(key)
            .into_model::<UsageTotal>()
            .all(self.db())
            .await?;
        Ok(rows)
    }
}

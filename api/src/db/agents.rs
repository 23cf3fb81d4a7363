//! A tenant's agents.

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use super::TenantScope;
use super::entities::{agent, memory_head};
use super::platform::insert_audit;
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::ids::AgentId;

/// An agent as stored.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Its id.
    pub id: AgentId,
    /// Display name.
    pub name: String,
    /// Model alias or model, called through the gateway.
    pub model: String,
    /// `builtin` or an OCI image reference.
    pub image: String,
    /// Persona / `AGENTS.md` seed.
    pub instructions: String,
    /// Host names the agent may reach through the egress proxy.
    pub egress_allow: Vec<String>,
    /// How it talks: tools, limits, timeouts.
    pub settings: AgentSettings,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// The settable fields of an agent.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    /// Display name.
    pub name: String,
    /// Model.
    pub model: String,
    /// Image.
    pub image: String,
    /// Instructions.
    pub instructions: String,
    /// Egress allow-list.
    pub egress_allow: Vec<String>,
    /// Settings.
    pub settings: AgentSettings,
}

/// The tools the built-in agent knows (`reply` is always offered).
pub const TOOLS: [&str; 5] = [
    "shell",
    "read_file",
    "write_file",
    "list_files",
    "http_fetch",
];

/// What answers an agent's messages in its sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// The built-in tool loop (`carapace-agent chat`).
    #[default]
    Carapace,
    /// OpenClaw, from the agent's image (`openclaw agent --local`), wired
    /// to the gateway and the synced memory.
    Openclaw,
}

/// How an agent talks: stored as one JSON column; fields missing from an
/// older record take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct AgentSettings {
    /// What answers its messages.
    pub flavor: Flavor,
    /// Tools the model may call (of [`TOOLS`]).
    pub tools: Vec<String>,
    /// Its sandbox's resource limits.
    pub limits: carapace_runtime::Limits,
    /// Longest time one message may take, seconds.
    pub message_timeout_s: u32,
    /// How long its sandbox stays warm after the last message, seconds.
    pub idle_timeout_s: u32,
    /// Most model calls for one message.
    pub max_steps: u32,
    /// Most tokens (as the gateway counts them) for one message.
    pub max_tokens_per_message: u64,
    /// Longest time one `shell` tool call may take, seconds.
    pub shell_timeout_s: u32,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            flavor: Flavor::Carapace,
            tools: TOOLS.iter().map(|t| (*t).to_owned()).collect(),
            limits: carapace_runtime::Limits::default(),
            message_timeout_s: 300,
            idle_timeout_s: 300,
            max_steps: 16,
            max_tokens_per_message: 200_000,
            shell_timeout_s: 60,
        }
    }
}

impl TryFrom<agent::Model> for Agent {
    type Error = anyhow::Error;
    fn try_from(row: agent::Model) -> anyhow::Result<Self> {
        Ok(Agent {
            id: AgentId::parse(&row.id)?,
            name: row.name,
            model: row.model,
            image: row.image,
            instructions: row.instructions,
            egress_allow: serde_json::from_str(&row.egress_allow)?,
            settings: serde_json::from_str(&row.settings)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

impl TenantScope<'_> {
    /// The tenant's agents, newest first.
    pub async fn agents(&self) -> Result<Vec<Agent>> {
        let rows = agent::Entity::find()
            .filter(agent::Column::TenantId.eq(self.tenant_id().as_str()))
            .order_by_desc(agent::Column::CreatedAt)
            .order_by_desc(agent::Column::Id)
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(Agent::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    /// Number of agents.
    pub async fn agent_count(&self) -> Result<u64> {
        Ok(agent::Entity::find()
            .filter(agent::Column::TenantId.eq(self.tenant_id().as_str()))
            .count(self.db())
            .await?)
    }

    /// One agent; `NotFound` for an id of another tenant.
    pub async fn agent(&self, id: &AgentId) -> Result<Agent> {
        let row = agent::Entity::find_by_id(id.as_str())
            .filter(agent::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?
            .ok_or(Error::NotFound)?;
        Ok(row.try_into()?)
    }

    /// Creates an agent and its audit record.
    pub async fn create_agent(&self, spec: AgentSpec, audit: AuditEvent) -> Result<Agent> {
        let tenant = self.tenant_id().clone();
        let now = Utc::now();
        let egress = serde_json::to_string(&spec.egress_allow).map_err(anyhow::Error::from)?;
        let settings = serde_json::to_string(&spec.settings).map_err(anyhow::Error::from)?;
        let row = self
            .db()
            .transaction::<_, agent::Model, Error>(|txn| {
                Box::pin(async move {
                    let row = agent::ActiveModel {
                        id: Set(AgentId::generate().to_string()),
                        tenant_id: Set(tenant.to_string()),
                        name: Set(spec.name),
                        model: Set(spec.model),
                        image: Set(spec.image),
                        instructions: Set(spec.instructions),
                        egress_allow: Set(egress),
                        settings: Set(settings),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(txn)
                    .await?;
                    insert_audit(txn, audit.in_tenant(&tenant).target(row.id.clone())).await?;
                    Ok(row)
                })
            })
            .await?;
        Ok(row.try_into()?)
    }

    /// Replaces an agent's settable fields.
    pub async fn update_agent(
        &self,
        id: &AgentId,
        spec: AgentSpec,
        audit: AuditEvent,
    ) -> Result<Agent> {
        let tenant = self.tenant_id().clone();
        let id = id.clone();
        let egress = serde_json::to_string(&spec.egress_allow).map_err(anyhow::Error::from)?;
        let settings = serde_json::to_string(&spec.settings).map_err(anyhow::Error::from)?;
        let row = self
            .db()
            .transaction::<_, agent::Model, Error>(|txn| {
                Box::pin(async move {
                    // The write first (rolled back if there is no such
                    // agent): on SQLite a transaction that reads first
                    // cannot take the write lock once another has written.
                    insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    let row = agent::Entity::find_by_id(id.as_str())
                        .filter(agent::Column::TenantId.eq(tenant.as_str()))
                        .one(txn)
                        .await?
                        .ok_or(Error::NotFound)?;
                    let mut active: agent::ActiveModel = row.into();
                    active.name = Set(spec.name);
                    active.model = Set(spec.model);
                    active.image = Set(spec.image);
                    active.instructions = Set(spec.instructions);
                    active.egress_allow = Set(egress);
                    active.settings = Set(settings);
                    active.updated_at = Set(Utc::now());
                    let row = active.update(txn).await?;
                    Ok(row)
                })
            })
            .await?;
        Ok(row.try_into()?)
    }

    /// Deletes an agent; `false` if the tenant has no such agent.
    pub async fn delete_agent(&self, id: &AgentId, audit: AuditEvent) -> Result<bool> {
        let tenant = self.tenant_id().clone();
        let id = id.clone();
        Ok(self
            .db()
            .transaction::<_, bool, Error>(|txn| {
                Box::pin(async move {
                    let deleted = agent::Entity::delete_many()
                        .filter(agent::Column::Id.eq(id.as_str()))
                        .filter(agent::Column::TenantId.eq(tenant.as_str()))
                        .exec(txn)
                        .await?
                        .rows_affected;
                    if deleted == 0 {
                        return Ok(false);
                    }
                    insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    Ok(true)
                })
            })
            .await?)
    }
}

impl TenantScope<'_> {
    /// The newest memory version committed for the agent, as recorded.
    pub async fn memory_head(&self, agent: &AgentId) -> Result<Option<u64>> {
        let row = memory_head::Entity::find_by_id(agent.as_str())
            .filter(memory_head::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?;
        Ok(row.map(|r| u64::try_from(r.version).unwrap_or(0)))
    }

    /// Records that `version` of the agent's memory was committed (never
    /// moving the record backwards).
    pub async fn record_memory_head(&self, agent: &AgentId, version: u64) -> Result<()> {
        use sea_orm::sea_query::{Expr, OnConflict};
        let version = i64::try_from(version).map_err(anyhow::Error::from)?;
        memory_head::Entity::insert(memory_head::ActiveModel {
            agent_id: Set(agent.to_string()),
            tenant_id: Set(self.tenant_id().to_string()),
            version: Set(version),
        })
        .on_conflict(
            OnConflict::column(memory_head::Column::AgentId)
                .value(
                    memory_head::Column::Version,
                    Expr::cust(
                        "CASE WHEN excluded.version > memory_heads.version \
                         THEN excluded.version ELSE memory_heads.version END",
                    ),
                )
                .to_owned(),
        )
        .exec_without_returning(self.db())
        .await?;
        Ok(())
    }
}

//! A tenant's settings (its plan, its gateway transcripts switch) and the
//! gateway's sealed transcripts in the database (sealing and opening are
//! `gateway::transcripts`' job; rows here hold ciphertext only).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use super::TenantScope;
use super::entities::{gateway_transcript, tenant};
use super::platform::insert_audit;
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::ids::{AgentId, RunId, TranscriptId};

/// A transcript as stored: who made the call, and the sealed bodies.
#[derive(Debug, Clone)]
pub struct StoredTranscript {
    /// Its id.
    pub id: TranscriptId,
    /// When the call started.
    pub created_at: DateTime<Utc>,
    /// The run that made it, if a run token did.
    pub run: Option<String>,
    /// The agent it was made for, if any.
    pub agent: Option<String>,
    /// The model it went to.
    pub model: String,
    /// The HTTP status the client got.
    pub status: u16,
    /// The sealed record.
    pub sealed: Vec<u8>,
}

/// Which transcripts to list.
#[derive(Debug, Default)]
pub struct TranscriptFilter {
    /// Only a run's.
    pub run: Option<RunId>,
    /// Only an agent's.
    pub agent: Option<AgentId>,
    /// Only older than this id (the last of the previous page).
    pub before: Option<TranscriptId>,
    /// At most this many.
    pub limit: u64,
}

impl TryFrom<gateway_transcript::Model> for StoredTranscript {
    type Error = anyhow::Error;
    fn try_from(row: gateway_transcript::Model) -> anyhow::Result<Self> {
        Ok(StoredTranscript {
            id: TranscriptId::parse(&row.id)?,
            created_at: row.created_at,
            run: row.run_id,
            agent: row.agent_id,
            model: row.model,
            status: u16::try_from(row.status).unwrap_or(0),
            sealed: BASE64.decode(row.sealed)?,
        })
    }
}

impl TenantScope<'_> {
    /// Moves the tenant to another plan (whose name the caller checked).
    pub async fn set_plan(&self, plan: &str, audit: AuditEvent) -> Result<()> {
        let tenant = self.tenant_id().clone();
        let plan = plan.to_owned();
        self.db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    let found = tenant::Entity::find_by_id(tenant.as_str()).one(txn).await?;
                    if found.is_none() {
                        return Err(Error::NotFound);
                    }
                    tenant::ActiveModel {
                        id: Set(tenant.to_string()),
                        plan: Set(plan),
                        ..Default::default()
                    }
                    .update(txn)
                    .await?;
                    insert_audit(txn, audit.in_tenant(&tenant)).await?;
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }

    /// Turns the recording of gateway prompts and completions on or off.
    pub async fn set_record_gateway_bodies(&self, on: bool, audit: AuditEvent) -> Result<()> {
        let tenant = self.tenant_id().clone();
        self.db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    tenant::ActiveModel {
                        id: Set(tenant.to_string()),
                        record_gateway_bodies: Set(on),
                        ..Default::default()
                    }
                    .update(txn)
                    .await?;
                    insert_audit(txn, audit.in_tenant(&tenant)).await?;
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }

    /// Stores a sealed transcript.
    pub async fn insert_transcript(&self, transcript: &StoredTranscript) -> Result<()> {
        gateway_transcript::ActiveModel {
            id: Set(transcript.id.to_string()),
            tenant_id: Set(self.tenant_id().to_string()),
            created_at: Set(transcript.created_at),
            run_id: Set(transcript.run.clone()),
            agent_id: Set(transcript.agent.clone()),
            model: Set(transcript.model.clone()),
            status: Set(i32::from(transcript.status)),
            sealed: Set(BASE64.encode(&transcript.sealed)),
        }
        .insert(self.db())
        .await?;
        Ok(())
    }

    /// The tenant's transcripts, newest first, without their sealed bodies
    /// (`sealed` is empty: a listing never loads them).
    pub async fn transcripts(&self, filter: &TranscriptFilter) -> Result<Vec<StoredTranscript>> {
        let mut query = gateway_transcript::Entity::find()
            .filter(gateway_transcript::Column::TenantId.eq(self.tenant_id().as_str()));
        if let Some(run) = &filter.run {
            query = query.filter(gateway_transcript::Column::RunId.eq(run.as_str()));
        }
        if let Some(agent) = &filter.agent {
            query = query.filter(gateway_transcript::Column::AgentId.eq(agent.as_str()));
        }
        if let Some(before) = &filter.before {
            query = query.filter(gateway_transcript::Column::Id.lt(before.as_str()));
        }
        type Summary = (
            String,
            DateTime<Utc>,
            Option<String>,
            Option<String>,
            String,
            i32,
        );
        let rows: Vec<Summary> = query
            .select_only()
            .column(gateway_transcript::Column::Id)
            .column(gateway_transcript::Column::CreatedAt)
            .column(gateway_transcript::Column::RunId)
            .column(gateway_transcript::Column::AgentId)
            .column(gateway_transcript::Column::Model)
            .column(gateway_transcript::Column::Status)
            .order_by_desc(gateway_transcript::Column::Id)
            .limit(filter.limit)
            .into_tuple()
            .all(self.db())
            .await?;
        rows.into_iter()
            .map(|(id, created_at, run, agent, model, status)| {
                Ok(StoredTranscript {
                    id: TranscriptId::parse(&id).map_err(anyhow::Error::from)?,
                    created_at,
                    run,
                    agent,
                    model,
                    status: u16::try_from(status).unwrap_or(0),
                    sealed: Vec::new(),
                })
            })
            .collect()
    }

    /// One of the tenant's transcripts.
    pub async fn transcript(&self, id: &TranscriptId) -> Result<StoredTranscript> {
        let row = gateway_transcript::Entity::find_by_id(id.as_str())
            .filter(gateway_transcript::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?
            .ok_or(Error::NotFound)?;
        Ok(row.try_into()?)
    }
}

/// Deletes every tenant's transcripts older than `before`; how many.
pub async fn delete_transcripts_before(
    db: &sea_orm::DatabaseConnection,
    before: DateTime<Utc>,
) -> Result<u64> {
    let result = gateway_transcript::Entity::delete_many()
        .filter(gateway_transcript::Column::CreatedAt.lt(before))
        .exec(db)
        .await?;
    Ok(result.rows_affected)
}

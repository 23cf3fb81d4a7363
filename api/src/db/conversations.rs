//! A tenant's conversations with its agents: the conversations, their
//! messages (users' messages queued in order, agents' replies) and their
//! events (numbered per conversation, for resumable streams). Platform
//! functions at the end serve the background sweeper across tenants.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};

use super::TenantScope;
use super::entities::{conversation, conversation_event, message};
use crate::error::{Error, Result};
use crate::ids::{AgentId, ConversationId, MessageId, TenantId};

/// Most messages of one conversation waiting for their turn.
pub const MAX_QUEUED: u64 = 20;

/// A conversation with an agent.
#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: ConversationId,
    pub agent_id: AgentId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<conversation::Model> for Conversation {
    type Error = anyhow::Error;
    fn try_from(row: conversation::Model) -> anyhow::Result<Self> {
        Ok(Conversation {
            id: ConversationId::parse(&row.id)?,
            agent_id: AgentId::parse(&row.agent_id)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Where a user's message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageStatus {
    /// Waiting for the messages before it.
    Queued,
    /// With the agent now.
    Processing,
    /// Answered (the agent's replies are `Done` from the start).
    Done,
    /// Not answered: see its error.
    Failed,
}

impl MessageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Processing => "processing",
            MessageStatus::Done => "done",
            MessageStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "queued" => MessageStatus::Queued,
            "processing" => MessageStatus::Processing,
            "done" => MessageStatus::Done,
            "failed" => MessageStatus::Failed,
            other => anyhow::bail!("unknown message status {other:?}"),
        })
    }

    /// Whether nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(self, MessageStatus::Done | MessageStatus::Failed)
    }
}

/// A message: a user's (`role` `user`) or an agent's reply (`assistant`).
#[derive(Debug, Clone)]
pub struct Message {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub role: String,
    pub text: String,
    pub status: MessageStatus,
    pub error: Option<String>,
    /// For a user's message: the agent's reply to it.
    pub reply_id: Option<MessageId>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<message::Model> for Message {
    type Error = anyhow::Error;
    fn try_from(row: message::Model) -> anyhow::Result<Self> {
        Ok(Message {
            id: MessageId::parse(&row.id)?,
            conversation_id: ConversationId::parse(&row.conversation_id)?,
            role: row.role,
            text: row.text,
            status: MessageStatus::parse(&row.status)?,
            error: row.error,
            reply_id: row.reply_id.as_deref().map(MessageId::parse).transpose()?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// One event of a conversation.
#[derive(Debug, Clone)]
pub struct ConversationEvent {
    /// Its number in the conversation (from 1): the stream's event id.
    pub seq: i64,
    pub kind: String,
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// What [`TenantScope::take_message`] found.
pub enum Take {
    /// Another task holds the conversation.
    Busy,
    /// Held, and no message is waiting.
    Empty,
    /// The next message; `true` if it was queued (now `processing`),
    /// `false` if it was left `processing` by a holder that went away.
    Message(Message, bool),
}

/// A message posted: the message and whether it is new (not a repeat of
/// an earlier request with the same idempotency key).
pub struct Posted {
    pub message: Message,
    pub created: bool,
}

impl TenantScope<'_> {
    /// One conversation; `NotFound` for an id of another tenant.
    pub async fn conversation(&self, id: &ConversationId) -> Result<Conversation> {
        let row = conversation::Entity::find_by_id(id.as_str())
            .filter(conversation::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?
            .ok_or(Error::NotFound)?;
        Ok(row.try_into()?)
    }

    /// The tenant's conversations (of one agent, if given), newest first,
    /// at most `limit`.
    pub async fn conversations(
        &self,
        agent: Option<&AgentId>,
        limit: u64,
    ) -> Result<Vec<Conversation>> {
        let mut query = conversation::Entity::find()
            .filter(conversation::Column::TenantId.eq(self.tenant_id().as_str()));
        if let Some(agent) = agent {
            query = query.filter(conversation::Column::AgentId.eq(agent.as_str()));
        }
        let rows = query
            .order_by_desc(conversation::Column::Id)
            .limit(limit)
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(Conversation::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    async fn message_by_key(&self, key: &str) -> Result<Option<Message>> {
        let row = message::Entity::find()
            .filter(message::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(message::Column::IdempotencyKey.eq(key))
            .one(self.db())
            .await?;
        Ok(row.map(Message::try_from).transpose()?)
    }

    /// Queues a user's message to `agent`, in `conversation` (which must be
    /// the agent's) or a new one, with its `message_accepted` event. A
    /// repeated idempotency key returns the message first posted with it
    /// (whatever its conversation).
    pub async fn post_message(
        &self,
        agent: &AgentId,
        conversation: Option<&ConversationId>,
        text: String,
        idempotency_key: Option<String>,
    ) -> Result<Posted> {
        if let Some(key) = &idempotency_key
            && let Some(message) = self.message_by_key(key).await?
        {
            return Ok(Posted {
                message,
                created: false,
            });
        }
        let tenant = self.tenant_id().clone();
        let (agent, conversation) = (agent.clone(), conversation.cloned());
        let key = idempotency_key.clone();
        let now = Utc::now();
        let inserted = self
            .db()
            .transaction::<_, message::Model, Error>(|txn| {
                Box::pin(async move {
                    let conversation = match conversation {
                        Some(id) => {
                            // The write first (SQLite's write lock).
                            let touched = conversation::Entity::update_many()
                                .col_expr(conversation::Column::UpdatedAt, Expr::value(now))
                                .filter(conversation::Column::Id.eq(id.as_str()))
                                .filter(conversation::Column::TenantId.eq(tenant.as_str()))
                                .filter(conversation::Column::AgentId.eq(agent.as_str()))
                                .exec(txn)
                                .await?
                                .rows_affected;
                            if touched == 0 {
                                return Err(Error::NotFound);
                            }
                            let queued = message::Entity::find()
                                .filter(message::Column::ConversationId.eq(id.as_str()))
                                .filter(message::Column::Status.eq(MessageStatus::Queued.as_str()))
                                .count(txn)
                                .await?;
                            if queued >= MAX_QUEUED {
                                return Err(Error::LimitReached(format!(
                                    "a conversation holds at most {MAX_QUEUED} messages waiting \
                                     for their turn"
                                )));
                            }
                            id
                        }
                        None => {
                            let id = ConversationId::generate();
                            conversation::ActiveModel {
                                id: Set(id.to_string()),
                                tenant_id: Set(tenant.to_string()),
                                agent_id: Set(agent.to_string()),
                                created_at: Set(now),
                                updated_at: Set(now),
                                busy_until: Set(None),
                                busy_by: Set(None),
                                events: Set(0),
                            }
                            .insert(txn)
                            .await?;
                            id
                        }
                    };
                    let row = message::ActiveModel {
                        id: Set(MessageId::generate().to_string()),
                        tenant_id: Set(tenant.to_string()),
                        conversation_id: Set(conversation.to_string()),
                        role: Set("user".to_owned()),
                        text: Set(text),
                        status: Set(MessageStatus::Queued.as_str().to_owned()),
                        error: Set(None),
                        reply_id: Set(None),
                        idempotency_key: Set(key),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(txn)
                    .await?;
                    let accepted = serde_json::json!({"message_id": row.id, "text": row.text});
                    append_event_in(txn, &tenant, &conversation, "message_accepted", &accepted)
                        .await?;
                    Ok(row)
                })
            })
            .await;
        match inserted {
            Ok(row) => Ok(Posted {
                message: row.try_into()?,
                created: true,
            }),
            // The same key posted concurrently: the other request won.
            Err(e) => match &idempotency_key {
                Some(key) => match self.message_by_key(key).await? {
                    Some(message) => Ok(Posted {
                        message,
                        created: false,
                    }),
                    None => Err(e.into()),
                },
                None => Err(e.into()),
            },
        }
    }

    /// One message; `NotFound` for an id of another tenant.
    pub async fn message(&self, id: &MessageId) -> Result<Message> {
        let row = message::Entity::find_by_id(id.as_str())
            .filter(message::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?
            .ok_or(Error::NotFound)?;
        Ok(row.try_into()?)
    }

    /// A conversation's messages, oldest first: the last `limit`.
    pub async fn messages(
        &self,
        conversation: &ConversationId,
        limit: u64,
    ) -> Result<Vec<Message>> {
        let mut rows = message::Entity::find()
            .filter(message::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(message::Column::ConversationId.eq(conversation.as_str()))
            .order_by_desc(message::Column::Id)
            .limit(limit)
            .all(self.db())
            .await?;
        rows.reverse();
        Ok(rows
            .into_iter()
            .map(Message::try_from)
            .collect::<anyhow::Result<_>>()?)
    }

    /// Holds the conversation for `holder` until `until` (taking the hold
    /// if nobody holds it, or renewing `holder`'s with `renew`) and takes
    /// its next message, marking a queued one `processing`, in one
    /// transaction.
    pub async fn take_message(
        &self,
        conversation: &ConversationId,
        holder: &str,
        until: DateTime<Utc>,
        renew: bool,
    ) -> Result<Take> {
        let (tenant, conversation) = (self.tenant_id().clone(), conversation.clone());
        let holder = holder.to_owned();
        let now = Utc::now();
        let row = self
            .db()
            .transaction::<_, Take, Error>(|txn| {
                Box::pin(async move {
                    let mut hold = conversation::Entity::update_many()
                        .col_expr(conversation::Column::BusyUntil, Expr::value(Some(until)))
                        .col_expr(
                            conversation::Column::BusyBy,
                            Expr::value(Some(holder.clone())),
                        )
                        .filter(conversation::Column::Id.eq(conversation.as_str()))
                        .filter(conversation::Column::TenantId.eq(tenant.as_str()));
                    if renew {
                        hold = hold.filter(conversation::Column::BusyBy.eq(holder.as_str()));
                    } else {
                        hold = hold.filter(
                            Condition::any()
                                .add(conversation::Column::BusyUntil.is_null())
                                .add(conversation::Column::BusyUntil.lt(now)),
                        );
                    }
                    if hold.exec(txn).await?.rows_affected == 0 {
                        return Ok(Take::Busy);
                    }
                    let next = message::Entity::find()
                        .filter(message::Column::TenantId.eq(tenant.as_str()))
                        .filter(message::Column::ConversationId.eq(conversation.as_str()))
                        .filter(message::Column::Status.is_in([
                            MessageStatus::Queued.as_str(),
                            MessageStatus::Processing.as_str(),
                        ]))
                        .order_by_asc(message::Column::Id)
                        .one(txn)
                        .await?;
                    let Some(next) = next else {
                        return Ok(Take::Empty);
                    };
                    let mut next: Message = next.try_into()?;
                    if next.status == MessageStatus::Queued {
                        message::Entity::update_many()
                            .col_expr(
                                message::Column::Status,
                                Expr::value(MessageStatus::Processing.as_str()),
                            )
                            .col_expr(message::Column::UpdatedAt, Expr::value(now))
                            .filter(message::Column::Id.eq(next.id.as_str()))
                            .exec(txn)
                            .await?;
                        next.status = MessageStatus::Processing;
                        Ok(Take::Message(next, true))
                    } else {
                        // Left processing by a holder that went away.
                        Ok(Take::Message(next, false))
                    }
                })
            })
            .await?;
        Ok(row)
    }

    /// Lets the conversation go.
    pub async fn release_conversation(&self, id: &ConversationId, holder: &str) -> Result<()> {
        conversation::Entity::update_many()
            .col_expr(
                conversation::Column::BusyUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .col_expr(
                conversation::Column::BusyBy,
                Expr::value(Option::<String>::None),
            )
            .filter(conversation::Column::Id.eq(id.as_str()))
            .filter(conversation::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(conversation::Column::BusyBy.eq(holder))
            .exec(self.db())
            .await?;
        Ok(())
    }

    /// Extends `holder`'s hold on the conversation to `until`; whether it
    /// still held it.
    pub async fn renew_hold(
        &self,
        id: &ConversationId,
        holder: &str,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let renewed = conversation::Entity::update_many()
            .col_expr(conversation::Column::BusyUntil, Expr::value(Some(until)))
            .filter(conversation::Column::Id.eq(id.as_str()))
            .filter(conversation::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(conversation::Column::BusyBy.eq(holder))
            .exec(self.db())
            .await?
            .rows_affected;
        Ok(renewed == 1)
    }

    /// Fails a message being answered, with its `error` event, in one
    /// transaction; `false` (nothing written) if it was no longer being
    /// answered (another holder failed it meanwhile).
    pub async fn fail_message(&self, message: &Message, detail: &str) -> Result<bool> {
        let tenant = self.tenant_id().clone();
        let message = message.clone();
        let detail = detail.to_owned();
        Ok(self
            .db()
            .transaction::<_, bool, Error>(|txn| {
                Box::pin(async move {
                    let failed = message::Entity::update_many()
                        .col_expr(
                            message::Column::Status,
                            Expr::value(MessageStatus::Failed.as_str()),
                        )
                        .col_expr(message::Column::Error, Expr::value(Some(detail.clone())))
                        .col_expr(message::Column::UpdatedAt, Expr::value(Utc::now()))
                        .filter(message::Column::Id.eq(message.id.as_str()))
                        .filter(message::Column::TenantId.eq(tenant.as_str()))
                        .filter(message::Column::Status.eq(MessageStatus::Processing.as_str()))
                        .exec(txn)
                        .await?
                        .rows_affected;
                    if failed == 0 {
                        return Ok(false);
                    }
                    let event = serde_json::json!({"message_id": message.id, "detail": detail});
                    append_event_in(txn, &tenant, &message.conversation_id, "error", &event)
                        .await?;
                    Ok(true)
                })
            })
            .await?)
    }

    /// The oldest message of the conversation not yet answered: one left
    /// `processing` by a holder that went away comes back first.
    pub async fn next_message(&self, conversation: &ConversationId) -> Result<Option<Message>> {
        let row = message::Entity::find()
            .filter(message::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(message::Column::ConversationId.eq(conversation.as_str()))
            .filter(message::Column::Status.is_in([
                MessageStatus::Queued.as_str(),
                MessageStatus::Processing.as_str(),
            ]))
            .order_by_asc(message::Column::Id)
            .one(self.db())
            .await?;
        Ok(row.map(Message::try_from).transpose()?)
    }

    /// Records the agent's reply to `to`, marks `to` answered, appends the
    /// `reply` event and notes the use of the `sandbox` that answered, in
    /// one transaction.
    pub async fn record_reply(
        &self,
        to: &Message,
        text: String,
        sandbox: &crate::ids::SandboxId,
    ) -> Result<Message> {
        let tenant = self.tenant_id().clone();
        let to = to.clone();
        let sandbox = sandbox.clone();
        let now = Utc::now();
        let row = self
            .db()
            .transaction::<_, message::Model, Error>(|txn| {
                Box::pin(async move {
                    let reply = message::ActiveModel {
                        id: Set(MessageId::generate().to_string()),
                        tenant_id: Set(tenant.to_string()),
                        conversation_id: Set(to.conversation_id.to_string()),
                        role: Set("assistant".to_owned()),
                        text: Set(text),
                        status: Set(MessageStatus::Done.as_str().to_owned()),
                        error: Set(None),
                        reply_id: Set(None),
                        idempotency_key: Set(None),
                        created_at: Set(now),
                        updated_at: Set(now),
                    }
                    .insert(txn)
                    .await?;
                    let answered = message::Entity::update_many()
                        .col_expr(
                            message::Column::Status,
                            Expr::value(MessageStatus::Done.as_str()),
                        )
                        .col_expr(
                            message::Column::ReplyId,
                            Expr::value(Some(reply.id.clone())),
                        )
                        .col_expr(message::Column::UpdatedAt, Expr::value(now))
                        .filter(message::Column::Id.eq(to.id.as_str()))
                        .filter(message::Column::TenantId.eq(tenant.as_str()))
                        .filter(message::Column::Status.eq(MessageStatus::Processing.as_str()))
                        .exec(txn)
                        .await?
                        .rows_affected;
                    if answered == 0 {
                        // Failed meanwhile by another holder: the reply is
                        // dropped (the transaction rolls back).
                        return Err(Error::Conflict(
                            "the message is no longer being answered".into(),
                        ));
                    }
                    let event = serde_json::json!({"message_id": to.id, "reply_id": reply.id, "text": reply.text});
                    append_event_in(txn, &tenant, &to.conversation_id, "reply", &event).await?;
                    // Its idle timeout counts from here.
                    super::entities::sandbox::Entity::update_many()
                        .col_expr(super::entities::sandbox::Column::LastUsedAt, Expr::value(now))
                        .filter(super::entities::sandbox::Column::Id.eq(sandbox.as_str()))
                        .filter(super::entities::sandbox::Column::TenantId.eq(tenant.as_str()))
                        .exec(txn)
                        .await?;
                    Ok(reply)
                })
            })
            .await?;
        Ok(row.try_into()?)
    }

    /// Appends an event to a conversation; its number.
    pub async fn append_event(
        &self,
        conversation: &ConversationId,
        kind: &str,
        data: &serde_json::Value,
    ) -> Result<i64> {
        let (tenant, conversation) = (self.tenant_id().clone(), conversation.clone());
        let (kind, data) = (kind.to_owned(), data.clone());
        Ok(self
            .db()
            .transaction::<_, i64, Error>(|txn| {
                Box::pin(
                    async move { append_event_in(txn, &tenant, &conversation, &kind, &data).await },
                )
            })
            .await?)
    }

    /// A conversation's events after number `after`, at most `limit`.
    pub async fn events_after(
        &self,
        conversation: &ConversationId,
        after: i64,
        limit: u64,
    ) -> Result<Vec<ConversationEvent>> {
        let rows = conversation_event::Entity::find()
            .filter(conversation_event::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(conversation_event::Column::ConversationId.eq(conversation.as_str()))
            .filter(conversation_event::Column::Seq.gt(after))
            .order_by_asc(conversation_event::Column::Seq)
            .limit(limit)
            .all(self.db())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| ConversationEvent {
                seq: r.seq,
                kind: r.kind,
                data: serde_json::from_str(&r.data).unwrap_or(serde_json::Value::Null),
                created_at: r.created_at,
            })
            .collect())
    }
}

/// Appends an event within a transaction: its number comes from the
/// conversation's counter, whose row the increment locks until the
/// transaction ends, so concurrent writers take turns (on PostgreSQL as on
/// SQLite).
async fn append_event_in(
    txn: &impl sea_orm::ConnectionTrait,
    tenant: &TenantId,
    conversation: &ConversationId,
    kind: &str,
    data: &serde_json::Value,
) -> Result<i64> {
    let bumped = conversation::Entity::update_many()
        .col_expr(
            conversation::Column::Events,
            Expr::col(conversation::Column::Events).add(1),
        )
        .filter(conversation::Column::Id.eq(conversation.as_str()))
        .filter(conversation::Column::TenantId.eq(tenant.as_str()))
        .exec(txn)
        .await?
        .rows_affected;
    if bumped == 0 {
        return Err(Error::NotFound);
    }
    let seq: i64 = conversation::Entity::find_by_id(conversation.as_str())
        .select_only()
        .column(conversation::Column::Events)
        .into_tuple()
        .one(txn)
        .await?
        .ok_or(Error::NotFound)?;
    conversation_event::Entity::insert(conversation_event::ActiveModel {
        conversation_id: Set(conversation.to_string()),
        seq: Set(seq),
        tenant_id: Set(tenant.to_string()),
        kind: Set(kind.to_owned()),
        data: Set(data.to_string()),
        created_at: Set(Utc::now()),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(seq)
}

/// Conversations with a message waiting and nobody holding them, across
/// tenants (for the sweeper): `(tenant, conversation)`.
pub async fn waiting_conversations(
    db: &DatabaseConnection,
) -> Result<Vec<(TenantId, ConversationId)>> {
    let now = Utc::now();
    let waiting: Vec<String> = message::Entity::find()
        .select_only()
        .column(message::Column::ConversationId)
        .distinct()
        .filter(message::Column::Status.is_in([
            MessageStatus::Queued.as_str(),
            MessageStatus::Processing.as_str(),
        ]))
        .limit(1000)
        .into_tuple::<String>()
        .all(db)
        .await?;
    if waiting.is_empty() {
        return Ok(Vec::new());
    }
    let rows = conversation::Entity::find()
        .filter(conversation::Column::Id.is_in(waiting))
        .filter(
            Condition::any()
                .add(conversation::Column::BusyUntil.is_null())
                .add(conversation::Column::BusyUntil.lt(now)),
        )
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            Ok((
                TenantId::parse(&r.tenant_id)?,
                ConversationId::parse(&r.id)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?)
}

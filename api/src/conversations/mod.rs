//! Conversations with agents, the control plane's side: messages are
//! taken one at a time per conversation, in order, each answered by one
//! turn of the agent's tool loop in its warm sandbox (`turn`); every step
//! is recorded as an event of the conversation, which streams read.
//!
//! A conversation is held by one processing task at a time, across
//! replicas, through a hold with a deadline in its row
//! (`conversations.busy_until`); a task whose replica dies lets the hold
//! run out, and the sweeper (every replica's) picks the conversation up
//! again. A message that was being answered when that happened is failed
//! (`interrupted`), never answered twice.

mod openclaw;
mod turn;

use std::collections::HashSet;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use actix_web::web;
use chrono::Utc;

use tokio::sync::watch;

use crate::db::{Take, TenantScope};
use crate::error::Error;
use crate::ids::{ConversationId, TenantId};
use crate::state::AppState;

/// How often every replica looks for conversations nobody processes.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// A conversation's hold beyond its agent's message timeout (the sandbox's
/// start, the memory load).
const HOLD_MARGIN: Duration = Duration::from_secs(120);
/// How often a hold is renewed while a message is answered.
const RENEW_EVERY: Duration = Duration::from_secs(30);

/// This replica's side of conversations: what it processes, and a signal
/// for streams when it records an event.
pub struct Conversations {
    driving: Mutex<HashSet<ConversationId>>,
    events: watch::Sender<u64>,
}

impl Default for Conversations {
    fn default() -> Self {
        Self::new()
    }
}

impl Conversations {
    pub fn new() -> Self {
        Conversations {
            driving: Mutex::default(),
            events: watch::channel(0).0,
        }
    }

    /// Changes whenever this replica records an event (streams re-read
    /// then, and every second anyway for other replicas' events).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }

    /// Wakes the streams and waiters: an event was recorded here.
    pub fn notify(&self) {
        self.events.send_modify(|n| *n += 1);
    }

    /// Records an event of a conversation and wakes the streams.
    pub async fn record(
        &self,
        scope: &TenantScope<'_>,
        conversation: &ConversationId,
        kind: &str,
        data: serde_json::Value,
    ) -> Result<i64, Error> {
        let seq = scope.append_event(conversation, kind, &data).await?;
        self.events.send_modify(|n| *n += 1);
        Ok(seq)
    }
}

/// Starts processing a conversation's waiting messages here, unless this
/// replica already does (another replica's hold is respected by the claim).
pub fn kick(state: &web::Data<AppState>, tenant: TenantId, conversation: ConversationId) {
    {
        let mut driving = state
            .conversations
            .driving
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !driving.insert(conversation.clone()) {
            return;
        }
    }
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = drive(&state, &tenant, &conversation).await {
            tracing::warn!(conversation = %conversation, error = ?e, "conversation processing stopped");
        }
        state
            .conversations
            .driving
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&conversation);
    });
}

/// Answers the conversation's messages in order while it holds it.
async fn drive(
    state: &web::Data<AppState>,
    tenant: &TenantId,
    conversation: &ConversationId,
) -> Result<(), Error> {
    let scope = TenantScope::new(&state.db, tenant);
    // This task's name on the hold: renewals, releases and answers are
    // its own only while it holds the conversation.
    let holder = uuid::Uuid::now_v7().simple().to_string();
    loop {
        let record = scope.conversation(conversation).await?;
        let agent = scope.agent(&record.agent_id).await;
        let hold = HOLD_MARGIN
            + Duration::from_secs(
                agent
                    .as_ref()
                    .map_or(0, |a| u64::from(a.settings.message_timeout_s)),
            );
        let events = &state.conversations;
        let mut renew = false;
        loop {
            // The hold is taken, then renewed for each further message.
            let until = Utc::now() + chrono::Duration::from_std(hold).unwrap_or_default();
            let message = match scope
                .take_message(conversation, &holder, until, renew)
                .await?
            {
                Take::Busy => return Ok(()),
                Take::Empty => break,
                Take::Message(message, false) => {
                    renew = true;
                    // Its holder went away mid-answer: not answered twice.
                    let detail = "interrupted: the server answering it stopped; send it again";
                    fail(&scope, events, &message, detail).await?;
                    continue;
                }
                Take::Message(message, true) => message,
            };
            renew = true;
            // The hold is renewed while the message is answered (a sandbox
            // to start, a retry): it runs out only if this replica stops.
            let renewer = {
                let (db, tenant, conversation, holder) = (
                    state.db.clone(),
                    tenant.clone(),
                    conversation.clone(),
                    holder.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(RENEW_EVERY).await;
                        let until =
                            Utc::now() + chrono::Duration::from_std(hold).unwrap_or_default();
                        let scope = TenantScope::new(&db, &tenant);
                        if !matches!(
                            scope.renew_hold(&conversation, &holder, until).await,
                            Ok(true)
                        ) {
                            tracing::warn!(conversation = %conversation, "conversation hold lost while answering");
                        }
                    }
                })
            };
            let outcome = match &agent {
                Ok(agent) => turn::answer(state, &scope, agent, &message).await,
                Err(_) => Err("the agent was deleted".to_owned()),
            };
            renewer.abort();
            match outcome {
                Ok((text, sandbox)) => match scope.record_reply(&message, text, &sandbox).await {
                    Ok(_) => events.notify(),
                    Err(Error::Conflict(_)) => {
                        tracing::warn!(conversation = %conversation, message = %message.id, "reply dropped: the message was failed meanwhile");
                    }
                    Err(e) => return Err(e),
                },
                Err(detail) => {
                    tracing::info!(conversation = %conversation, message = %message.id, detail, "message not answered");
                    fail(&scope, events, &message, &detail).await?;
                }
            }
        }
        scope.release_conversation(conversation, &holder).await?;
        // A message posted while the hold was let go is taken now.
        if scope.next_message(conversation).await?.is_none() {
            return Ok(());
        }
    }
}

/// Records a message as failed, with its `error` event.
async fn fail(
    scope: &TenantScope<'_>,
    events: &Conversations,
    message: &crate::db::Message,
    detail: &str,
) -> Result<(), Error> {
    if scope.fail_message(message, detail).await? {
        events.notify();
    }
    Ok(())
}

/// Picks up, every [`SWEEP_EVERY`], conversations with waiting messages
/// that nobody holds (their replica stopped, or a kick was lost), until
/// the task is aborted.
pub async fn sweep(state: web::Data<AppState>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        match crate::db::waiting_conversations(&state.db).await {
            Ok(waiting) => {
                for (tenant, conversation) in waiting {
                    kick(&state, tenant, conversation);
                }
            }
            Err(e) => tracing::warn!(error = ?e, "cannot list waiting conversations"),
        }
    }
}

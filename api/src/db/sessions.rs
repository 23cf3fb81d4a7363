//! Pending logins and browser sessions. Only hashes of their secrets are
//! stored: the `state` of a login and its browser binding, the token of a
//! session.

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, TransactionTrait,
};

use super::TenantScope;
use super::entities::{access_policy, login_attempt, membership, session, user};
use super::platform::insert_audit;
pub use super::sign_in::{Account, SignIn, SignedIn, sign_in};
use crate::access::Role;
use crate::access_policy::AccessPolicy;
use crate::audit::AuditEvent;
use crate::error::{Error, Result};
use crate::ids::{SessionId, TenantId, UserId};

/// How long a login may take between `/auth/login` and the callback.
pub const LOGIN_TTL: Duration = Duration::minutes(10);

/// A login waiting for its callback.
pub struct LoginAttempt {
    /// SHA-256 (hex) of the `state` sent to the provider.
    pub state_hash: String,
    /// SHA-256 (hex) of the browser binding cookie.
    pub browser_hash: String,
    /// The PKCE verifier.
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// When it started.
    pub created_at: DateTime<Utc>,
    /// The provider it went to (its configured name).
    pub provider: String,
}

/// Records a login attempt (and forgets those that ran out of time).
pub async fn save_login_attempt(db: &DatabaseConnection, attempt: &LoginAttempt) -> Result<()> {
    login_attempt::Entity::delete_many()
        .filter(login_attempt::Column::CreatedAt.lt(Utc::now() - LOGIN_TTL))
        .exec(db)
        .await?;
    // Sessions over (expired or revoked) a day ago are of no more use.
    session::Entity::delete_many()
        .filter(
            sea_orm::Condition::any()
                .add(session::Column::ExpiresAt.lt(Utc::now() - Duration::days(1)))
                .add(session::Column::RevokedAt.lt(Utc::now() - Duration::days(1))),
        )
        .exec(db)
        .await?;
    login_attempt::ActiveModel {
        state_hash: Set(attempt.state_hash.clone()),
        browser_hash: Set(attempt.browser_hash.clone()),
        pkce_verifier: Set(attempt.verifier.clone()),
        nonce: Set(attempt.nonce.clone()),
        created_at: Set(attempt.created_at),
        provider: Set(attempt.provider.clone()),
    }
    .insert(db)
    .await?;
    Ok(())
}

/// Takes the attempt with this `state` hash, once: a second callback with
/// the same `state` finds nothing. `None` also for one that timed out.
pub async fn take_login_attempt(
    db: &DatabaseConnection,
    state_hash: &str,
) -> Result<Option<LoginAttempt>> {
    let Some(row) = login_attempt::Entity::find_by_id(state_hash)
        .one(db)
        .await?
    else {
        return Ok(None);
    };
    let deleted = login_attempt::Entity::delete_by_id(state_hash)
        .exec(db)
        .await?;
    // Two callbacks racing: only the one that deleted it goes on.
    if deleted.rows_affected != 1 || row.created_at < Utc::now() - LOGIN_TTL {
        return Ok(None);
    }
    Ok(Some(LoginAttempt {
        state_hash: row.state_hash,
        browser_hash: row.browser_hash,
        verifier: row.pkce_verifier,
        nonce: row.nonce,
        created_at: row.created_at,
        provider: row.provider,
    }))
}

/// A session as stored, with its person's current role in its tenant
/// (`None` once they are no longer a member) and email.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// Its id.
    pub id: SessionId,
    /// The person.
    pub user: UserId,
    /// Their email address.
    pub email: String,
    /// The tenant.
    pub tenant: TenantId,
    /// Their role there now.
    pub role: Option<Role>,
    /// Login time.
    pub created_at: DateTime<Utc>,
    /// Last request.
    pub last_seen_at: DateTime<Utc>,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Where the login came from.
    pub client_ip: Option<String>,
    /// How the person authenticated (the ID token's `amr`).
    pub amr: Vec<String>,
    /// Their groups at login.
    pub groups: Vec<String>,
    /// The identity provider they logged in with (its configured name).
    pub provider: String,
}

impl SessionRecord {
    /// What the access policy looks at.
    pub fn facts(&self) -> crate::access_policy::SessionFacts {
        crate::access_policy::SessionFacts {
            email: self.email.clone(),
            amr: self.amr.clone(),
            groups: self.groups.clone(),
            provider: self.provider.clone(),
            created_at: self.created_at,
            last_seen_at: self.last_seen_at,
        }
    }
}

/// What a new session is made of.
pub struct NewSession<'a> {
    /// SHA-256 (hex) of its token.
    pub token_hash: &'a str,
    /// Who, in which tenant.
    pub signed_in: &'a SignedIn,
    /// When it ends.
    pub expires_at: DateTime<Utc>,
    /// Where the login came from.
    pub client_ip: Option<String>,
    /// How the person authenticated (`amr`; at most 20 kept).
    pub amr: &'a [String],
    /// Their groups (at most 100 kept).
    pub groups: &'a [String],
    /// The identity provider's configured name.
    pub provider: &'a str,
}

/// A new session.
pub async fn create_session(db: &DatabaseConnection, new: NewSession<'_>) -> Result<SessionId> {
    let NewSession {
        token_hash,
        signed_in,
        expires_at,
        client_ip,
        amr,
        groups,
        provider,
    } = new;
    let id = SessionId::generate();
    let now = Utc::now();
    session::ActiveModel {
        id: Set(id.to_string()),
        token_hash: Set(token_hash.to_owned()),
        user_id: Set(signed_in.user.to_string()),
        tenant_id: Set(signed_in.tenant.to_string()),
        created_at: Set(now),
        last_seen_at: Set(now),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        client_ip: Set(client_ip),
        amr: Set(serde_json::to_string(&amr[..amr.len().min(20)]).map_err(anyhow::Error::from)?),
        groups: Set(
            serde_json::to_string(&groups[..groups.len().min(100)]).map_err(anyhow::Error::from)?
        ),
        provider: Set(provider.to_owned()),
    }
    .insert(db)
    .await?;
    Ok(id)
}

async fn record(db: &impl sea_orm::ConnectionTrait, row: session::Model) -> Result<SessionRecord> {
    let role = membership::Entity::find()
        .filter(membership::Column::TenantId.eq(row.tenant_id.as_str()))
        .filter(membership::Column::UserId.eq(row.user_id.as_str()))
        .one(db)
        .await?
        .and_then(|m| m.role.parse().ok());
    let email = user::Entity::find_by_id(row.user_id.as_str())
        .one(db)
        .await?
        .map(|u| u.email)
        .unwrap_or_default();
    Ok(SessionRecord {
        id: SessionId::parse(&row.id).map_err(anyhow::Error::from)?,
        user: UserId::parse(&row.user_id).map_err(anyhow::Error::from)?,
        email,
        tenant: TenantId::parse(&row.tenant_id).map_err(anyhow::Error::from)?,
        role,
        created_at: row.created_at,
        last_seen_at: row.last_seen_at,
        expires_at: row.expires_at,
        revoked_at: row.revoked_at,
        client_ip: row.client_ip,
        amr: serde_json::from_str(&row.amr).unwrap_or_default(),
        groups: serde_json::from_str(&row.groups).unwrap_or_default(),
        provider: row.provider,
    })
}

/// The session whose token has this hash, whatever its state.
pub async fn session_by_token(
    db: &DatabaseConnection,
    token_hash: &str,
) -> Result<Option<SessionRecord>> {
    let row = session::Entity::find()
        .filter(session::Column::TokenHash.eq(token_hash))
        .one(db)
        .await?;
    match row {
        Some(row) => Ok(Some(record(db, row).await?)),
        None => Ok(None),
    }
}

/// Notes an admitted request of the session (at most once a minute).
pub async fn touch_session(
    db: &DatabaseConnection,
    id: &SessionId,
    last_seen_at: DateTime<Utc>,
) -> Result<()> {
    let now = Utc::now();
    if now - last_seen_at < Duration::minutes(1) {
        return Ok(());
    }
    session::ActiveModel {
        id: Set(id.to_string()),
        last_seen_at: Set(now),
        ..Default::default()
    }
    .update(db)
    .await?;
    Ok(())
}

/// Revokes a session by id (the access policy ended it).
pub async fn revoke_session_by_id(db: &DatabaseConnection, id: &SessionId) -> Result<()> {
    session::Entity::update_many()
        .col_expr(
            session::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(session::Column::Id.eq(id.as_str()))
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(())
}

/// Revokes a session by its token's hash (logout); whether one was live.
pub async fn revoke_session_by_token(db: &DatabaseConnection, token_hash: &str) -> Result<bool> {
    let result = session::Entity::update_many()
        .col_expr(
            session::Column::RevokedAt,
            sea_orm::sea_query::Expr::value(Utc::now()),
        )
        .filter(session::Column::TokenHash.eq(token_hash))
        .filter(session::Column::RevokedAt.is_null())
        .exec(db)
        .await?;
    Ok(result.rows_affected > 0)
}

/// A tenant's access policy (the empty one, allowing everything, if it
/// never set one), on any connection (a login reads it inside its
/// transaction).
pub(super) async fn access_policy_of<C: sea_orm::ConnectionTrait>(
    db: &C,
    tenant: &str,
) -> Result<AccessPolicy> {
    match access_policy::Entity::find_by_id(tenant).one(db).await? {
        Some(row) => Ok(serde_json::from_str(&row.policy)
            .map_err(|e| anyhow::anyhow!("stored access policy is unreadable: {e}"))?),
        None => Ok(AccessPolicy::default()),
    }
}

impl TenantScope<'_> {
    /// The tenant's access policy (the empty one, allowing everything, if
    /// it never set one).
    pub async fn access_policy(&self) -> Result<AccessPolicy> {
        access_policy_of(self.db(), self.tenant_id().as_str()).await
    }

    /// Replaces the tenant's access policy (validated by the caller).
    pub async fn set_access_policy(&self, policy: &AccessPolicy, audit: AuditEvent) -> Result<()> {
        use sea_orm::sea_query::OnConflict;
        let tenant = self.tenant_id().clone();
        let text = serde_json::to_string(policy).map_err(anyhow::Error::from)?;
        self.db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    access_policy::Entity::insert(access_policy::ActiveModel {
                        tenant_id: Set(tenant.to_string()),
                        policy: Set(text),
                        updated_at: Set(Utc::now()),
                    })
                    .on_conflict(
                        OnConflict::column(access_policy::Column::TenantId)
                            .update_columns([
                                access_policy::Column::Policy,
                                access_policy::Column::UpdatedAt,
                            ])
                            .to_owned(),
                    )
                    .exec_without_returning(txn)
                    .await?;
                    insert_audit(txn, audit.in_tenant(&tenant)).await?;
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }

    /// One of the tenant's sessions, whatever its state.
    pub async fn session(&self, id: &SessionId) -> Result<SessionRecord> {
        let row = session::Entity::find_by_id(id.as_str())
            .filter(session::Column::TenantId.eq(self.tenant_id().as_str()))
            .one(self.db())
            .await?
            .ok_or(Error::NotFound)?;
        record(self.db(), row).await
    }

    /// The tenant's live sessions (of one person if `user` is given),
    /// newest first, at most 500.
    pub async fn sessions(&self, user: Option<&UserId>) -> Result<Vec<SessionRecord>> {
        let mut query = session::Entity::find()
            .filter(session::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(session::Column::RevokedAt.is_null())
            .filter(session::Column::ExpiresAt.gt(Utc::now()));
        if let Some(user) = user {
            query = query.filter(session::Column::UserId.eq(user.as_str()));
        }
        let rows = query
            .order_by_desc(session::Column::CreatedAt)
            .limit(500)
            .all(self.db())
            .await?;
        let mut sessions = Vec::with_capacity(rows.len());
        for row in rows {
            sessions.push(record(self.db(), row).await?);
        }
        Ok(sessions)
    }

    /// Revokes every live session of the tenant (of one person if `user`
    /// is given): "log out everywhere". How many.
    pub async fn revoke_sessions(&self, user: Option<&UserId>, audit: AuditEvent) -> Result<u64> {
        let tenant = self.tenant_id().clone();
        let user = user.cloned();
        let count = self
            .db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    let mut update = session::Entity::update_many()
                        .col_expr(
                            session::Column::RevokedAt,
                            sea_orm::sea_query::Expr::value(Utc::now()),
                        )
                        .filter(session::Column::TenantId.eq(tenant.as_str()))
                        .filter(session::Column::RevokedAt.is_null());
                    if let Some(user) = &user {
                        update = update.filter(session::Column::UserId.eq(user.as_str()));
                    }
                    let count = update.exec(txn).await?.rows_affected;
                    insert_audit(
                        txn,
                        audit
                            .in_tenant(&tenant)
                            .reason(format!("{count} sessions ended")),
                    )
                    .await?;
                    Ok(count)
                })
            })
            .await?;
        Ok(count)
    }

    /// Revokes one of the tenant's sessions (of one person if `user` is
    /// given); 404 if there is no such live session.
    pub async fn revoke_session(
        &self,
        id: &SessionId,
        user: Option<&UserId>,
        audit: AuditEvent,
    ) -> Result<()> {
        let tenant = self.tenant_id().clone();
        let (id, user) = (id.clone(), user.cloned());
        self.db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    let mut update = session::Entity::update_many()
                        .col_expr(
                            session::Column::RevokedAt,
                            sea_orm::sea_query::Expr::value(Utc::now()),
                        )
                        .filter(session::Column::Id.eq(id.as_str()))
                        .filter(session::Column::TenantId.eq(tenant.as_str()))
                        .filter(session::Column::RevokedAt.is_null());
                    if let Some(user) = &user {
                        update = update.filter(session::Column::UserId.eq(user.as_str()));
                    }
                    if update.exec(txn).await?.rows_affected == 0 {
                        return Err(Error::NotFound);
                    }
                    insert_audit(txn, audit.in_tenant(&tenant).target(id.to_string())).await?;
                    Ok(())
                })
            })
            .await?;
        Ok(())
    }
}

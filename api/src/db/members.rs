//! A tenant's members (people and their roles) and its invitations: an
//! invitation names an address and a role; the next login of that address
//! makes them a member (`accept_invitations`, called by `sign_in::sign_in`).

use chrono::{DateTime, Duration, Utc};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};

use super::TenantScope;
use super::entities::{api_key, invitation, membership, session, user};
use super::platform::insert_audit;
use crate::access::Role;
use crate::audit::AuditEvent;
use crate::email::EmailAddress;
use crate::error::{Error, Result};
use crate::ids::{InvitationId, TenantId, UserId};

/// How long an invitation may wait for its login.
pub const INVITATION_TTL: Duration = Duration::days(14);
/// Most pending invitations per tenant.
pub const MAX_INVITATIONS: usize = 500;

/// A member.
#[derive(Debug, Clone)]
pub struct Member {
    /// The person.
    pub user: UserId,
    /// Their address.
    pub email: String,
    /// Their role.
    pub role: Role,
    /// Since when.
    pub since: DateTime<Utc>,
}

/// A pending invitation.
#[derive(Debug, Clone)]
pub struct Invitation {
    /// Its id.
    pub id: InvitationId,
    /// Who is invited.
    pub email: String,
    /// As what.
    pub role: Role,
    /// Who invited (a principal).
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// Until when.
    pub expires_at: DateTime<Utc>,
}

fn invitation(row: invitation::Model) -> Result<Invitation> {
    Ok(Invitation {
        id: InvitationId::parse(&row.id).map_err(anyhow::Error::from)?,
        email: row.email,
        role: row
            .role
            .parse()
            .map_err(|_| anyhow::anyhow!("stored role {:?} is unknown", row.role))?,
        created_by: row.created_by,
        created_at: row.created_at,
        expires_at: row.expires_at,
    })
}

/// Turns these invitations of `email` (those whose tenant's access policy
/// lets this login in, as `sign_in` read them) into memberships of `user`
/// (each with its role; audited there); the tenants joined, in the given
/// order. Other invitations stay pending. Run inside the login's
/// transaction.
pub(super) async fn accept_invitations<C: ConnectionTrait>(
    txn: &C,
    email: &EmailAddress,
    user: &str,
    admitted: &[&invitation::Model],
    audit: &AuditEvent,
) -> Result<Vec<String>> {
    let now = Utc::now();
    let mut joined = Vec::new();
    for invite in admitted {
        // Taken first: one withdrawn since the login read it (or taken by
        // a racing login) undoes the whole login.
        let taken = invitation::Entity::delete_by_id(invite.id.as_str())
            .exec(txn)
            .await?;
        if taken.rows_affected != 1 {
            return Err(Error::Conflict(
                "the invitation was withdrawn during the login; try again".into(),
            ));
        }
        let already = membership::Entity::find_by_id((invite.tenant_id.clone(), user.to_owned()))
            .one(txn)
            .await?;
        if already.is_none() {
            membership::ActiveModel {
                tenant_id: Set(invite.tenant_id.clone()),
                user_id: Set(user.to_owned()),
                role: Set(invite.role.clone()),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            let tenant = TenantId::parse(&invite.tenant_id).map_err(anyhow::Error::from)?;
            let mut event = audit.clone().in_tenant(&tenant).target(invite.id.clone());
            event.action = "invitation.accept";
            insert_audit(
                txn,
                event.reason(format!("{email} joined as {}", invite.role)),
            )
            .await?;
            joined.push(invite.tenant_id.clone());
        }
    }
    Ok(joined)
}

impl TenantScope<'_> {
    /// The tenant's members, oldest first.
    pub async fn members(&self) -> Result<Vec<Member>> {
        let rows = membership::Entity::find()
            .filter(membership::Column::TenantId.eq(self.tenant_id().as_str()))
            .order_by_asc(membership::Column::CreatedAt)
            .all(self.db())
            .await?;
        let mut members = Vec::with_capacity(rows.len());
        for row in rows {
            let email = user::Entity::find_by_id(row.user_id.as_str())
                .one(self.db())
                .await?
                .map(|u| u.email)
                .unwrap_or_default();
            members.push(Member {
                user: UserId::parse(&row.user_id).map_err(anyhow::Error::from)?,
                email,
                role: row
                    .role
                    .parse()
                    .map_err(|_| anyhow::anyhow!("stored role {:?} is unknown", row.role))?,
                since: row.created_at,
            });
        }
        Ok(members)
    }

    /// Removes a member (not the last owner; not someone of a higher role
    /// than `by`). Their sessions in this tenant stop at their next
    /// request; the API keys they made through their sessions are revoked
    /// and the invitations they made withdrawn. The revoked keys' ids.
    pub async fn remove_member(
        &self,
        user: &UserId,
        by: Role,
        audit: AuditEvent,
    ) -> Result<Vec<String>> {
        let tenant = self.tenant_id().clone();
        let user = user.clone();
        let revoked = self
            .db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    // Serialises removals in the tenant: the last-owner
                    // check below cannot race another removal.
                    super::runs::lock_tenant(txn, &tenant).await?;
                    let row =
                        membership::Entity::find_by_id((tenant.to_string(), user.to_string()))
                            .one(txn)
                            .await?
                            .ok_or(Error::NotFound)?;
                    let role: Role = row
                        .role
                        .parse()
                        .map_err(|_| anyhow::anyhow!("stored role {:?} is unknown", row.role))?;
                    if role > by {
                        return Err(Error::Forbidden(format!("a {by} cannot remove a {role}")));
                    }
                    if role == Role::Owner {
                        let owners = membership::Entity::find()
                            .filter(membership::Column::TenantId.eq(tenant.as_str()))
                            .filter(membership::Column::Role.eq(Role::Owner.as_str()))
                            .all(txn)
                            .await?
                            .len();
                        if owners <= 1 {
                            return Err(Error::Conflict("the last owner cannot be removed".into()));
                        }
                    }
                    membership::Entity::delete_by_id((tenant.to_string(), user.to_string()))
                        .exec(txn)
                        .await?;
                    // What they made through their sessions goes with them.
                    let principals: Vec<String> = session::Entity::find()
                        .filter(session::Column::TenantId.eq(tenant.as_str()))
                        .filter(session::Column::UserId.eq(user.as_str()))
                        .all(txn)
                        .await?
                        .into_iter()
                        .map(|s| format!("session:{}", s.id))
                        .collect();
                    let mut revoked = Vec::new();
                    if !principals.is_empty() {
                        let keys = api_key::Entity::find()
                            .filter(api_key::Column::TenantId.eq(tenant.as_str()))
                            .filter(api_key::Column::CreatedBy.is_in(principals.clone()))
                            .filter(api_key::Column::RevokedAt.is_null())
                            .all(txn)
                            .await?;
                        for key in keys {
                            api_key::ActiveModel {
                                id: Set(key.id.clone()),
                                revoked_at: Set(Some(Utc::now())),
                                ..Default::default()
                            }
                            .update(txn)
                            .await?;
                            revoked.push(key.id);
                        }
                        invitation::Entity::delete_many()
                            .filter(invitation::Column::TenantId.eq(tenant.as_str()))
                            .filter(invitation::Column::CreatedBy.is_in(principals))
                            .exec(txn)
                            .await?;
                    }
                    let reason = format!("{} of their API keys revoked", revoked.len());
                    insert_audit(
                        txn,
                        audit
                            .in_tenant(&tenant)
                            .target(user.to_string())
                            .reason(reason),
                    )
                    .await?;
                    Ok(revoked)
                })
            })
            .await?;
        Ok(revoked)
    }

    /// Invites `email` as `role` (replacing a pending invitation of the
    /// same address, unless it is for a role above `by`).
    pub async fn invite(
        &self,
        email: &EmailAddress,
        role: Role,
        by: Role,
        created_by: &str,
        audit: AuditEvent,
    ) -> Result<Invitation> {
        let tenant = self.tenant_id().clone();
        let (email, created_by) = (email.clone(), created_by.to_owned());
        let row = self
            .db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    let now = Utc::now();
                    // Expired ones are of no use (and would count).
                    invitation::Entity::delete_many()
                        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
                        .filter(invitation::Column::ExpiresAt.lte(now))
                        .exec(txn)
                        .await?;
                    if let Some(existing) = invitation::Entity::find()
                        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
                        .filter(invitation::Column::Email.eq(email.as_str()))
                        .one(txn)
                        .await?
                    {
                        if existing.role.parse::<Role>().is_ok_and(|r| r > by) {
                            return Err(Error::Forbidden(format!(
                                "a pending invitation of {email} is for a role above a {by}'s"
                            )));
                        }
                        invitation::Entity::delete_by_id(existing.id)
                            .exec(txn)
                            .await?;
                    }
                    let pending = invitation::Entity::find()
                        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
                        .all(txn)
                        .await?
                        .len();
                    if pending >= MAX_INVITATIONS {
                        return Err(Error::LimitReached(format!(
                            "a tenant has at most {MAX_INVITATIONS} pending invitations"
                        )));
                    }
                    let row = invitation::ActiveModel {
                        id: Set(InvitationId::generate().to_string()),
                        tenant_id: Set(tenant.to_string()),
                        email: Set(email.as_str().to_owned()),
                        role: Set(role.as_str().to_owned()),
                        created_by: Set(created_by.chars().take(100).collect()),
                        created_at: Set(now),
                        expires_at: Set(now + INVITATION_TTL),
                    }
                    .insert(txn)
                    .await?;
                    insert_audit(
                        txn,
                        audit
                            .in_tenant(&tenant)
                            .target(row.id.clone())
                            .reason(format!("{email} as {role}")),
                    )
                    .await?;
                    Ok(row)
                })
            })
            .await?;
        invitation(row)
    }

    /// The tenant's pending invitations, newest first.
    pub async fn invitations(&self) -> Result<Vec<Invitation>> {
        invitation::Entity::find()
            .filter(invitation::Column::TenantId.eq(self.tenant_id().as_str()))
            .filter(invitation::Column::ExpiresAt.gt(Utc::now()))
            .order_by_desc(invitation::Column::CreatedAt)
            .all(self.db())
            .await?
            .into_iter()
            .map(invitation)
            .collect()
    }

    /// Withdraws a pending invitation (not one for a role above `by`).
    pub async fn withdraw_invitation(
        &self,
        id: &InvitationId,
        by: Role,
        audit: AuditEvent,
    ) -> Result<()> {
        let tenant = self.tenant_id().clone();
        let id = id.clone();
        self.db()
            .transaction::<_, _, Error>(|txn| {
                Box::pin(async move {
                    let existing = invitation::Entity::find_by_id(id.as_str())
                        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
                        .one(txn)
                        .await?
                        .ok_or(Error::NotFound)?;
                    if existing.role.parse::<Role>().is_ok_and(|r| r > by) {
                        return Err(Error::Forbidden(format!(
                            "a {by} cannot withdraw an invitation for a {}",
                            existing.role
                        )));
                    }
                    let deleted = invitation::Entity::delete_many()
                        .filter(invitation::Column::Id.eq(id.as_str()))
                        .filter(invitation::Column::TenantId.eq(tenant.as_str()))
                        .exec(txn)
                        .await?;
                    if deleted.rows_affected == 0 {
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

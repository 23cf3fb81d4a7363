//! A login's decision, in one transaction: who a provider account is,
//! which tenant they land in, and whether that tenant's access policy
//! lets them in — all decided before anything is written, so a login the
//! policy refuses links no account, creates no person and accepts no
//! invitation.

use std::net::IpAddr;

use chrono::Utc;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set, TransactionTrait,
};

use super::entities::{identity, invitation, membership, user};
use super::platform::{insert_audit, insert_owner, insert_tenant, insert_user};
use super::sessions::access_policy_of;
use crate::access::Role;
use crate::access_policy::SessionFacts;
use crate::audit::AuditEvent;
use crate::email::EmailAddress;
use crate::error::{Error, Result};
use crate::ids::{TenantId, UserId};

/// Who logged in, and where.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The person.
    pub user: UserId,
    /// The tenant they land in (their oldest membership whose policy lets
    /// them in, or a new one).
    pub tenant: TenantId,
    /// Their role there.
    pub role: Role,
    /// Whether this login created the tenant.
    pub signed_up: bool,
}

/// What a login found.
#[derive(Debug, Clone)]
pub enum SignIn {
    /// In, to this tenant.
    In(SignedIn),
    /// Not a member of any tenant, not invited, and sign-up is closed.
    NotMember,
    /// The address belongs to a person who logs in with another account
    /// of this provider (or, for a provider that may not link existing
    /// people, of any other).
    OtherAccount,
    /// Every tenant they belong to refuses this login by its access
    /// policy (or, with sign-up closed, every tenant that invited them):
    /// the first of them, and why. Nothing was written.
    Refused {
        /// The person, if this provider account is already theirs.
        user: Option<UserId>,
        /// The tenant whose refusal is reported.
        tenant: TenantId,
        /// Whether they are a member of it (else only invited).
        member: bool,
        /// Its policy's words.
        reason: String,
    },
}

/// A provider account as the login presents it.
pub struct Account {
    /// The provider's issuer.
    pub issuer: String,
    /// The provider's subject.
    pub subject: String,
    /// The (verified) address.
    pub email: EmailAddress,
    /// What the access policies judge (address, `amr`, groups).
    pub facts: SessionFacts,
    /// Where the login comes from.
    pub client_ip: Option<IpAddr>,
    /// Whether this provider's first login of an address may link to a
    /// person who already logs in with another provider.
    pub may_link_existing: bool,
}

/// Finds the person behind a provider account, and the tenant they land
/// in. The first login of an account links it to the person with its
/// (verified) email address, unless that person already logs in with
/// another account of the same provider; after that the account alone
/// decides who it is (an address changed at the provider does not move it
/// to someone else).
///
/// A provider that may not link existing people (`may_link_existing`
/// false) cannot take over someone who already logs in elsewhere by their
/// address.
///
/// Each tenant the person belongs to or is invited to judges the login by
/// its access policy: invitations of tenants that refuse stay pending,
/// and the person lands in their oldest membership that admits them. With
/// `signup` open, someone who joins no tenant and whom no membership
/// refuses gets a new tenant, named after the address, with them as its
/// owner (`audit` is recorded then, and for each invitation accepted).
pub async fn sign_in(
    db: &sea_orm::DatabaseConnection,
    account: Account,
    signup: bool,
    audit: AuditEvent,
) -> Result<SignIn> {
    db.transaction::<_, _, Error>(|txn| {
        Box::pin(async move {
            let Account {
                issuer,
                subject,
                email,
                facts,
                client_ip,
                may_link_existing,
            } = account;
            let now = Utc::now();
            let linked = identity::Entity::find_by_id((issuer.clone(), subject.clone()))
                .one(txn)
                .await?;
            let person = match &linked {
                Some(link) => {
                    user::Entity::find_by_id(link.user_id.as_str())
                        .one(txn)
                        .await?
                }
                None => {
                    user::Entity::find()
                        .filter(user::Column::Email.eq(email.as_str()))
                        .one(txn)
                        .await?
                }
            };
            if linked.is_none()
                && let Some(person) = &person
            {
                let other = identity::Entity::find()
                    .filter(identity::Column::Issuer.eq(issuer.as_str()))
                    .filter(identity::Column::UserId.eq(person.id.as_str()))
                    .one(txn)
                    .await?;
                if other.is_some() {
                    return Ok(SignIn::OtherAccount);
                }
                if !may_link_existing {
                    let elsewhere = identity::Entity::find()
                        .filter(identity::Column::UserId.eq(person.id.as_str()))
                        .one(txn)
                        .await?;
                    if elsewhere.is_some() {
                        return Ok(SignIn::OtherAccount);
                    }
                }
            }
            // Every tenant that could take this login, oldest membership
            // first, then invitations; each judged by its policy.
            let memberships = match &person {
                Some(person) => {
                    membership::Entity::find()
                        .filter(membership::Column::UserId.eq(person.id.as_str()))
                        .order_by_asc(membership::Column::CreatedAt)
                        .all(txn)
                        .await?
                }
                None => Vec::new(),
            };
            let invitations = invitation::Entity::find()
                .filter(invitation::Column::Email.eq(email.as_str()))
                .filter(invitation::Column::ExpiresAt.gt(now))
                .order_by_asc(invitation::Column::CreatedAt)
                .all(txn)
                .await?;
            // A refusal by a tenant the person belongs to is reported; one
            // by a tenant that only invited them is not allowed to stand
            // in the way of a sign-up (any tenant can invite anyone).
            let mut member_refusal: Option<(String, String)> = None;
            let mut invitation_refusal: Option<(String, String)> = None;
            let mut admitted_member: Option<&membership::Model> = None;
            for member in &memberships {
                let policy = access_policy_of(txn, &member.tenant_id).await?;
                match policy.refusal(&facts, client_ip, now) {
                    None => {
                        admitted_member = Some(member);
                        break;
                    }
                    Some(reason) => {
                        member_refusal.get_or_insert((member.tenant_id.clone(), reason));
                    }
                }
            }
            let mut admitted_invitations = Vec::new();
            let mut joins_by_invitation = false;
            for invite in &invitations {
                let policy = access_policy_of(txn, &invite.tenant_id).await?;
                let already = memberships.iter().any(|m| m.tenant_id == invite.tenant_id);
                match policy.refusal(&facts, client_ip, now) {
                    None => {
                        admitted_invitations.push(invite);
                        joins_by_invitation |= !already;
                    }
                    // Left pending (a member already: their own refusal
                    // above is the one that counts).
                    Some(_) if already => {}
                    Some(reason) => {
                        invitation_refusal.get_or_insert((invite.tenant_id.clone(), reason));
                    }
                }
            }
            let joins_somewhere = admitted_member.is_some() || joins_by_invitation;
            if !joins_somewhere {
                let refusal = match (member_refusal, invitation_refusal) {
                    (Some(refusal), _) => Some((refusal, true)),
                    // With sign-up open, a tenant that invited them and
                    // refuses them does not keep them out: they get their
                    // own, the invitation stays pending.
                    (None, Some(_)) if signup => None,
                    (None, Some(refusal)) => Some((refusal, false)),
                    (None, None) => None,
                };
                if let Some(((tenant, reason), member)) = refusal {
                    return Ok(SignIn::Refused {
                        // Only an account already theirs speaks for the
                        // person; an address match may be an impostor.
                        user: match (&linked, &person) {
                            (Some(_), Some(p)) => {
                                Some(UserId::parse(&p.id).map_err(anyhow::Error::from)?)
                            }
                            _ => None,
                        },
                        tenant: TenantId::parse(&tenant).map_err(anyhow::Error::from)?,
                        member,
                        reason,
                    });
                }
                if !signup {
                    return Ok(SignIn::NotMember);
                }
            }
            // Decided: from here on, writes.
            let landing = admitted_member.map(|m| m.tenant_id.clone());
            let user_id = match person {
                Some(person) => person.id,
                None => insert_user(txn, &email, now).await?,
            };
            if linked.is_none() {
                identity::ActiveModel {
                    issuer: Set(issuer.clone()),
                    subject: Set(subject.clone()),
                    user_id: Set(user_id.clone()),
                    created_at: Set(now),
                }
                .insert(txn)
                .await?;
            }
            let user = UserId::parse(&user_id).map_err(anyhow::Error::from)?;
            let accepted = super::members::accept_invitations(
                txn,
                &email,
                &user_id,
                &admitted_invitations,
                &audit,
            )
            .await?;
            let landing = landing.or_else(|| accepted.first().cloned());
            if landing.is_none() && joins_somewhere {
                // A racing login made the membership it was to join by:
                // undo rather than fall through to a sign-up nobody
                // decided on.
                return Err(Error::Conflict(
                    "the invitation was withdrawn during the login; try again".into(),
                ));
            }
            if let Some(tenant_id) = landing {
                let member = membership::Entity::find_by_id((tenant_id.clone(), user_id.clone()))
                    .one(txn)
                    .await?
                    .ok_or_else(|| anyhow::anyhow!("the membership just decided on is gone"))?;
                return Ok(SignIn::In(SignedIn {
                    user,
                    tenant: TenantId::parse(&tenant_id).map_err(anyhow::Error::from)?,
                    role: member
                        .role
                        .parse()
                        .map_err(|_| anyhow::anyhow!("stored role {:?} is unknown", member.role))?,
                    signed_up: false,
                }));
            }
            let tenant_id = TenantId::generate();
            let name: String = email.as_str().chars().take(100).collect();
            insert_tenant(txn, &tenant_id, &name, now).await?;
            insert_owner(txn, &tenant_id, &user_id, now).await?;
            insert_audit(
                txn,
                audit
                    .in_tenant(&tenant_id)
                    .target(tenant_id.to_string())
                    .reason(format!("signed up as {email}")),
            )
            .await?;
            Ok(SignIn::In(SignedIn {
                user,
                tenant: tenant_id,
                role: Role::Owner,
                signed_up: true,
            }))
        })
    })
    .await
    .map_err(Error::from)
}

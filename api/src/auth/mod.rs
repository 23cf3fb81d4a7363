//! Authentication: turning the `Authorization` header into a verified
//! principal bound to one tenant.
//!
//! [`Authenticator::verify`] hashes the presented key and looks the hash up,
//! first in a small in-memory cache and then in the database. A cached
//! answer is trusted for at most the configured TTL (≤ 1 s), so a key revoked
//! on another replica stops working within that time; a key revoked on this
//! replica is dropped from the cache at once. Expiry is checked on every
//! request from the cached expiry time.

pub mod api_key;
pub mod extract;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use self::api_key::{ApiKeySecret, KeyHash};
use crate::access::{Role, Scopes};
use crate::db::{ApiKey, Tenant, TenantScope, platform};
use crate::error::Result;
use crate::ids::{AgentId, ApiKeyId, RunId, SessionId, TenantId};

/// Most keys kept in the cache; past it, the cache is emptied and refills
/// from the hot keys.
const CACHE_CAPACITY: usize = 10_000;
/// How a session token begins.
pub const SESSION_PREFIX: &str = "cps_";

/// A new session token: the prefix and 32 random bytes (base64url).
pub fn new_session_token() -> anyhow::Result<String> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "{SESSION_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What is stored of a session token (or any login secret): its SHA-256,
/// hex.
pub fn session_token_hash(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `last_used_at` is written at most this often per key and replica.
const TOUCH_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// What a caller presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API key.
    ApiKey(ApiKeyId),
    /// A run token: a run's own credential for the model gateway, valid
    /// while the run is not over.
    Run(RunId),
    /// A browser's login session (its cookie, or its token as a bearer).
    Session(SessionId),
}

impl Credential {
    /// `api_key` or `run_token`.
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::ApiKey(_) => "api_key",
            Credential::Run(_) => "run_token",
            Credential::Session(_) => "session",
        }
    }

    /// The key's or the run's id.
    pub fn id(&self) -> String {
        match self {
            Credential::ApiKey(id) => id.to_string(),
            Credential::Run(id) => id.to_string(),
            Credential::Session(id) => id.to_string(),
        }
    }
}

/// `api_key:key_…` or `run:run_…`: the principal in audit records.
impl std::fmt::Display for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::ApiKey(id) => write!(f, "api_key:{id}"),
            Credential::Run(id) => write!(f, "run:{id}"),
            Credential::Session(id) => write!(f, "session:{id}"),
        }
    }
}

/// What a verified credential may do, as cached.
#[derive(Debug, Clone)]
pub struct KeyPrincipal {
    /// What was presented.
    pub credential: Credential,
    /// The tenant it acts in.
    pub tenant_id: TenantId,
    /// Its role there.
    pub role: Role,
    /// Its scopes.
    pub scopes: Scopes,
    /// For a run token: the agent whose memory its run works on (the only
    /// memory it opens).
    pub agent: Option<AgentId>,
    /// For a session: what the tenant's access policy looks at.
    pub session: Option<crate::access_policy::SessionFacts>,
    expires_at: Option<DateTime<Utc>>,
    revoked: bool,
    /// The tenant as read with the key, so that the hot path needs no
    /// second query; as fresh as the key (at most the cache TTL old).
    tenant: Tenant,
}

impl KeyPrincipal {
    /// The key's tenant, as of the last verification.
    pub fn tenant(&self) -> &Tenant {
        &self.tenant
    }

    /// When the key stops working, if ever.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
}

impl KeyPrincipal {
    fn new(key: &ApiKey, tenant: Tenant) -> Self {
        KeyPrincipal {
            tenant,
            credential: Credential::ApiKey(key.id.clone()),
            tenant_id: key.tenant_id.clone(),
            role: key.role,
            scopes: key.scopes.clone(),
            expires_at: key.expires_at,
            revoked: key.revoked_at.is_some(),
            agent: None,
            session: None,
        }
    }
}

/// The result of checking a presented key.
#[derive(Debug)]
pub enum Verdict {
    /// Usable.
    Valid(Arc<KeyPrincipal>),
    /// Not shaped like a key, or no such key.
    Unknown,
    /// Revoked.
    Revoked(Arc<KeyPrincipal>),
    /// Past its expiry.
    Expired(Arc<KeyPrincipal>),
}

struct Entry {
    principal: Arc<KeyPrincipal>,
    fetched_at: Instant,
}

/// Audit records of refused credentials per subject (client address or
/// key) and minute; beyond, refusals are counted in the log only, so that
/// a flood of bad keys cannot flood the database.
const AUDITED_FAILURES_PER_MINUTE: u32 = 10;

/// Verifies API keys, with a short-lived cache in front of the database.
pub struct Authenticator {
    db: DatabaseConnection,
    ttl: Duration,
    cache: RwLock<HashMap<KeyHash, Entry>>,
    /// Hashes recently found to be nobody's key.
    unknown: RwLock<HashMap<KeyHash, Instant>>,
    /// Refusals audited per subject in the current minute.
    audited: std::sync::Mutex<HashMap<String, (Instant, u32)>>,
    /// Keys revoked on this replica lately: a lookup that raced the
    /// revocation must not put the key back in the cache as valid.
    revoked: std::sync::Mutex<HashMap<ApiKeyId, Instant>>,
}

impl Authenticator {
    /// A verifier whose cached answers live at most `ttl`.
    pub fn new(db: DatabaseConnection, ttl: Duration) -> Self {
        Self {
            db,
            ttl,
            cache: RwLock::new(HashMap::new()),
            unknown: RwLock::new(HashMap::new()),
            audited: std::sync::Mutex::new(HashMap::new()),
            revoked: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Checks a presented key.
    pub async fn verify(&self, presented: &str) -> Result<Verdict> {
        if presented.starts_with("crt_") {
            return self.verify_run_token(presented).await;
        }
        if presented.starts_with(SESSION_PREFIX) {
            return self.verify_session(presented).await;
        }
        let Some(secret) = ApiKeySecret::parse(presented) else {
            return Ok(Verdict::Unknown);
        };
        let hash = secret.hash();
        let known_unknown = self
            .unknown
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .is_some_and(|at| at.elapsed() < self.ttl);
        if known_unknown {
            return Ok(Verdict::Unknown);
        }
        let principal = match self.cached(hash) {
            Some(principal) => principal,
            None => match self.fetch(hash).await? {
                Some(principal) => principal,
                None => {
                    // A key created meanwhile is found once the TTL passes.
                    let mut unknown = self.unknown.write().unwrap_or_else(|e| e.into_inner());
                    if unknown.len() >= CACHE_CAPACITY {
                        unknown.clear();
                    }
                    unknown.insert(hash, Instant::now());
                    return Ok(Verdict::Unknown);
                }
            },
        };
        Ok(if principal.revoked {
            Verdict::Revoked(principal)
        } else if principal.expires_at.is_some_and(|at| at <= Utc::now()) {
            Verdict::Expired(principal)
        } else {
            Verdict::Valid(principal)
        })
    }

    /// Whether a refusal for `subject` should still be written to the audit
    /// log this minute.
    pub fn should_audit_refusal(&self, subject: &str) -> bool {
        let mut audited = self.audited.lock().unwrap_or_else(|e| e.into_inner());
        if audited.len() >= CACHE_CAPACITY {
            audited.retain(|_, (since, _)| since.elapsed() < Duration::from_secs(60));
            if audited.len() >= CACHE_CAPACITY {
                return false;
            }
        }
        let entry = audited
            .entry(subject.to_owned())
            .or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= Duration::from_secs(60) {
            *entry = (Instant::now(), 0);
        }
        entry.1 += 1;
        entry.1 <= AUDITED_FAILURES_PER_MINUTE
    }

    /// Drops a key from this replica's cache (after revoking it here).
    pub fn forget(&self, key_id: &ApiKeyId) {
        {
            let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
            let window = self.ttl * 2 + Duration::from_secs(5);
            revoked.retain(|_, at| at.elapsed() < window);
            revoked.insert(key_id.clone(), Instant::now());
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        cache.retain(|_, entry| entry.principal.credential != Credential::ApiKey(key_id.clone()));
    }

    /// Checks a run token: its run's stored digest (compared in constant
    /// time) and the run's state — usable while it is placed, starting or
    /// running, expired once it is over. Not cached: a run's end takes
    /// effect at once.
    async fn verify_run_token(&self, presented: &str) -> Result<Verdict> {
        use subtle::ConstantTimeEq;
        let found = carapace_scheduler::store::runs::by_token(&self.db, presented)
            .await
            .map_err(crate::db::store_error)?;
        let Some((run, Some(stored), presented_digest)) = found else {
            return Ok(Verdict::Unknown);
        };
        if !bool::from(stored.as_bytes().ct_eq(presented_digest.as_bytes())) {
            return Ok(Verdict::Unknown);
        }
        let (Ok(run_id), Ok(tenant_id)) = (RunId::parse(&run.id), TenantId::parse(&run.tenant))
        else {
            return Ok(Verdict::Unknown);
        };
        let tenant = match TenantScope::new(&self.db, &tenant_id).tenant().await {
            Ok(tenant) => tenant,
            Err(crate::error::Error::NotFound) => return Ok(Verdict::Unknown),
            Err(e) => return Err(e),
        };
        let scopes = Scopes::new(vec![crate::access::Scope::Gateway])
            .ok_or_else(|| anyhow::anyhow!("empty run token scopes"))?;
        let principal = Arc::new(KeyPrincipal {
            credential: Credential::Run(run_id),
            tenant_id,
            role: Role::Member,
            scopes,
            expires_at: None,
            revoked: false,
            session: None,
            agent: run
                .spec
                .memory
                .as_ref()
                .and_then(|m| AgentId::parse(&m.agent).ok()),
            tenant,
        });
        use carapace_scheduler::RunState;
        Ok(match run.state {
            RunState::Placed | RunState::Starting | RunState::Running => Verdict::Valid(principal),
            _ => Verdict::Expired(principal),
        })
    }

    /// Checks a session token: its stored hash, its expiry and revocation,
    /// and its person's membership of its tenant, read afresh on every
    /// request (a removed member is cut off at once; not cached).
    async fn verify_session(&self, presented: &str) -> Result<Verdict> {
        if presented.len() > 100 {
            return Ok(Verdict::Unknown);
        }
        let hash = session_token_hash(presented);
        let Some(session) = crate::db::sessions::session_by_token(&self.db, &hash).await? else {
            return Ok(Verdict::Unknown);
        };
        let tenant = match TenantScope::new(&self.db, &session.tenant).tenant().await {
            Ok(tenant) => tenant,
            Err(crate::error::Error::NotFound) => return Ok(Verdict::Unknown),
            Err(e) => return Err(e),
        };
        let scopes = Scopes::new(vec![crate::access::Scope::Api])
            .ok_or_else(|| anyhow::anyhow!("empty session scopes"))?;
        let ended = session.revoked_at.is_some() || session.role.is_none();
        let principal = Arc::new(KeyPrincipal {
            credential: Credential::Session(session.id.clone()),
            tenant_id: session.tenant.clone(),
            role: session.role.unwrap_or(Role::Member),
            scopes,
            agent: None,
            session: Some(session.facts()),
            expires_at: Some(session.expires_at),
            revoked: ended,
            tenant,
        });
        if ended {
            return Ok(Verdict::Revoked(principal));
        }
        if session.expires_at <= Utc::now() {
            return Ok(Verdict::Expired(principal));
        }
        // Its last request is noted once every check has admitted it
        // (`extract`): a refused request must not count as activity.
        Ok(Verdict::Valid(principal))
    }

    fn cached(&self, hash: KeyHash) -> Option<Arc<KeyPrincipal>> {
        let cache = self.cache.read().unwrap_or_else(|e| e.into_inner());
        let entry = cache.get(&hash)?;
        (entry.fetched_at.elapsed() < self.ttl).then(|| entry.principal.clone())
    }

    async fn fetch(&self, hash: KeyHash) -> Result<Option<Arc<KeyPrincipal>>> {
        let Some(key) = platform::find_api_key_by_hash(&self.db, hash).await? else {
            return Ok(None);
        };
        let tenant = match TenantScope::new(&self.db, &key.tenant_id).tenant().await {
            Ok(tenant) => tenant,
            // Deleted meanwhile: the key goes with it.
            Err(crate::error::Error::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut principal = KeyPrincipal::new(&key, tenant);
        if self
            .revoked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&key.id)
        {
            // Read before the revocation committed; it is revoked now.
            principal.revoked = true;
        }
        let principal = Arc::new(principal);
        let now = Utc::now();
        let usable = !principal.revoked && principal.expires_at.is_none_or(|at| at > now);
        if usable && key.last_used_at.is_none_or(|at| now - at > TOUCH_INTERVAL) {
            platform::touch_api_key(&self.db, &key.id, now).await?;
        }
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_CAPACITY {
            let ttl = self.ttl;
            cache.retain(|_, entry| entry.fetched_at.elapsed() < ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert(
            hash,
            Entry {
                principal: principal.clone(),
                fetched_at: Instant::now(),
            },
        );
        Ok(Some(principal))
    }
}

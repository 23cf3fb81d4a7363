//! Gateway limits: requests per minute per tenant and per key, tokens per
//! minute per tenant (token buckets), concurrent requests per tenant, and a
//! monthly budget per tenant.
//!
//! The fast path is in memory: a request takes from local buckets under
//! one mutex and never waits for the database. Correctness across
//! control-plane replicas comes from the database: every bucket is also a
//! row in `gateway_buckets`, and a background task (`run_sync`) pushes what
//! this replica consumed since its last sync and pulls the shared level,
//! refilled and drawn down by every replica, in one atomic statement. Each
//! replica can therefore overshoot a limit only by what it consumes
//! between two syncs (a quarter of a second). Concurrency is per replica.
//! The budget is checked against the month's spend in the usage ledger,
//! re-read every few seconds, plus what this replica has spent since.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{Datelike, Utc};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::ids::TenantId;

/// How often buckets are reconciled with the database.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(250);
/// How often a tenant's month-to-date spend is re-read.
const SPEND_REFRESH: Duration = Duration::from_secs(5);
/// Buckets unused this long are dropped from memory.
const IDLE_EVICTION: Duration = Duration::from_secs(300);
/// Buckets unused this long stop being shared (a replica that no longer
/// serves a tenant must not keep writing its view of the tenant's plan
/// into the shared rows), and are read again before their next use.
const IDLE_SYNC: Duration = Duration::from_secs(10);

/// The configured limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per minute per tenant.
    pub tenant_rpm: u32,
    /// Requests per minute per API key.
    pub key_rpm: u32,
    /// Tokens (in + out) per minute per tenant.
    pub tenant_tpm: u64,
    /// Concurrent requests per tenant (on each replica).
    pub max_concurrent: u32,
    /// Monthly budget per tenant in millionths of a dollar, if any.
    pub monthly_budget_micro_usd: Option<i64>,
}

struct Bucket {
    capacity: f64,
    per_second: f64,
    level: f64,
    refilled: Instant,
    /// Taken here since the last sync.
    unsynced: f64,
    used: Instant,
}

impl Bucket {
    fn new(capacity: f64) -> Self {
        Bucket {
            capacity,
            per_second: capacity / 60.0,
            level: capacity,
            refilled: Instant::now(),
            unsynced: 0.0,
            used: Instant::now(),
        }
    }

    /// Takes a new capacity (the tenant's plan changed), keeping the
    /// level within it.
    fn resize(&mut self, capacity: f64) {
        if self.capacity != capacity {
            self.capacity = capacity;
            self.per_second = capacity / 60.0;
            self.level = self.level.min(capacity);
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.level = (self.level + elapsed * self.per_second).min(self.capacity);
        self.refilled = now;
        self.used = now;
    }

    fn take(&mut self, amount: f64) {
        self.level -= amount;
        self.unsynced += amount;
    }

    /// Seconds until the level is back to `needed`.
    fn wait_for(&self, needed: f64) -> u64 {
        let missing = (needed - self.level).max(0.0);
        ((missing / self.per_second).ceil() as u64).max(1)
    }
}

#[derive(Default)]
struct Spend {
    fetched: Option<Instant>,
    month: u32,
    spent: i64,
    since_fetch: i64,
}

#[derive(Default)]
struct State {
    buckets: HashMap<String, Bucket>,
    in_flight: HashMap<TenantId, u32>,
    spend: HashMap<TenantId, Spend>,
}

/// The limiter shared by every gateway request on this replica.
pub struct Limiter {
    limits: Limits,
    state: Mutex<State>,
}

/// Why a request was refused.
#[derive(Debug)]
pub enum Refusal {
    /// A rate limit; retry after this many seconds.
    Rate {
        /// Which limit.
        reason: &'static str,
        /// Seconds.
        retry_after_secs: u64,
    },
    /// The monthly budget is spent.
    Budget {
        /// The budget in dollars.
        budget_usd: f64,
    },
}

/// Holds one concurrency slot until dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    tenant: TenantId,
    /// The tenant's tokens-per-minute capacity under its plan.
    tpm: f64,
}

fn tenant_rpm(t: &TenantId) -> String {
    format!("tenant:{t}:rpm")
}
fn tenant_tpm(t: &TenantId) -> String {
    format!("tenant:{t}:tpm")
}
fn key_rpm(k: &impl std::fmt::Display) -> String {
    format!("key:{k}:rpm")
}

impl Limiter {
    /// A limiter whose default limits are `limits` (a tenant's plan may
    /// give it others: the `_for` methods).
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the tenant's month-to-date spend must be re-read first.
    pub fn spend_is_stale(&self, tenant: &TenantId) -> bool {
        self.spend_is_stale_for(tenant, &self.limits)
    }

    /// [`spend_is_stale`](Self::spend_is_stale) under a plan's `limits`.
    pub fn spend_is_stale_for(&self, tenant: &TenantId, limits: &Limits) -> bool {
        if limits.monthly_budget_micro_usd.is_none() {
            return false;
        }
        let state = self.lock();
        state.spend.get(tenant).is_none_or(|s| {
            s.month != Utc::now().month() || s.fetched.is_none_or(|at| at.elapsed() > SPEND_REFRESH)
        })
    }

    /// Stores the month-to-date spend read from the ledger.
    pub fn set_spend(&self, tenant: &TenantId, spent_micro_usd: i64) {
        self.lock().spend.insert(
            tenant.clone(),
            Spend {
                fetched: Some(Instant::now()),
                month: Utc::now().month(),
                spent: spent_micro_usd,
                since_fetch: 0,
            },
        );
    }

    /// Loads the shared level of any of this caller's buckets that this
    /// replica has not seen yet, so that a replica's first request for a
    /// tenant does not start from a full allowance. One database round trip
    /// per bucket per replica, then none until the bucket is evicted.
    pub async fn prime(
        &self,
        db: &DatabaseConnection,
        tenant: &TenantId,
        key: &impl std::fmt::Display,
    ) -> Result<(), sea_orm::DbErr> {
        self.prime_for(db, tenant, key, &self.limits).await
    }

    /// [`prime`](Self::prime) under a plan's `limits`.
    pub async fn prime_for(
        &self,
        db: &DatabaseConnection,
        tenant: &TenantId,
        key: &impl std::fmt::Display,
        limits: &Limits,
    ) -> Result<(), sea_orm::DbErr> {
        let wanted = [
            (tenant_rpm(tenant), f64::from(limits.tenant_rpm)),
            (key_rpm(key), f64::from(limits.key_rpm)),
            (tenant_tpm(tenant), limits.tenant_tpm as f64),
        ];
        let missing: Vec<(String, f64)> = {
            let mut state = self.lock();
            wanted
                .into_iter()
                .filter(|(name, capacity)| match state.buckets.get_mut(name) {
                    // Known here and in use: take the plan's capacity now,
                    // so that the next sync shares it.
                    Some(bucket) if bucket.used.elapsed() < IDLE_SYNC => {
                        bucket.resize(*capacity);
                        false
                    }
                    // Unknown, or idle (not shared lately): read it again.
                    _ => true,
                })
                .collect()
        };
        for (name, capacity) in missing {
            let level =
                sync_bucket(db, &name, capacity, capacity / 60_000.0, 0.0, now_ms()).await?;
            let mut bucket = Bucket::new(capacity);
            bucket.level = level.min(capacity);
            let mut state = self.lock();
            match state.buckets.get_mut(&name) {
                // Idle here: the shared level, keeping what this replica
                // took and has not shared yet.
                Some(old) => {
                    bucket.level -= old.unsynced;
                    bucket.unsynced = old.unsynced;
                    *old = bucket;
                }
                None => {
                    state.buckets.insert(name, bucket);
                }
            }
        }
        Ok(())
    }

    /// Takes one request's worth of every limit, or says which refused.
    pub fn acquire(
        self: &Arc<Self>,
        tenant: &TenantId,
        key: &impl std::fmt::Display,
    ) -> Result<Permit, Refusal> {
        let limits = self.limits;
        self.acquire_for(tenant, key, &limits)
    }

    /// [`acquire`](Self::acquire) under a plan's `limits`.
    pub fn acquire_for(
        self: &Arc<Self>,
        tenant: &TenantId,
        key: &impl std::fmt::Display,
        limits: &Limits,
    ) -> Result<Permit, Refusal> {
        let mut state = self.lock();
        if let Some(budget) = limits.monthly_budget_micro_usd {
            let spent = state
                .spend
                .get(tenant)
                .map_or(0, |s| s.spent + s.since_fetch);
            if spent >= budget {
                return Err(Refusal::Budget {
                    budget_usd: budget as f64 / 1e6,
                });
            }
        }
        if state.in_flight.get(tenant).copied().unwrap_or(0) >= limits.max_concurrent {
            return Err(Refusal::Rate {
                reason: "too many concurrent requests",
                retry_after_secs: 1,
            });
        }
        let checks = [
            (
                tenant_rpm(tenant),
                f64::from(limits.tenant_rpm),
                1.0,
                "tenant requests per minute exceeded",
            ),
            (
                key_rpm(key),
                f64::from(limits.key_rpm),
                1.0,
                "API key requests per minute exceeded",
            ),
            // Tokens are counted after the call; a request needs the bucket
            // not to be in debt.
            (
                tenant_tpm(tenant),
                limits.tenant_tpm as f64,
                f64::MIN_POSITIVE,
                "tenant tokens per minute exceeded",
            ),
        ];
        for (name, capacity, needed, reason) in &checks {
            let bucket = state
                .buckets
                .entry(name.clone())
                .or_insert_with(|| Bucket::new(*capacity));
            bucket.resize(*capacity);
            bucket.refill();
            if bucket.level < *needed {
                return Err(Refusal::Rate {
                    reason,
                    retry_after_secs: bucket.wait_for(*needed),
                });
            }
        }
        for (name, _, needed, _) in &checks[..2] {
            if let Some(bucket) = state.buckets.get_mut(name) {
                bucket.take(*needed);
            }
        }
        *state.in_flight.entry(tenant.clone()).or_insert(0) += 1;
        Ok(Permit {
            limiter: self.clone(),
            tenant: tenant.clone(),
            tpm: limits.tenant_tpm as f64,
        })
    }

    /// Counts a finished call's tokens and cost.
    pub fn record(&self, tenant: &TenantId, tokens: u64, cost_micro_usd: i64) {
        let capacity = self.limits.tenant_tpm as f64;
        self.record_with(tenant, tokens, cost_micro_usd, capacity);
    }

    /// [`record`](Self::record) with the tenant's plan's token capacity.
    fn record_with(&self, tenant: &TenantId, tokens: u64, cost_micro_usd: i64, capacity: f64) {
        let mut state = self.lock();
        let bucket = state
            .buckets
            .entry(tenant_tpm(tenant))
            .or_insert_with(|| Bucket::new(capacity));
        bucket.refill();
        bucket.take(tokens as f64);
        if let Some(spend) = state.spend.get_mut(tenant) {
            spend.since_fetch = spend.since_fetch.saturating_add(cost_micro_usd);
        }
    }

    /// Reconciles every bucket with the shared rows, and forgets idle ones.
    pub async fn sync(&self, db: &DatabaseConnection) -> Result<(), sea_orm::DbErr> {
        let pending: Vec<(String, f64, f64, f64)> = {
            let mut state = self.lock();
            state
                .buckets
                .retain(|_, b| b.used.elapsed() < IDLE_EVICTION);
            state
                .buckets
                .iter_mut()
                // Buckets idle here with nothing to share are left out: their
                // capacity may be an old plan's.
                .filter(|(_, b)| b.unsynced > 0.0 || b.used.elapsed() < IDLE_SYNC)
                .map(|(name, b)| {
                    let taken = std::mem::take(&mut b.unsynced);
                    (name.clone(), b.capacity, b.per_second, taken)
                })
                .collect()
        };
        let now_ms = now_ms();
        let mut pending = pending.into_iter();
        while let Some((name, capacity, per_second, taken)) = pending.next() {
            match sync_bucket(db, &name, capacity, per_second / 1000.0, taken, now_ms).await {
                Ok(level) => {
                    let mut state = self.lock();
                    if let Some(b) = state.buckets.get_mut(&name) {
                        // What was taken while the statement ran stays
                        // local until the next sync.
                        b.level = level.min(capacity) - b.unsynced;
                        b.refilled = Instant::now();
                    }
                }
                Err(e) => {
                    // Keep this bucket's and every later bucket's
                    // consumption for the next attempt.
                    let mut state = self.lock();
                    for (name, _, _, taken) in
                        std::iter::once((name, capacity, per_second, taken)).chain(pending)
                    {
                        if let Some(b) = state.buckets.get_mut(&name) {
                            b.unsynced += taken;
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Refills the shared bucket for the time since its last update, takes
/// `taken` from it, and returns the new level — atomically.
async fn sync_bucket(
    db: &DatabaseConnection,
    name: &str,
    capacity: f64,
    per_ms: f64,
    taken: f64,
    now_ms: i64,
) -> Result<f64, sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => {
            "INSERT INTO gateway_buckets (name, level, updated_ms) VALUES ($1, $2 - $3, $4) \
             ON CONFLICT (name) DO UPDATE SET \
             level = LEAST($2, gateway_buckets.level + GREATEST(0, $4 - gateway_buckets.updated_ms) * $5) - $3, \
             updated_ms = GREATEST($4, gateway_buckets.updated_ms) RETURNING level"
        }
        _ => {
            "INSERT INTO gateway_buckets (name, level, updated_ms) VALUES (?1, ?2 - ?3, ?4) \
             ON CONFLICT (name) DO UPDATE SET \
             level = MIN(?2, gateway_buckets.level + MAX(0, ?4 - gateway_buckets.updated_ms) * ?5) - ?3, \
             updated_ms = MAX(?4, gateway_buckets.updated_ms) RETURNING level"
        }
    };
    let row = db
        .query_one(Statement::from_sql_and_values(
            backend,
            sql,
            [
                name.into(),
                capacity.into(),
                taken.into(),
                now_ms.into(),
                per_ms.into(),
            ],
        ))
        .await?
        .ok_or_else(|| sea_orm::DbErr::RecordNotFound("gateway bucket".to_owned()))?;
    row.try_get::<f64>("", "level")
}

/// Reconciles the limiter's buckets with the database until the process
/// ends.
pub async fn run_sync(limiter: Arc<Limiter>, db: DatabaseConnection) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = limiter.sync(&db).await {
            tracing::warn!(error = %e, "failed to share gateway limits with the database");
        }
    }
}

impl Permit {
    /// Counts the call's tokens and cost against the tenant.
    pub fn record(&self, tokens: u64, cost_micro_usd: i64) {
        self.limiter
            .record_with(&self.tenant, tokens, cost_micro_usd, self.tpm);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.limiter.lock();
        if let Some(n) = state.in_flight.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ApiKeyId;

    fn limits() -> Limits {
        Limits {
            tenant_rpm: 100,
            key_rpm: 100,
            tenant_tpm: 1_000_000,
            max_concurrent: 100,
            monthly_budget_micro_usd: None,
        }
    }

    fn rate_reason(r: Result<Permit, Refusal>) -> &'static str {
        match r {
            Err(Refusal::Rate {
                reason,
                retry_after_secs,
            }) => {
                assert!(retry_after_secs >= 1);
                reason
            }
            Err(Refusal::Budget { .. }) => "budget",
            Ok(_) => "allowed",
        }
    }

    #[test]
    fn the_rate_is_enforced_per_tenant_and_per_key() {
        let limiter = Limiter::new(Limits {
            tenant_rpm: 3,
            key_rpm: 2,
            ..limits()
        });
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let (k1, k2) = (ApiKeyId::generate(), ApiKeyId::generate());
        let mut held = vec![
            limiter.acquire(&a, &k1).ok().unwrap(),
            limiter.acquire(&a, &k1).ok().unwrap(),
        ];
        assert_eq!(
            rate_reason(limiter.acquire(&a, &k1)),
            "API key requests per minute exceeded"
        );
        held.push(limiter.acquire(&a, &k2).ok().unwrap());
        assert_eq!(
            rate_reason(limiter.acquire(&a, &k2)),
            "tenant requests per minute exceeded"
        );
        assert!(
            limiter.acquire(&b, &ApiKeyId::generate()).is_ok(),
            "another tenant is unaffected"
        );
    }

    #[test]
    fn tokens_in_debt_block_the_next_request() {
        let limiter = Limiter::new(Limits {
            tenant_tpm: 100,
            ..limits()
        });
        let (t, k) = (TenantId::generate(), ApiKeyId::generate());
        drop(limiter.acquire(&t, &k).ok().unwrap());
        limiter.record(&t, 150, 0);
        assert_eq!(
            rate_reason(limiter.acquire(&t, &k)),
            "tenant tokens per minute exceeded"
        );
    }

    #[test]
    fn concurrency_is_released_when_a_permit_drops() {
        let limiter = Limiter::new(Limits {
            max_concurrent: 2,
            ..limits()
        });
        let (t, k) = (TenantId::generate(), ApiKeyId::generate());
        let first = limiter.acquire(&t, &k).ok().unwrap();
        let _second = limiter.acquire(&t, &k).ok().unwrap();
        assert_eq!(
            rate_reason(limiter.acquire(&t, &k)),
            "too many concurrent requests"
        );
        drop(first);
        assert!(limiter.acquire(&t, &k).is_ok());
    }

    #[test]
    fn a_spent_budget_refuses_until_the_spend_is_lower() {
        let limiter = Limiter::new(Limits {
            monthly_budget_micro_usd: Some(1_000),
            ..limits()
        });
        let (t, k) = (TenantId::generate(), ApiKeyId::generate());
        assert!(limiter.spend_is_stale(&t));
        limiter.set_spend(&t, 900);
        assert!(!limiter.spend_is_stale(&t));
        drop(limiter.acquire(&t, &k).ok().unwrap());
        limiter.record(&t, 10, 200);
        assert_eq!(rate_reason(limiter.acquire(&t, &k)), "budget");
    }
}

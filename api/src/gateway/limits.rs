//! Per-tenant gateway limits kept in memory on this replica: requests per
//! minute (a token bucket) and concurrent requests (a counter released when
//! the response, stream included, is finished or abandoned).
//!
//! Known gap: with several control-plane replicas each enforces its own
//! share; shared counting in the database comes with plans and budgets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ids::TenantId;

struct Bucket {
    tokens: f64,
    refilled: Instant,
    in_flight: u32,
}

/// The limiter shared by every gateway request.
pub struct Limiter {
    per_minute: f64,
    max_concurrent: u32,
    tenants: Mutex<HashMap<TenantId, Bucket>>,
}

/// Why a request was refused, and when to come back.
#[derive(Debug)]
pub struct Refusal {
    /// Which limit.
    pub reason: &'static str,
    /// Whole seconds until a retry may succeed.
    pub retry_after_secs: u64,
}

/// Holds one concurrency slot until dropped.
pub struct Permit {
    limiter: Arc<Limiter>,
    tenant: TenantId,
}

impl Limiter {
    /// A limiter allowing `per_minute` requests (bursting up to that many)
    /// and `max_concurrent` at once, per tenant.
    pub fn new(per_minute: u32, max_concurrent: u32) -> Arc<Self> {
        Arc::new(Self {
            per_minute: f64::from(per_minute),
            max_concurrent,
            tenants: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one request's worth of the tenant's allowance.
    pub fn acquire(self: &Arc<Self>, tenant: &TenantId) -> Result<Permit, Refusal> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let bucket = tenants.entry(tenant.clone()).or_insert(Bucket {
            tokens: self.per_minute,
            refilled: now,
            in_flight: 0,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_minute / 60.0).min(self.per_minute);
        bucket.refilled = now;
        if bucket.in_flight >= self.max_concurrent {
            return Err(Refusal {
                reason: "too many concurrent requests",
                retry_after_secs: 1,
            });
        }
        if bucket.tokens < 1.0 {
            let wait = Duration::from_secs_f64((1.0 - bucket.tokens) * 60.0 / self.per_minute);
            return Err(Refusal {
                reason: "requests per minute exceeded",
                retry_after_secs: wait.as_secs().max(1),
            });
        }
        bucket.tokens -= 1.0;
        bucket.in_flight += 1;
        Ok(Permit {
            limiter: self.clone(),
            tenant: tenant.clone(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut tenants = self
            .limiter
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(bucket) = tenants.get_mut(&self.tenant) {
            bucket.in_flight = bucket.in_flight.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_is_enforced_per_tenant() {
        let limiter = Limiter::new(3, 100);
        let (a, b) = (TenantId::generate(), TenantId::generate());
        let permits: Vec<_> = (0..3).map(|_| limiter.acquire(&a).unwrap()).collect();
        let refusal = limiter.acquire(&a).err().unwrap();
        assert_eq!(refusal.reason, "requests per minute exceeded");
        assert!(refusal.retry_after_secs >= 1);
        assert!(limiter.acquire(&b).is_ok(), "another tenant is unaffected");
        drop(permits);
    }

    #[test]
    fn concurrency_is_released_when_a_permit_drops() {
        let limiter = Limiter::new(100, 2);
        let tenant = TenantId::generate();
        let first = limiter.acquire(&tenant).unwrap();
        let _second = limiter.acquire(&tenant).unwrap();
        assert_eq!(
            limiter.acquire(&tenant).err().unwrap().reason,
            "too many concurrent requests"
        );
        drop(first);
        assert!(limiter.acquire(&tenant).is_ok());
    }
}

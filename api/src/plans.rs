//! Plans: what a tenant may use. A plan sets a tenant's gateway limits
//! (requests and tokens per minute, concurrency, monthly budget) and its
//! agents' memory quotas. Every tenant is on one plan (`tenants.plan`):
//! `default` until an operator moves it (`PUT /v1/admin/tenants/{id}/plan`).
//!
//! Plans come from the `[plans.NAME]` tables of the settings file. What a
//! plan leaves out is the server's own setting (the `[gateway]` limits,
//! the `[memory]` table); `[plans.default]` changes the default plan the
//! same way. A tenant whose stored plan is no longer configured gets the
//! default plan (and a warning in the log).

use std::collections::BTreeMap;

use anyhow::bail;
use serde::{Deserialize, Serialize};

use crate::gateway::limits::Limits;
use crate::memory::{MemoryArgs, MemoryLimits};

/// The plan of a tenant that was never moved.
pub const DEFAULT: &str = "default";

/// One `[plans.NAME]` table; every field optional.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanArgs {
    /// Gateway requests per minute per tenant.
    pub requests_per_minute: Option<u32>,
    /// Gateway requests per minute per API key or run. [default: the
    /// plan's `requests_per_minute` if it sets one]
    pub key_requests_per_minute: Option<u32>,
    /// Gateway tokens per minute per tenant.
    pub tokens_per_minute: Option<u64>,
    /// Concurrent gateway requests per tenant (on each replica).
    pub max_concurrent: Option<u32>,
    /// Monthly model budget in US dollars.
    pub monthly_budget_usd: Option<f64>,
    /// Memory quotas (`[plans.NAME.memory]`, the fields of `[memory]`).
    pub memory: Option<MemoryArgs>,
}

/// A plan, resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    /// Gateway limits.
    pub gateway: Limits,
    /// Memory quotas.
    pub memory: MemoryLimits,
}

/// A plan as tenants and operators see it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanView {
    /// The plan's name.
    name: String,
    /// Gateway requests per minute per tenant.
    requests_per_minute: u32,
    /// Gateway requests per minute per API key or run.
    key_requests_per_minute: u32,
    /// Gateway tokens per minute per tenant.
    tokens_per_minute: u64,
    /// Concurrent gateway requests per tenant (per replica).
    max_concurrent: u32,
    /// Monthly model budget in US dollars; none if unlimited.
    monthly_budget_usd: Option<f64>,
    /// Files in one version of an agent's memory.
    memory_max_files: usize,
    /// Largest memory file, in bytes.
    memory_max_file_bytes: u64,
    /// Bytes in one version of an agent's memory.
    memory_max_total_bytes: u64,
}

/// Every configured plan; `default` always among them.
#[derive(Debug, Clone)]
pub struct Plans {
    plans: BTreeMap<String, Plan>,
    /// Unconfigured plan names already warned about.
    warned: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Whether `name` may name a plan: 1 to 40 of `a-z`, `0-9`, `-`, `_`.
pub fn valid_name(name: &str) -> bool {
    (1..=40).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Plans {
    /// Resolves the `[plans]` tables over the server's own limits.
    pub fn resolve(
        args: BTreeMap<String, PlanArgs>,
        gateway: Limits,
        memory: &MemoryArgs,
    ) -> anyhow::Result<Plans> {
        let mut plans = BTreeMap::new();
        plans.insert(
            DEFAULT.to_owned(),
            Plan {
                gateway,
                memory: memory.resolve()?,
            },
        );
        for (name, plan) in args {
            if !valid_name(&name) {
                bail!("plan name {name:?}: use 1 to 40 of a-z, 0-9, '-' and '_'");
            }
            let resolved = plan
                .resolve(gateway, memory)
                .map_err(|e| anyhow::anyhow!("plan {name}: {e}"))?;
            plans.insert(name, resolved);
        }
        Ok(Plans {
            plans,
            warned: Default::default(),
        })
    }

    /// The plan called `name`, or the default plan if there is none.
    pub fn get(&self, name: &str) -> &Plan {
        match self.plans.get(name) {
            Some(plan) => plan,
            None => {
                // Once per name: this runs on every request of the tenant.
                let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
                if warned.len() < 1000 && warned.insert(name.to_owned()) {
                    tracing::warn!(
                        plan = name,
                        "a tenant's plan is not configured; default applies"
                    );
                }
                self.default_plan()
            }
        }
    }

    /// The default plan.
    pub fn default_plan(&self) -> &Plan {
        // `resolve` always inserts it.
        self.plans
            .get(DEFAULT)
            .or_else(|| self.plans.values().next())
            .unwrap_or(&FALLBACK)
    }

    /// Whether a plan of that name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.plans.contains_key(name)
    }

    /// The names of the configured plans.
    pub fn names(&self) -> Vec<&str> {
        self.plans.keys().map(String::as_str).collect()
    }

    /// `name`'s plan as shown to people (the default plan's figures if it
    /// is not configured).
    pub fn view(&self, name: &str) -> PlanView {
        let plan = self.get(name);
        let g = plan.gateway;
        PlanView {
            name: name.to_owned(),
            requests_per_minute: g.tenant_rpm,
            key_requests_per_minute: g.key_rpm,
            tokens_per_minute: g.tenant_tpm,
            max_concurrent: g.max_concurrent,
            monthly_budget_usd: g.monthly_budget_micro_usd.map(|m| m as f64 / 1e6),
            memory_max_files: plan.memory.max_files,
            memory_max_file_bytes: plan.memory.max_file_bytes,
            memory_max_total_bytes: plan.memory.max_total_bytes,
        }
    }
}

/// Only reached if `Plans` were built without `resolve`.
static FALLBACK: Plan = Plan {
    gateway: Limits {
        tenant_rpm: 600,
        key_rpm: 600,
        tenant_tpm: 1_000_000,
        max_concurrent: 32,
        monthly_budget_micro_usd: None,
    },
    memory: MemoryLimits {
        max_files: 10_000,
        max_file_bytes: 32 << 20,
        max_total_bytes: 256 << 20,
        sync_interval_s: 30,
        keep_versions: 20,
    },
};

impl PlanArgs {
    fn resolve(&self, base: Limits, memory: &MemoryArgs) -> anyhow::Result<Plan> {
        if self
            .monthly_budget_usd
            .is_some_and(|b| !(b >= 0.0 && b.is_finite()))
        {
            bail!("monthly_budget_usd must be a non-negative number");
        }
        for (what, value) in [
            ("requests_per_minute", self.requests_per_minute),
            ("key_requests_per_minute", self.key_requests_per_minute),
            ("max_concurrent", self.max_concurrent),
        ] {
            if value == Some(0) {
                bail!("{what} must be at least 1");
            }
        }
        if self.tokens_per_minute == Some(0) {
            bail!("tokens_per_minute must be at least 1");
        }
        let gateway = Limits {
            tenant_rpm: self.requests_per_minute.unwrap_or(base.tenant_rpm),
            key_rpm: self
                .key_requests_per_minute
                .or(self.requests_per_minute)
                .unwrap_or(base.key_rpm),
            tenant_tpm: self.tokens_per_minute.unwrap_or(base.tenant_tpm),
            max_concurrent: self.max_concurrent.unwrap_or(base.max_concurrent),
            monthly_budget_micro_usd: self
                .monthly_budget_usd
                .map(|b| (b * 1e6).round() as i64)
                .or(base.monthly_budget_micro_usd),
        };
        let own = self.memory.clone().unwrap_or_default();
        let memory = MemoryArgs {
            max_files: own.max_files.or(memory.max_files),
            max_file_mib: own.max_file_mib.or(memory.max_file_mib),
            max_total_mib: own.max_total_mib.or(memory.max_total_mib),
            sync_interval_secs: own.sync_interval_secs.or(memory.sync_interval_secs),
            keep_versions: own.keep_versions.or(memory.keep_versions),
        }
        .resolve()?;
        Ok(Plan { gateway, memory })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Limits {
        Limits {
            tenant_rpm: 600,
            key_rpm: 600,
            tenant_tpm: 1000,
            max_concurrent: 8,
            monthly_budget_micro_usd: Some(5_000_000),
        }
    }

    #[test]
    fn plans_inherit_what_they_leave_out() {
        let server_memory = MemoryArgs {
            max_files: Some(50),
            ..Default::default()
        };
        let pro = PlanArgs {
            requests_per_minute: Some(6000),
            monthly_budget_usd: Some(100.0),
            memory: Some(MemoryArgs {
                max_total_mib: Some(512),
                ..Default::default()
            }),
            ..Default::default()
        };
        let plans = Plans::resolve(
            BTreeMap::from([("pro".to_owned(), pro)]),
            base(),
            &server_memory,
        )
        .unwrap();
        let p = plans.get("pro");
        assert_eq!(p.gateway.tenant_rpm, 6000);
        assert_eq!(p.gateway.key_rpm, 6000);
        assert_eq!(p.gateway.tenant_tpm, 1000);
        assert_eq!(p.gateway.monthly_budget_micro_usd, Some(100_000_000));
        assert_eq!(p.memory.max_files, 50);
        assert_eq!(p.memory.max_total_bytes, 512 << 20);
        assert_eq!(plans.get("default").gateway, base());
        // An unknown plan is the default one.
        assert_eq!(plans.get("gone"), plans.get(DEFAULT));
        assert!(plans.contains("pro") && !plans.contains("gone"));
    }

    #[test]
    fn bad_plans_are_refused() {
        for (name, plan) in [
            ("Pro", PlanArgs::default()),
            (
                "x",
                PlanArgs {
                    requests_per_minute: Some(0),
                    ..Default::default()
                },
            ),
            (
                "y",
                PlanArgs {
                    monthly_budget_usd: Some(-1.0),
                    ..Default::default()
                },
            ),
            (
                "z",
                PlanArgs {
                    memory: Some(MemoryArgs {
                        max_file_mib: Some(64),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
        ] {
            let plans = BTreeMap::from([(name.to_owned(), plan)]);
            assert!(
                Plans::resolve(plans, base(), &MemoryArgs::default()).is_err(),
                "{name}"
            );
        }
    }
}

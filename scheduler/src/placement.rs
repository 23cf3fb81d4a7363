//! Placement: which queued runs go to which workers in one round, as a pure
//! function of what is queued, what the workers have free and how many
//! runs each tenant already has.
//!
//! Rules, in order:
//!
//! 1. **Resources.** A run goes only to a worker whose free CPU, memory and
//!    slots cover its limits, and that offers the run's image (workers
//!    cannot fetch images from registries yet, so having the image is a
//!    requirement rather than a preference).
//! 2. **Quota.** A tenant never has more than `max_active_per_tenant` runs
//!    placed, starting or running at once.
//! 3. **Fairness.** Tenants take turns, one run each per turn, the tenant
//!    with the fewest active runs first; within a tenant, oldest first. So a
//!    tenant that queued a thousand runs gets one per turn like everybody
//!    else, and another tenant's single run is placed in the first round
//!    that has room for it.
//! 4. **Choice of worker.** Among the workers that fit, the one with the
//!    most free slots (spreading the load by capacity), then the lowest id
//!    (deterministic).
//!
//! A tenant whose next run fits nowhere for lack of room is skipped for the
//! rest of the round (its later, smaller runs do not overtake it). A run
//! whose image none of the workers offers at all waits without holding up
//! the runs behind it: no amount of freed room would place it here.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::protocol::Resources;

/// A worker as placement sees it.
#[derive(Debug, Clone)]
pub struct WorkerView {
    /// Its id.
    pub id: String,
    /// What it has free now.
    pub free: Resources,
    /// The images it has ready.
    pub images: Vec<String>,
}

/// A queued run as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Its id.
    pub run: String,
    /// Its tenant.
    pub tenant: String,
    /// What it needs.
    pub need: Resources,
    /// Its image.
    pub image: String,
}

/// One decision: this run on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The run.
    pub run: String,
    /// The worker.
    pub worker: String,
}

/// Decides one round. `queued` is in queue order (oldest first) and may mix
/// tenants; `active` counts each tenant's runs already placed, starting or
/// running. `workers` is updated to what remains free.
pub fn plan(
    queued: Vec<Candidate>,
    workers: &mut [WorkerView],
    active: &HashMap<String, u64>,
    max_active_per_tenant: u64,
) -> Vec<Assignment> {
    // Per tenant, oldest first; tenants in the order their oldest run came.
    let mut order: Vec<String> = Vec::new();
    let mut queues: HashMap<String, VecDeque<Candidate>> = HashMap::new();
    for candidate in queued {
        let queue = queues.entry(candidate.tenant.clone()).or_insert_with(|| {
            order.push(candidate.tenant.clone());
            VecDeque::new()
        });
        queue.push_back(candidate);
    }
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for tenant in &order {
        counts.insert(tenant, active.get(tenant).copied().unwrap_or(0));
    }
    // Fewest active first; ties keep queue order (stable sort).
    let mut turn: Vec<String> = order.clone();
    turn.sort_by_key(|t| counts.get(t.as_str()).copied().unwrap_or(0));
    let mut counts: HashMap<String, u64> =
        counts.into_iter().map(|(t, n)| (t.to_owned(), n)).collect();

    let mut placed = Vec::new();
    let mut open: Vec<String> = turn;
    while !open.is_empty() {
        let mut still_open = Vec::with_capacity(open.len());
        for tenant in open {
            let count = counts.entry(tenant.clone()).or_insert(0);
            if *count >= max_active_per_tenant {
                continue;
            }
            let Some(queue) = queues.get_mut(&tenant) else {
                continue;
            };
            // Runs no worker here could ever take step aside.
            while queue
                .front()
                .is_some_and(|c| !workers.iter().any(|w| w.images.contains(&c.image)))
            {
                queue.pop_front();
            }
            let Some(candidate) = queue.front() else {
                continue;
            };
            let Some(index) = best_worker(workers, candidate) else {
                // Nothing fits this tenant's next run this round.
                continue;
            };
            let Some(candidate) = queue.pop_front() else {
                continue;
            };
            let worker = &mut workers[index];
            worker.free = worker.free.minus(&candidate.need);
            *count += 1;
            placed.push(Assignment {
                run: candidate.run,
                worker: worker.id.clone(),
            });
            if !queue.is_empty() {
                still_open.push(tenant);
            }
        }
        open = still_open;
    }
    placed
}

fn best_worker(workers: &[WorkerView], candidate: &Candidate) -> Option<usize> {
    workers
        .iter()
        .enumerate()
        .filter(|(_, w)| w.free.fits(&candidate.need) && w.images.contains(&candidate.image))
        .max_by(|(_, a), (_, b)| {
            a.free
                .slots
                .cmp(&b.free.slots)
                // Lower id wins a full tie: `max_by` keeps the last maximum,
                // so compare reversed.
                .then(b.id.cmp(&a.id))
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, slots: u64) -> WorkerView {
        WorkerView {
            id: id.into(),
            free: Resources {
                cpu_millis: 100_000,
                memory_mib: 100_000,
                slots,
            },
            images: vec!["builtin".into()],
        }
    }

    fn run(id: &str, tenant: &str) -> Candidate {
        Candidate {
            run: id.into(),
            tenant: tenant.into(),
            need: Resources {
                cpu_millis: 1000,
                memory_mib: 256,
                slots: 1,
            },
            image: "builtin".into(),
        }
    }

    fn flood(tenant: &str, n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| run(&format!("{tenant}-{i}"), tenant))
            .collect()
    }

    #[test]
    fn a_flooding_tenant_does_not_starve_another() {
        let mut queued = flood("a", 1000);
        queued.push(run("b-0", "b"));
        let mut workers = vec![worker("w1", 2)];
        let placed = plan(queued, &mut workers, &HashMap::new(), 100);
        let runs: Vec<&str> = placed.iter().map(|a| a.run.as_str()).collect();
        assert_eq!(runs, ["a-0", "b-0"]);
    }

    #[test]
    fn the_tenant_with_fewer_active_runs_goes_first() {
        let mut queued = flood("a", 10);
        queued.extend(flood("b", 10));
        let active = HashMap::from([("a".to_owned(), 5)]);
        let mut workers = vec![worker("w1", 1)];
        let placed = plan(queued, &mut workers, &active, 100);
        assert_eq!(placed[0].run, "b-0");
    }

    #[test]
    fn runs_spread_by_capacity() {
        let mut workers = vec![worker("small", 2), worker("big", 6)];
        let placed = plan(flood("a", 20), &mut workers, &HashMap::new(), 100);
        assert_eq!(placed.len(), 8);
        let on_big = placed.iter().filter(|a| a.worker == "big").count();
        assert_eq!(on_big, 6);
        // The bigger worker fills first, then they alternate.
        assert_eq!(placed[0].worker, "big");
    }

    #[test]
    fn quotas_cap_a_tenant() {
        let mut workers = vec![worker("w1", 50)];
        let active = HashMap::from([("a".to_owned(), 3)]);
        let mut queued = flood("a", 10);
        queued.extend(flood("b", 10));
        let placed = plan(queued, &mut workers, &active, 4);
        let a = placed.iter().filter(|p| p.run.starts_with("a-")).count();
        let b = placed.iter().filter(|p| p.run.starts_with("b-")).count();
        assert_eq!((a, b), (1, 4));
    }

    #[test]
    fn a_run_too_big_for_every_worker_is_not_placed_and_does_not_block_others() {
        let mut big = run("a-big", "a");
        big.need.memory_mib = 1_000_000;
        let mut queued = vec![big, run("a-small", "a")];
        queued.push(run("b-0", "b"));
        let mut workers = vec![worker("w1", 4)];
        let placed = plan(queued, &mut workers, &HashMap::new(), 100);
        let runs: Vec<&str> = placed.iter().map(|a| a.run.as_str()).collect();
        // a's queue waits behind its big run; b is not held up by it.
        assert_eq!(runs, ["b-0"]);
    }

    #[test]
    fn a_run_goes_only_to_a_worker_offering_its_image() {
        let mut with_image = worker("w2", 1);
        with_image.images.push("tools:1".into());
        let mut workers = vec![worker("w1", 5), with_image];
        let mut first = run("a-0", "a");
        first.image = "tools:1".into();
        let mut second = run("a-1", "a");
        second.image = "tools:1".into();
        let placed = plan(vec![first, second], &mut workers, &HashMap::new(), 100);
        // The second waits for w2's slot rather than going to w1.
        assert_eq!(
            placed,
            [Assignment {
                run: "a-0".into(),
                worker: "w2".into()
            }]
        );
    }

    #[test]
    fn a_run_no_worker_offers_does_not_hold_up_its_tenant() {
        let mut odd = run("a-0", "a");
        odd.image = "nowhere:1".into();
        let mut workers = vec![worker("w1", 4)];
        let placed = plan(
            vec![odd, run("a-1", "a")],
            &mut workers,
            &HashMap::new(),
            100,
        );
        let runs: Vec<&str> = placed.iter().map(|a| a.run.as_str()).collect();
        assert_eq!(runs, ["a-1"]);
    }

    #[test]
    fn cpu_and_memory_bound_placement_too() {
        let mut workers = vec![WorkerView {
            id: "w1".into(),
            free: Resources {
                cpu_millis: 2500,
                memory_mib: 100_000,
                slots: 100,
            },
            images: vec!["builtin".into()],
        }];
        let placed = plan(flood("a", 5), &mut workers, &HashMap::new(), 100);
        assert_eq!(placed.len(), 2);
        assert_eq!(workers[0].free.cpu_millis, 500);
    }
}

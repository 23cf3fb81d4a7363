//! The Carapace control plane: the `carapace` binary's library.
//!
//! It owns the HTTP API (actix-web), tenants, users, API keys and the audit
//! log, and start-up (settings, master key, database, object store). Later
//! issues add login, the scheduler's control side, the model gateway,
//! memory, billing and the bots here. Provider keys, tenant keys and the
//! master key live only in this process.
//!
//! Map: `main.rs` parses the command line and calls [`bootstrap`];
//! [`http`] holds the server, middleware and one module per resource;
//! [`auth`] turns a bearer token into a [`auth::extract::Caller`];
//! [`db`] is the only module that touches rows, through
//! [`db::TenantScope`] for everything a tenant owns.

pub mod access;
pub mod access_policy;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod cli;
pub mod config;
pub mod conversations;
pub mod crypto;
pub mod db;
pub mod email;
pub mod error;
pub mod fleet;
pub mod gateway;
pub mod http;
pub mod ids;
pub mod login;
pub mod mail;
pub mod master_key;
pub mod memory;
pub mod plans;
pub mod rate_limit;
pub mod run_logs;
pub mod sandboxes;
pub mod secret;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod worker_node;

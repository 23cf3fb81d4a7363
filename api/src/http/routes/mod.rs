//! One module per resource, each with a `configure` that registers its
//! routes.

pub mod access_policy;
pub mod admin;
pub mod agents;
pub mod api_keys;
pub mod audit;
pub mod conversations;
pub mod docs;
pub mod login;
mod login_pages;
pub mod members;
pub mod memory;
pub mod memory_sync;
mod memory_tar;
pub mod ops;
pub mod providers;
pub mod run_logs;
pub mod runs;
pub mod sandbox_calls;
pub mod sandbox_exec;
pub mod sandbox_stream;
pub mod sandboxes;
pub mod service_tokens;
pub mod sessions;
pub mod tenant;
pub mod transcripts;
pub mod usage;
pub mod workers;

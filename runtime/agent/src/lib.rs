//! The wire protocol between a worker and the `carapace-agent` that runs as
//! init inside each sandbox, and the built-in agent's tool loop (`chat`,
//! with the small `http` client and `json` reader it needs). The binary
//! itself is `src/main.rs`.
pub mod chat;
pub mod http;
pub mod json;
pub mod protocol;

//! The wire protocol between a worker and the `carapace-agent` that runs as
//! init inside each sandbox. The binary itself is `src/main.rs`.
pub mod protocol;

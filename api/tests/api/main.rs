//! Integration tests of the control plane: each test starts the real HTTP
//! server on port 0 against a fresh database (SQLite by default, PostgreSQL
//! when `CARAPACE_TEST_DATABASE=postgres`; see `infra/test`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod agents;
mod api_keys;
mod bad_input;
mod binary;
mod fake_llm;
mod gateway;
mod helpers;
mod invitation_mail;
mod isolation;
mod login;
mod login_providers;
mod login_tokens;
mod memory;
mod memory_archive;
mod operations;
mod plans;
mod repository;
mod sandboxes;
mod scheduler;
mod transcripts;

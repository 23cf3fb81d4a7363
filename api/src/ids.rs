//! Identifiers of everything Carapace stores, as newtypes.
//!
//! An id is a short type prefix, an underscore and a UUIDv7 in lowercase hex
//! (`tnt_0193a6…`): sortable by creation time, readable in logs, and
//! impossible to confuse across types — a key id pasted where a tenant id is
//! expected fails to parse. Once built, an id is always well-formed.

use std::fmt;

/// Why a string is not a valid id.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("not a valid {kind} id")]
pub struct InvalidId {
    kind: &'static str,
}

macro_rules! define_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this type starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A new, unique id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            /// Parses an id, accepting only the exact canonical form.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                let err = InvalidId { kind: $prefix };
                let hex = value
                    .strip_prefix($prefix)
                    .and_then(|rest| rest.strip_prefix('_'))
                    .ok_or(err.clone())?;
                let canonical = hex.len() == 32
                    && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
                if canonical { Ok(Self(value.to_owned())) } else { Err(err) }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
    };
}

define_id!(
    /// A tenant: the unit of isolation, billing and ownership.
    TenantId, "tnt"
);
define_id!(
    /// A person who can log in; may belong to several tenants.
    UserId, "usr"
);
define_id!(
    /// An API key (the id, not the secret).
    ApiKeyId, "key"
);
define_id!(
    /// An agent.
    AgentId, "agt"
);
define_id!(
    /// A sandbox (also its container's name on the worker).
    SandboxId, "sbx"
);

define_id!(
    /// A run: one command in a fresh sandbox, placed by the scheduler.
    RunId, "run"
);
define_id!(
    /// A worker node.
    WorkerId, "wrk"
);
define_id!(
    /// A sealed record of one gateway call's prompt and completion.
    TranscriptId, "gtr"
);
define_id!(
    /// A browser's login session.
    SessionId, "ses"
);
define_id!(
    /// An invitation to join a tenant.
    InvitationId, "inv"
);
define_id!(
    /// A conversation with an agent.
    ConversationId, "cnv"
);
define_id!(
    /// A message of a conversation.
    MessageId, "msg"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_back() {
        let id = TenantId::generate();
        assert_eq!(TenantId::parse(id.as_str()), Ok(id.clone()));
        assert!(id.as_str().starts_with("tnt_"));
    }

    #[test]
    fn ids_of_another_type_or_malformed_are_rejected() {
        let key = ApiKeyId::generate();
        assert!(TenantId::parse(key.as_str()).is_err());
        for bad in [
            "",
            "tnt_",
            "tnt",
            "tnt_XYZ",
            "tnt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6",
            "tnt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6B",
            "tnt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b7",
            "../tnt_0193a6b2c3d47e8f9a0b1c2d3e4f5a6b",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}

//! The authorisation vocabulary: roles of members and keys, and the scopes
//! an API key may carry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A member's (or key's) role in a tenant. Ordered: `Member < Admin < Owner`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Uses the tenant's agents and reads its data.
    Member,
    /// Also manages keys, members and settings.
    Admin,
    /// Also manages billing and can delete the tenant.
    Owner,
}

impl Role {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            "owner" => Ok(Role::Owner),
            _ => Err(UnknownName),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an API key may be used for.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The REST API under `/v1`, within the key's role.
    Api,
    /// The model gateway under `/gateway`.
    Gateway,
}

impl Scope {
    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Api => "api",
            Scope::Gateway => "gateway",
        }
    }
}

impl FromStr for Scope {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "api" => Ok(Scope::Api),
            "gateway" => Ok(Scope::Gateway),
            _ => Err(UnknownName),
        }
    }
}

/// A name that is not one of the known roles or scopes.
#[derive(Debug, thiserror::Error)]
#[error("unknown name")]
pub struct UnknownName;

/// A non-empty, duplicate-free, sorted set of scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// Builds a set; `None` if empty.
    pub fn new(mut scopes: Vec<Scope>) -> Option<Self> {
        scopes.sort();
        scopes.dedup();
        (!scopes.is_empty()).then_some(Self(scopes))
    }

    /// Whether the set holds `scope`.
    pub fn contains(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }

    /// The scopes, sorted.
    pub fn as_slice(&self) -> &[Scope] {
        &self.0
    }

    /// Stored form: names joined by spaces, as in OAuth.
    pub fn to_stored(&self) -> String {
        self.0
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Parses the stored form.
    pub fn from_stored(s: &str) -> Result<Self, UnknownName> {
        let scopes = s
            .split_whitespace()
            .map(Scope::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(scopes).ok_or(UnknownName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_by_power() {
        assert!(Role::Member < Role::Admin && Role::Admin < Role::Owner);
        for role in [Role::Member, Role::Admin, Role::Owner] {
            assert_eq!(role.as_str().parse::<Role>().unwrap(), role);
        }
    }

    #[test]
    fn scopes_round_trip_and_refuse_empty_or_unknown() {
        let scopes = Scopes::new(vec![Scope::Gateway, Scope::Api, Scope::Api]).unwrap();
        assert_eq!(scopes.to_stored(), "api gateway");
        assert_eq!(Scopes::from_stored("api gateway").unwrap(), scopes);
        assert!(Scopes::new(vec![]).is_none());
        assert!(Scopes::from_stored("").is_err());
        assert!(Scopes::from_stored("api root").is_err());
    }
}

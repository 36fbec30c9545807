//! What an API token may do: its scopes. Each route of the API needs exactly one scope,
//! stated in the OpenAPI document (the operation's security requirement and its text);
//! a token without it is answered 403 `scope_missing`, naming the scope.

use serde::{Deserialize, Serialize};

/// One permission of an API token. Scopes do not imply one another: a token that
/// approves and reads lists both.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Read wallets, requests, clusters, threshold keys, audits and presignatures
    /// (every GET).
    Read,
    /// Create requests: wallets, wallet imports, approver group changes, signatures,
    /// threshold keys and their imports, threshold signatures; resubmit a failed request.
    Request,
    /// Add admin approvals to requests.
    Approve,
    /// Operate the clusters: run key audits, make presignatures.
    Operate,
    /// Administer tokens, tenants and governance (reserved for the routes that do).
    Administer,
}

impl Scope {
    /// Every scope, from the least to the most powerful.
    pub const ALL: [Scope; 5] = [
        Scope::Read,
        Scope::Request,
        Scope::Approve,
        Scope::Operate,
        Scope::Administer,
    ];

    /// The snake_case name, as in configuration files and the OpenAPI document.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Request => "request",
            Scope::Approve => "approve",
            Scope::Operate => "operate",
            Scope::Administer => "administer",
        }
    }

    /// The scope named `s`, if it is one.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_as_serialized() {
        for s in Scope::ALL {
            assert_eq!(Scope::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_value(s).unwrap(),
                serde_json::Value::String(s.as_str().into())
            );
        }
        assert_eq!(Scope::parse("admin"), None);
    }
}

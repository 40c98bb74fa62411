//! Identifier newtypes. Each is parsed once, at the edge, and is valid forever
//! after: 1–128 characters of `[A-Za-z0-9._:-]` (SPEC §6 input limits).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RuleError;

/// Longest id accepted anywhere (session, participant, group, request).
pub const MAX_ID_LEN: usize = 128;

fn check_id(field: &str, raw: &str) -> Result<(), RuleError> {
    if raw.is_empty() {
        return Err(RuleError::invalid(field, "must not be empty"));
    }
    if raw.len() > MAX_ID_LEN {
        return Err(RuleError::invalid(
            field,
            format!("must be at most {MAX_ID_LEN} characters, got {}", raw.len()),
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        return Err(RuleError::invalid(
            field,
            format!("may only contain A-Z a-z 0-9 . _ : -, found {bad:?}"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Parses `raw`; the error names `field`.
            pub fn parse(field: &str, raw: &str) -> Result<Self, RuleError> {
                check_id(field, raw)?;
                Ok(Self(raw.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A session's id, unique within its tenant.
    SessionId
);
id_type!(
    /// A participant's id, unique within its session.
    ParticipantId
);
id_type!(
    /// A group's id, unique within its session.
    GroupId
);
id_type!(
    /// A caller's idempotency key for one mutation.
    RequestId
);
id_type!(
    /// The owner of sessions; sessions of different tenants never see each other.
    Tenant
);

impl Tenant {
    /// The tenant every caller has until authentication exists.
    pub fn default_tenant() -> Self {
        Self("default".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert!(SessionId::parse("session_id", "game-1:a_b.C").is_ok());
        assert!(SessionId::parse("session_id", &"x".repeat(128)).is_ok());
    }

    #[test]
    fn rejects_empty_long_and_foreign_characters_naming_the_field() {
        let e = SessionId::parse("session_id", "").unwrap_err();
        assert!(e.to_string().contains("session_id"), "{e}");
        let e =
            ParticipantId::parse("participants[3].participant_id", &"x".repeat(129)).unwrap_err();
        assert!(
            e.to_string().contains("participants[3].participant_id"),
            "{e}"
        );
        assert!(SessionId::parse("session_id", "a b").is_err());
        assert!(SessionId::parse("session_id", "é").is_err());
        assert!(SessionId::parse("session_id", "a/b").is_err());
    }
}

/// A session's address: its tenant and its id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub tenant: Tenant,
    pub id: SessionId,
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.id)
    }
}

//! Identifiers.
//!
//! Tenant, agent and principal ids are chosen by people and travel inside NATS
//! subjects, so each is validated to be exactly one safe subject token:
//! ASCII letters, digits, `-` and `_`, 1 to 64 bytes. Tree, mandate, command and
//! event ids are UUIDs (v7 when the engine generates them, so they sort by time).

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::Digest;
use uuid::Uuid;

use super::error::DomainError;

/// Longest accepted name id, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// Checks that `value` is one safe NATS subject token; `field` names the input
/// in the error.
pub fn validate_token(field: &'static str, value: &str) -> Result<(), DomainError> {
    let reason = if value.is_empty() {
        Some("must not be empty")
    } else if value.len() > MAX_NAME_LEN {
        Some("is longer than 64 bytes")
    } else if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Some("may contain only ASCII letters, digits, '-' and '_'")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(DomainError::InvalidId {
            field,
            value: truncate_for_error(value),
            reason: reason.to_string(),
        }),
    }
}

/// Keeps error messages bounded when a hostile caller sends a huge value.
pub(crate) fn truncate_for_error(value: &str) -> String {
    const MAX: usize = 80;
    if value.len() <= MAX {
        return value.to_string();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

/// Keeps a decoder's message bounded when it quotes a hostile value (an
/// unknown field named by 60 KiB, say): its start and its end (where the
/// decoder says what it expected and at which column) are kept, the middle
/// is cut.
pub(crate) fn bound_message(message: &str) -> String {
    const HEAD: usize = 160;
    const TAIL: usize = 160;
    if message.len() <= HEAD + TAIL {
        return message.to_string();
    }
    let mut head = HEAD;
    while !message.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = message.len() - TAIL;
    while !message.is_char_boundary(tail) {
        tail += 1;
    }
    format!(
        "{} … ({} bytes cut) … {}",
        &message[..head],
        tail - head,
        &message[tail..]
    )
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(
            #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
            String,
        );

        impl $name {
            /// Validates and wraps `value`.
            pub fn new(value: impl Into<String>) -> Result<Self, DomainError> {
                let value = value.into();
                validate_token($field, &value)?;
                Ok(Self(value))
            }

            /// The id as a string slice (also a valid NATS subject token).
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_id!(
    /// The isolation boundary. Every subject, query and check is scoped by it.
    TenantId,
    "tenant"
);
name_id!(
    /// A non-human actor with a stable id.
    AgentId,
    "agent"
);
name_id!(
    /// The human or system accountable for a root mandate.
    PrincipalId,
    "principal"
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(
            #[schemars(regex(
                pattern = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
            ))]
            pub Uuid,
        );

        impl $name {
            /// A fresh, time-ordered (v7) id.
            pub fn generate() -> Self {
                Self(Uuid::now_v7())
            }

            /// Parses a UUID; `field` names the input in the error.
            pub fn parse(value: &str) -> Result<Self, DomainError> {
                Uuid::parse_str(value).map(Self).map_err(|_| DomainError::InvalidId {
                    field: $field,
                    value: truncate_for_error(value),
                    reason: "is not a UUID".to_string(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Hyphenated lowercase: a valid NATS subject token.
                write!(f, "{}", self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

uuid_id!(
    /// A delegation tree: a root mandate and all its delegations; one event stream.
    TreeId,
    "tree"
);
uuid_id!(
    /// One mandate (a grant of scope to an agent).
    MandateId,
    "mandate"
);
uuid_id!(
    /// Idempotency key of a command: applied at most once.
    CommandId,
    "command_id"
);
uuid_id!(
    /// One event.
    EventId,
    "event_id"
);

impl CommandId {
    /// A command id derived deterministically from a name and a key, so that
    /// several engine instances deciding the same thing (an expiry, one step of
    /// a bulk operation, a mission completion) write one event: the log
    /// deduplicates on it.
    ///
    /// Derived ids are predictable, so they are UUIDs of version 8, which no
    /// command from outside may use ([`CommandId::is_reserved`]): otherwise a
    /// caller could spend the id of a mission completion or an expiry in
    /// advance, on a command of its own, and the engine's write would be
    /// refused as a reused command id, leaving the mandate live.
    pub fn derived(namespace: &str, key: &str) -> Self {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("mandate.command/{namespace}/{key}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// True for the ids only the engine derives (UUID version 8, see
    /// [`CommandId::derived`]): refused in commands from outside.
    pub fn is_reserved(&self) -> bool {
        self.0.get_version_num() == 8
    }
}

impl TreeId {
    /// The reserved id of a tenant's registry: the stream of tenant-level
    /// records that belong to no delegation tree (blocked agents and
    /// principals), on `mandate.evt.<tenant>.<registry id>` like any tree.
    ///
    /// It is a version-8 UUID over the SHA-256 of the tenant, so it never
    /// equals a real tree's id: those are version 5 (derived from an issue's
    /// command id), and generated ids are version 7. It holds no mandate, so
    /// no mandate command or check can address it.
    pub fn registry(tenant: &TenantId) -> Self {
        let digest = sha2::Sha256::digest(format!("mandate.registry/{tenant}").as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// Whether this is `tenant`'s registry (see [`TreeId::registry`]).
    pub fn is_registry_of(&self, tenant: &TenantId) -> bool {
        *self == Self::registry(tenant)
    }
}

impl EventId {
    /// The id of the `index`th event written by a command of `tenant`:
    /// deterministic, so a retried command produces byte-identical events, and
    /// distinct across tenants that happen to use the same command id (event
    /// ids deduplicate the signal stream).
    pub fn for_command(tenant: &TenantId, command: CommandId, index: usize) -> Self {
        Self(Uuid::new_v5(
            &command.0,
            format!("event/{tenant}/{index}").as_bytes(),
        ))
    }

    /// The id of the notice that a tree is quarantined at a log position:
    /// every instance that finds the bad record derives the same id, so the
    /// notice is stored once.
    pub fn for_quarantine(tree: TreeId, position: u64) -> Self {
        Self(Uuid::new_v5(
            &tree.0,
            format!("quarantine/{position}").as_bytes(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_names() {
        for ok in ["acme", "a", "A-b_9", &"x".repeat(64)] {
            assert!(TenantId::new(ok).is_ok(), "{ok} should be accepted");
        }
    }

    #[test]
    fn refuses_hostile_names_naming_field_and_value() {
        for bad in ["", "*", ">", "a.b", "a b", "é", &"x".repeat(65), "a\nb"] {
            let err = AgentId::new(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("agent"), "{msg}");
            assert!(matches!(err, DomainError::InvalidId { field: "agent", .. }));
        }
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<TenantId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("tenant"), "{err}");
        let ok: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(ok.as_str(), "acme");
    }

    #[test]
    fn uuid_ids_parse_and_name_field() {
        let err = MandateId::parse("nope").unwrap_err();
        assert!(err.to_string().contains("mandate"), "{err}");
        let id = MandateId::generate();
        assert_eq!(MandateId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn derived_command_ids_are_stable_and_distinct() {
        assert_eq!(
            CommandId::derived("expire", "m1"),
            CommandId::derived("expire", "m1")
        );
        assert_ne!(
            CommandId::derived("expire", "m1"),
            CommandId::derived("expire", "m2")
        );
        assert_ne!(
            CommandId::derived("expire/m", "1"),
            CommandId::derived("expire", "m1")
        );
    }

    #[test]
    fn derived_command_ids_are_reserved_and_generated_ones_are_not() {
        assert!(CommandId::derived("expire", "m1").is_reserved());
        assert!(!CommandId::generate().is_reserved());
        assert!(!CommandId(Uuid::new_v4()).is_reserved());
        assert!(!CommandId(Uuid::new_v5(&Uuid::NAMESPACE_OID, b"client key")).is_reserved());
    }
}

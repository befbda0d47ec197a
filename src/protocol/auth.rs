//! Request signing, part of the wire contract: what a client puts in the
//! `Mandate-Auth` header of a command (or of a mission completion) for a
//! tenant that requires authenticated actors.
//!
//! ```text
//! Mandate-Auth: v1 <kind>:<id> <hex HMAC-SHA256(secret, subject "\n" body)>
//! ```
//!
//! `<kind>:<id>` names the key (`principal:cfo`, `agent:research-lead`,
//! `admin:security`, `ticketing:jira`); for a command it must be the body's
//! `actor`. The MAC covers the subject (so a request cannot be moved to
//! another tenant or verb) and the exact body bytes. Which keys a tenant
//! accepts, and for what, is the engine's policy (`engine::auth`); this
//! module holds only the format, so a client signs without the engine.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::Actor;

/// The request header that carries the proof.
pub const AUTH_HEADER: &str = "Mandate-Auth";

/// Keys named `ticketing:<system>` belong to ticketing systems: they may only
/// publish mission completions.
pub const TICKETING_PREFIX: &str = "ticketing:";

/// `principal:cfo`, `agent:x`, `admin:y`; `None` for the engine's own actors.
pub fn actor_key(actor: &Actor) -> Option<String> {
    match actor {
        Actor::Principal(p) => Some(format!("principal:{p}")),
        Actor::Agent(a) => Some(format!("agent:{a}")),
        Actor::Admin(p) => Some(format!("admin:{p}")),
        Actor::System(_) => None,
    }
}

fn mac(secret: &[u8], subject: &str, body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts any key length");
    m.update(subject.as_bytes());
    m.update(b"\n");
    m.update(body);
    m
}

/// The header value proving `actor` sent `body` on `subject`; `None` for an
/// actor that cannot be authenticated (the engine's own).
pub fn sign(secret: &[u8], actor: &Actor, subject: &str, body: &[u8]) -> Option<String> {
    Some(sign_as(secret, &actor_key(actor)?, subject, body))
}

/// The header value proving the holder of key `key` (`<kind>:<id>`, e.g.
/// `ticketing:jira`) sent `body` on `subject`.
pub fn sign_as(secret: &[u8], key: &str, subject: &str, body: &[u8]) -> String {
    let tag = mac(secret, subject, body).finalize().into_bytes();
    let hex: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1 {key} {hex}")
}

/// A header value split into its key (`<kind>:<id>`) and hex MAC; `None`
/// unless it has the form `v1 <kind>:<id> <hex mac>`.
pub fn parse_header(header: &str) -> Option<(&str, &str)> {
    let parts: Vec<&str> = header.split(' ').collect();
    match parts.as_slice() {
        ["v1", who, tag] => Some((*who, *tag)),
        _ => None,
    }
}

/// Why a MAC does not prove a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("mac is not hex")]
    NotHex,
    #[error("mac does not match the subject and body under this key")]
    Mismatch,
}

/// Checks, in constant time, that the hex MAC `tag` is that of `subject` and
/// `body` under `secret`.
pub fn check_mac(secret: &[u8], subject: &str, body: &[u8], tag: &str) -> Result<(), ProofError> {
    let tag = decode_hex(tag).ok_or(ProofError::NotHex)?;
    mac(secret, subject, body)
        .verify_slice(&tag)
        .map_err(|_| ProofError::Mismatch)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PrincipalId;

    #[test]
    fn the_header_format_is_fixed_by_a_known_vector() {
        // HMAC-SHA256("s3cret", "mandate.cmd.acme.revoke\n{}"), computed
        // independently: a client in another language must get the same.
        let cfo = Actor::Principal(PrincipalId::new("cfo").unwrap());
        let h = sign(b"s3cret", &cfo, "mandate.cmd.acme.revoke", b"{}").unwrap();
        assert_eq!(
            h,
            "v1 principal:cfo 253a6e69b331d97e857453ad5a3aea0c166aff40dc449a47b48bd369a46a4e97"
        );
        let (who, tag) = parse_header(&h).unwrap();
        assert_eq!(who, "principal:cfo");
        assert_eq!(
            check_mac(b"s3cret", "mandate.cmd.acme.revoke", b"{}", tag),
            Ok(())
        );
        assert_eq!(
            check_mac(b"s3cret", "mandate.cmd.acme.pause", b"{}", tag),
            Err(ProofError::Mismatch)
        );
        assert_eq!(
            check_mac(b"s3cret", "mandate.cmd.acme.revoke", b"{}", "zz"),
            Err(ProofError::NotHex)
        );
        assert_eq!(parse_header("v2 principal:cfo ab"), None);
        assert_eq!(parse_header("v1 principal:cfo"), None);
    }
}

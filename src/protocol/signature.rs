//! Signed commands, part of the wire contract: what a client puts in the
//! `Mandate-Signature` header of a command to sign it with an Ed25519 key
//! registered in the tenant (or configured by the operator).
//!
//! ```text
//! Mandate-Signature: ed25519 <key_id> <base64url-no-pad signature>
//! ```
//!
//! The signed message is
//! `b"mandate-command-v1\n" + subject + b"\n" + canonical(body)`, where
//! `canonical(body)` is the body parsed as JSON and encoded again with object
//! keys sorted and no whitespace (as the hash chain encodes events; Python's
//! `json.dumps(o, sort_keys=True, separators=(",", ":"), ensure_ascii=False)`
//! gives the same bytes for commands). The key's owner must be the body's
//! actor. The engine records the signature, the subject and the body in
//! every event the command writes
//! ([`CommandSignature`]), so anyone with
//! the key ring re-verifies it ([`verify_recorded`]).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey};

use crate::domain::keys::{decode_public_key, CommandSignature, KeyId, KeyOwner};
use crate::domain::{Event, Registry};

/// The request header that carries a command's signature.
pub const SIGNATURE_HEADER: &str = "Mandate-Signature";

/// The scheme word of the header.
pub const SCHEME: &str = "ed25519";

/// What every signed message starts with: a signature over anything else
/// (a token, another protocol) is never taken for a command's.
pub const CONTEXT: &[u8] = b"mandate-command-v1\n";

/// Why a signature does not verify, or cannot be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{SIGNATURE_HEADER} must be '{SCHEME} <key_id> <base64url signature>'")]
    Format,
    #[error("{SIGNATURE_HEADER} names an invalid key id: {0}")]
    KeyId(String),
    #[error("the signature is not 64 bytes of base64url without padding")]
    Encoding,
    #[error("the body is not JSON: {0}")]
    Body(String),
    #[error("the public key {0}")]
    PublicKey(String),
    #[error("the signature does not match the subject and body under key {0}")]
    Mismatch(KeyId),
}

/// The body parsed as JSON and encoded with object keys sorted and no
/// whitespace.
pub fn canonical(body: &[u8]) -> Result<Vec<u8>, SignatureError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| SignatureError::Body(e.to_string()))?;
    Ok(canonical_value(&value))
}

fn canonical_value(value: &serde_json::Value) -> Vec<u8> {
    // serde_json's map is ordered by key: encoding a `Value` sorts.
    serde_json::to_vec(value).expect("values always serialize")
}

fn message(subject: &str, canonical_body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + subject.len() + 1 + canonical_body.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(subject.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(canonical_body);
    m
}

/// The signed message of `body` sent on `subject`.
pub fn signed_message(subject: &str, body: &[u8]) -> Result<Vec<u8>, SignatureError> {
    Ok(message(subject, &canonical(body)?))
}

/// The header value signing `body` on `subject` with `key`, registered as
/// `key_id`.
pub fn sign(
    key: &SigningKey,
    key_id: &KeyId,
    subject: &str,
    body: &[u8],
) -> Result<String, SignatureError> {
    let sig = key.sign(&signed_message(subject, body)?);
    Ok(format!(
        "{SCHEME} {key_id} {}",
        URL_SAFE_NO_PAD.encode(sig.to_bytes())
    ))
}

/// A header value split into its key id and signature.
pub fn parse_header(header: &str) -> Result<(KeyId, Signature), SignatureError> {
    let parts: Vec<&str> = header.split(' ').collect();
    let [SCHEME, key_id, sig] = parts.as_slice() else {
        return Err(SignatureError::Format);
    };
    let key_id = KeyId::new(*key_id).map_err(|e| SignatureError::KeyId(e.to_string()))?;
    let bytes: [u8; 64] = URL_SAFE_NO_PAD
        .decode(sig)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::Encoding)?;
    Ok((key_id, Signature::from_bytes(&bytes)))
}

/// Checks `sig` over the canonical `body` on `subject` under `public_key`
/// (base64url), strictly (no malleable signatures).
pub fn verify(
    public_key: &str,
    key_id: &KeyId,
    subject: &str,
    body: &[u8],
    sig: &Signature,
) -> Result<(), SignatureError> {
    verify_message(public_key, key_id, &signed_message(subject, body)?, sig)
}

fn verify_message(
    public_key: &str,
    key_id: &KeyId,
    message: &[u8],
    sig: &Signature,
) -> Result<(), SignatureError> {
    let key = decode_public_key(public_key).map_err(SignatureError::PublicKey)?;
    key.verify_strict(message, sig)
        .map_err(|_| SignatureError::Mismatch(key_id.clone()))
}

/// Re-verifies a signature recorded in an event under `public_key`
/// (base64url): the message is rebuilt from its subject and command.
pub fn verify_recorded(
    recorded: &CommandSignature,
    public_key: &str,
) -> Result<(), SignatureError> {
    let bytes: [u8; 64] = URL_SAFE_NO_PAD
        .decode(&recorded.value)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(SignatureError::Encoding)?;
    let message = message(&recorded.subject, &canonical_value(&recorded.command));
    verify_message(
        public_key,
        &recorded.key_id,
        &message,
        &Signature::from_bytes(&bytes),
    )
}

/// Re-verifies the signature `event` records, if any, against the key
/// ring as of the event: a key the operator configures (`configured`
/// answers its owner and public key) or one of `ring` registered before the
/// event and not revoked before it. The signature must be the event's
/// actor's, over a command of the event's tenant that is the event's
/// command (or, for a step the engine wrote for it, the one its correlation
/// names). `Ok(false)`: the event records no signature.
pub fn verify_event(
    event: &Event,
    ring: &Registry,
    configured: &dyn Fn(&KeyId) -> Option<(KeyOwner, String)>,
) -> Result<bool, String> {
    let Some(sig) = &event.signature else {
        return Ok(false);
    };
    if !sig.owner.is(&event.actor) {
        return Err(format!(
            "signed by {}'s key, but the event's actor is {}",
            sig.owner, event.actor
        ));
    }
    let field = |name: &str| sig.command.get(name).cloned().unwrap_or_default();
    if field("actor") != serde_json::to_value(&event.actor).unwrap_or_default()
        || field("tenant") != serde_json::Value::String(event.tenant.to_string())
    {
        return Err("the signed command is not the event's actor's in its tenant".into());
    }
    let id = field("command_id");
    let command_id = serde_json::Value::String(event.command_id.to_string());
    let serves = event
        .correlation_id
        .as_ref()
        .map(|c| serde_json::Value::String(c.clone()));
    if id != command_id && Some(&id) != serves.as_ref() {
        return Err(format!(
            "the signed command's id {id} is neither the event's command {} nor the one it serves",
            event.command_id
        ));
    }
    if !sig
        .subject
        .starts_with(&format!("mandate.cmd.{}.", event.tenant))
    {
        return Err(format!(
            "signed on subject {:?}, not a command subject of tenant {}",
            sig.subject, event.tenant
        ));
    }
    let public_key = match configured(&sig.key_id) {
        Some((owner, public_key)) if owner == sig.owner => public_key,
        Some((owner, _)) => {
            return Err(format!(
                "configured key {} belongs to {owner}, not {}",
                sig.key_id, sig.owner
            ))
        }
        None => {
            let key = ring
                .keys
                .get(&sig.key_id)
                .ok_or_else(|| format!("key {} is not in the tenant's ring", sig.key_id))?;
            if key.owner != sig.owner {
                return Err(format!(
                    "key {} belongs to {}, not {}",
                    sig.key_id, key.owner, sig.owner
                ));
            }
            if !key.valid_at(event.time) {
                return Err(format!(
                    "key {} was not valid at {} (registered {}, revoked {}, not after {})",
                    sig.key_id,
                    event.time,
                    key.registered_at,
                    key.revoked
                        .as_ref()
                        .map_or("never".to_string(), |r| r.at.to_string()),
                    key.not_after.map_or("unset".to_string(), |n| n.to_string()),
                ));
            }
            key.public_key.clone()
        }
    };
    verify_recorded(sig, &public_key).map_err(|e| e.to_string())?;
    Ok(true)
}

/// The public key of `key`, base64url without padding, as `register_key`
/// takes it.
pub fn public_key_text(key: &SigningKey) -> String {
    URL_SAFE_NO_PAD.encode(key.verifying_key().to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn a_signature_covers_the_subject_and_the_canonical_body_only() {
        let id = KeyId::new("cfo-2026").unwrap();
        let subject = "mandate.cmd.acme.revoke";
        let body = br#"{"type":"revoke", "actor":{"kind":"principal","id":"cfo"}}"#;
        let h = sign(&key(), &id, subject, body).unwrap();
        let (kid, sig) = parse_header(&h).unwrap();
        assert_eq!(kid, id);
        let pk = public_key_text(&key());
        assert_eq!(verify(&pk, &id, subject, body, &sig), Ok(()));
        // Key order and whitespace are not part of what is signed.
        let same = br#"{ "actor":{"id":"cfo","kind":"principal"},"type":"revoke"}"#;
        assert_eq!(verify(&pk, &id, subject, same, &sig), Ok(()));
        assert_eq!(
            verify(&pk, &id, "mandate.cmd.acme.pause", body, &sig),
            Err(SignatureError::Mismatch(id.clone()))
        );
        let other = br#"{"type":"revoke","actor":{"kind":"principal","id":"cto"}}"#;
        assert_eq!(
            verify(&pk, &id, subject, other, &sig),
            Err(SignatureError::Mismatch(id.clone()))
        );
        let wrong = public_key_text(&SigningKey::from_bytes(&[8u8; 32]));
        assert_eq!(
            verify(&wrong, &id, subject, body, &sig),
            Err(SignatureError::Mismatch(id.clone()))
        );
        assert_eq!(
            verify(&pk, &id, subject, b"not json", &sig),
            Err(SignatureError::Body(
                "expected ident at line 1 column 2".into()
            ))
        );
    }

    #[test]
    fn the_message_format_is_fixed() {
        assert_eq!(
            signed_message("mandate.cmd.acme.pause", br#"{"b": 1, "a": [true, null]}"#).unwrap(),
            b"mandate-command-v1\nmandate.cmd.acme.pause\n{\"a\":[true,null],\"b\":1}".to_vec()
        );
    }

    #[test]
    fn a_malformed_header_is_refused_with_its_reason() {
        assert_eq!(parse_header("ed25519 k"), Err(SignatureError::Format));
        assert_eq!(
            parse_header("rsa k AAAA").unwrap_err(),
            SignatureError::Format
        );
        assert!(matches!(
            parse_header("ed25519 bad/id AAAA"),
            Err(SignatureError::KeyId(_))
        ));
        assert_eq!(
            parse_header("ed25519 k AAAA").unwrap_err(),
            SignatureError::Encoding
        );
    }

    #[test]
    fn a_recorded_signature_verifies_from_its_subject_and_command() {
        let id = KeyId::new("k1").unwrap();
        let subject = "mandate.cmd.acme.pause";
        let body = br#"{"type":"pause","mandate":"x"}"#;
        let h = sign(&key(), &id, subject, body).unwrap();
        let value = h.rsplit(' ').next().unwrap().to_string();
        let mut recorded = CommandSignature {
            key_id: id,
            owner: crate::domain::KeyOwner::new("principal:cfo").unwrap(),
            alg: crate::domain::keys::SignatureAlg::EdDSA,
            value,
            subject: subject.into(),
            command: serde_json::from_slice(body).unwrap(),
        };
        let pk = public_key_text(&key());
        assert_eq!(verify_recorded(&recorded, &pk), Ok(()));
        recorded.command["mandate"] = "y".into();
        assert!(verify_recorded(&recorded, &pk).is_err());
    }
}

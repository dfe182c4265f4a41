//! The cluster's SCRAM users (`kreachctl users`, issue 13): salted credentials as Kafka stores
//! them (RFC 5802; Kafka's AlterUserScramCredentials takes exactly these), made by kreachctl from
//! a password that never leaves it, kept by the coordinator and released to every broker, whose
//! agent keeps them in Kafka.
//!
//! Owns making a credential ([`salt_password`], on the operator's machine), checking one the
//! coordinator is handed ([`check`]), and the stored record. Does not talk to Kafka (the agents
//! do) or roll anything out ([`crate::core`]).

use std::num::NonZeroU32;

use kreach_domain::desired::{from_hex as unhex, to_hex as hex, ScramUser};
use serde::{Deserialize, Serialize};

/// Kafka's bounds on SCRAM iterations (ScramMechanism: 4096 minimum, 16384 maximum).
pub const MIN_ITERATIONS: u32 = 4096;
pub const MAX_ITERATIONS: u32 = 16384;
/// What `kreachctl users add` uses unless told otherwise.
pub const DEFAULT_ITERATIONS: u32 = 8192;
pub const MECHANISMS: [&str; 2] = ["SCRAM-SHA-256", "SCRAM-SHA-512"];

/// A user as the coordinator keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredUser {
    pub user: ScramUser,
    pub added_ms: u64,
}

fn algorithm(mechanism: &str) -> Option<(ring::pbkdf2::Algorithm, usize)> {
    match mechanism {
        "SCRAM-SHA-256" => Some((ring::pbkdf2::PBKDF2_HMAC_SHA256, 32)),
        "SCRAM-SHA-512" => Some((ring::pbkdf2::PBKDF2_HMAC_SHA512, 64)),
        _ => None,
    }
}

/// The credential for `password`: a fresh 32-byte salt and PBKDF2-HMAC over it, as Kafka's
/// ScramFormatter computes the salted password.
pub fn salt_password(
    name: &str,
    mechanism: &str,
    iterations: u32,
    password: &str,
) -> Result<ScramUser, String> {
    let (algorithm, length) = algorithm(mechanism)
        .ok_or_else(|| format!("mechanism {mechanism:?}: use {}", MECHANISMS.join(" or ")))?;
    if password.is_empty() {
        return Err("the password is empty".to_string());
    }
    let rounds = NonZeroU32::new(iterations)
        .filter(|_| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations))
        .ok_or_else(|| {
            format!("iterations {iterations}: Kafka takes {MIN_ITERATIONS} to {MAX_ITERATIONS}")
        })?;
    let mut salt = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| "the system has no random numbers for a salt".to_string())?;
    let mut salted = vec![0u8; length];
    ring::pbkdf2::derive(algorithm, rounds, &salt, password.as_bytes(), &mut salted);
    let user = ScramUser {
        name: name.to_string(),
        mechanism: mechanism.to_string(),
        iterations,
        salt: hex(&salt),
        salted_password: hex(&salted),
    };
    check(&user)?;
    Ok(user)
}

/// Whether `user` is one Kafka would take: a name, a known mechanism, iterations within Kafka's
/// bounds, a salt and a salted password of the mechanism's length. Every problem at once.
pub fn check(user: &ScramUser) -> Result<(), String> {
    let mut problems = Vec::new();
    if user.name.is_empty() {
        problems.push("the user name is empty".to_string());
    }
    if user
        .name
        .chars()
        .any(|c| c.is_control() || c == ',' || c == '=')
    {
        problems.push(format!(
            "user name {:?}: no control characters, ',' or '=' (SCRAM escapes them; kreach does not)",
            user.name
        ));
    }
    match algorithm(&user.mechanism) {
        None => problems.push(format!(
            "mechanism {:?}: use {}",
            user.mechanism,
            MECHANISMS.join(" or ")
        )),
        Some((_, length)) => {
            if unhex(&user.salted_password).map(|b| b.len()) != Some(length) {
                problems.push(format!(
                    "the salted password is not {length} bytes of hex for {}",
                    user.mechanism
                ));
            }
        }
    }
    if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&user.iterations) {
        problems.push(format!(
            "iterations {}: Kafka takes {MIN_ITERATIONS} to {MAX_ITERATIONS}",
            user.iterations
        ));
    }
    if unhex(&user.salt).is_none_or(|salt| salt.is_empty()) {
        problems.push("the salt is not hex".to_string());
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The bytes of a hex field already [`check`]ed (empty if it is not hex).
pub fn bytes(text: &str) -> Vec<u8> {
    unhex(text).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_pbkdf2_of_the_password_over_a_fresh_salt() {
        let user = salt_password("app", "SCRAM-SHA-512", 4096, "s3cret").unwrap();
        assert_eq!(user.salted_password.len(), 128);
        assert!(!user.salted_password.contains("s3cret"));
        // Recomputed from the same salt, the same salted password: what Kafka will check.
        let mut again = vec![0u8; 64];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            NonZeroU32::new(4096).unwrap(),
            &bytes(&user.salt),
            b"s3cret",
            &mut again,
        );
        assert_eq!(hex(&again), user.salted_password);
        let other = salt_password("app", "SCRAM-SHA-512", 4096, "s3cret").unwrap();
        assert_ne!(other.salt, user.salt, "every credential gets its own salt");
    }

    #[test]
    fn a_credential_kafka_would_refuse_is_refused_with_every_problem() {
        let bad = ScramUser {
            name: "a,b".into(),
            mechanism: "SCRAM-SHA-1".into(),
            iterations: 10,
            salt: "zz".into(),
            salted_password: "00".into(),
        };
        let error = check(&bad).unwrap_err();
        for part in ["user name", "mechanism", "iterations 10", "salt"] {
            assert!(error.contains(part), "{error}");
        }
        assert!(salt_password("app", "SCRAM-SHA-256", 4096, "").is_err());
    }
}

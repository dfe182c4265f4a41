//! The client side of a SCRAM login (RFC 5802; SHA-256/512 as RFC 7677 and Kafka's KIP-84 use
//! them), for the reachability check: a client with credentials logs in as a Kafka client would.
//!
//! Pure: messages in, messages out; the transport is [`crate::kafka`]'s SaslHandshake and
//! SaslAuthenticate. The password is only ever used to derive the proof; nothing here logs.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};

/// A SCRAM mechanism's primitives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    pub fn from_name(name: &str) -> Option<Mechanism> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            "SCRAM-SHA-512" => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn parts(
        self,
    ) -> (
        pbkdf2::Algorithm,
        hmac::Algorithm,
        &'static digest::Algorithm,
        usize,
    ) {
        match self {
            Mechanism::Sha256 => (
                pbkdf2::PBKDF2_HMAC_SHA256,
                hmac::HMAC_SHA256,
                &digest::SHA256,
                32,
            ),
            Mechanism::Sha512 => (
                pbkdf2::PBKDF2_HMAC_SHA512,
                hmac::HMAC_SHA512,
                &digest::SHA512,
                64,
            ),
        }
    }
}

/// A login in progress: the first message was sent, the server's first answer is awaited.
pub struct ScramClient {
    mechanism: Mechanism,
    password: String,
    client_first_bare: String,
    nonce: String,
}

/// After the client's final message: what the server must prove in its final one.
pub struct AwaitingServerFinal {
    expected_signature: Vec<u8>,
}

/// `=` and `,` in a user name as SCRAM writes them.
fn sasl_name(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

impl ScramClient {
    /// Start a login as `user` with `nonce` (printable, no comma; random in real use).
    pub fn new(mechanism: Mechanism, user: &str, password: &str, nonce: &str) -> ScramClient {
        ScramClient {
            mechanism,
            password: password.to_string(),
            client_first_bare: format!("n={},r={nonce}", sasl_name(user)),
            nonce: nonce.to_string(),
        }
    }

    /// A fresh random nonce (base64 of 24 random bytes).
    pub fn random_nonce() -> Result<String, String> {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| "no random numbers for a SCRAM nonce".to_string())?;
        Ok(BASE64.encode(bytes))
    }

    /// The client's first message (no channel binding, no authorization identity).
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Answer the server's first message with the client's final one (carrying the proof).
    pub fn client_final(self, server_first: &str) -> Result<(String, AwaitingServerFinal), String> {
        let field = |key: &str| {
            server_first
                .split(',')
                .find_map(|part| part.strip_prefix(key))
                .ok_or_else(|| format!("the server's first SCRAM message has no {key}"))
        };
        let nonce = field("r=")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() <= self.nonce.len() {
            return Err("the server's SCRAM nonce does not extend ours".to_string());
        }
        let salt = BASE64
            .decode(field("s=")?)
            .map_err(|_| "the server's SCRAM salt is not base64".to_string())?;
        let iterations: u32 = field("i=")?
            .parse()
            .map_err(|_| "the server's SCRAM iteration count is not a number".to_string())?;
        let rounds = std::num::NonZeroU32::new(iterations)
            .ok_or("the server asked for 0 SCRAM iterations")?;
        let (pbkdf2_algorithm, hmac_algorithm, digest_algorithm, length) = self.mechanism.parts();
        let mut salted = vec![0u8; length];
        pbkdf2::derive(
            pbkdf2_algorithm,
            rounds,
            &salt,
            self.password.as_bytes(),
            &mut salted,
        );
        let salted_key = hmac::Key::new(hmac_algorithm, &salted);
        let client_key = hmac::sign(&salted_key, b"Client Key");
        let stored_key = digest::digest(digest_algorithm, client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = hmac::sign(
            &hmac::Key::new(hmac_algorithm, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(key, sig)| key ^ sig)
            .collect();
        let server_key = hmac::sign(&salted_key, b"Server Key");
        let expected = hmac::sign(
            &hmac::Key::new(hmac_algorithm, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        Ok((
            format!("{without_proof},p={}", BASE64.encode(proof)),
            AwaitingServerFinal {
                expected_signature: expected.as_ref().to_vec(),
            },
        ))
    }
}

impl AwaitingServerFinal {
    /// Check the server's final message: it proves it knows the credential too.
    pub fn verify(self, server_final: &str) -> Result<(), String> {
        if let Some(error) = server_final.strip_prefix("e=") {
            return Err(format!("the server refused the login: {error}"));
        }
        let signature = server_final
            .split(',')
            .find_map(|part| part.strip_prefix("v="))
            .and_then(|text| BASE64.decode(text).ok())
            .ok_or("the server's final SCRAM message has no signature")?;
        if signature == self.expected_signature {
            Ok(())
        } else {
            Err(
                "the server's SCRAM signature is wrong: it does not hold this credential"
                    .to_string(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677, section 3: the SCRAM-SHA-256 example exchange.
    #[test]
    fn the_rfc_7677_example_exchange_is_reproduced() {
        let client = ScramClient::new(Mechanism::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first =
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, awaiting) = client.client_final(server_first).unwrap();
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        awaiting
            .verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
    }

    #[test]
    fn a_server_that_does_not_hold_the_credential_or_refuses_is_an_error() {
        let client = ScramClient::new(Mechanism::Sha512, "app", "pw", "abc");
        let error = client.client_final("r=xyz,s=AAAA,i=4096").err().unwrap();
        assert!(error.contains("nonce"), "{error}");
        let client = ScramClient::new(Mechanism::Sha512, "app", "pw", "abc");
        let (_, awaiting) = client.client_final("r=abcdef,s=AAAA,i=4096").unwrap();
        assert!(awaiting.verify("v=AAAA").unwrap_err().contains("wrong"));
        let client = ScramClient::new(Mechanism::Sha512, "app", "pw", "abc");
        let (_, awaiting) = client.client_final("r=abcdef,s=AAAA,i=4096").unwrap();
        assert!(awaiting
            .verify("e=invalid-proof")
            .unwrap_err()
            .contains("invalid-proof"));
    }
}

//! Certificates for Kafka's TLS listeners: a Kafka CA (separate from kreach's control-plane CA in
//! [`crate::tls`]), broker certificates issued for a public key the broker's agent generated and
//! reported (the private key never leaves the broker's host), the SANs a broker's certificate must
//! carry for what it advertises, and reading an issued certificate back.
//!
//! Owns: key and certificate generation and parsing, as PEM text. Does not own: where the CA or
//! the key store files live, or when a certificate is renewed (the coordinator and the agent).

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

/// How long the Kafka CA kreach creates is valid: ten years, far beyond any broker certificate.
pub const KAFKA_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this long before they are issued, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaTlsError {
    #[error("cannot generate {what}: {reason}")]
    Generate { what: String, reason: String },
    #[error("{what} is not usable: {reason}")]
    Bad { what: String, reason: String },
}

fn generate(what: &str) -> impl FnOnce(rcgen::Error) -> KafkaTlsError + '_ {
    move |error| KafkaTlsError::Generate {
        what: what.to_string(),
        reason: error.to_string(),
    }
}

fn bad(what: &str, reason: impl ToString) -> KafkaTlsError {
    KafkaTlsError::Bad {
        what: what.to_string(),
        reason: reason.to_string(),
    }
}

/// A fresh private key (ECDSA P-256) as PKCS#8 PEM, as Kafka's PEM key store reads it.
pub fn new_private_key_pem() -> Result<String, KafkaTlsError> {
    Ok(KeyPair::generate()
        .map_err(generate("a private key"))?
        .serialize_pem())
}

/// The public key (SubjectPublicKeyInfo PEM) of a private key PEM.
pub fn public_key_pem(private_key_pem: &str) -> Result<String, KafkaTlsError> {
    let key = KeyPair::from_pem(private_key_pem).map_err(|e| bad("the private key", e))?;
    Ok(key.public_key_pem())
}

/// A Kafka CA: certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaCa {
    pub cert_pem: String,
    pub key_pem: String,
}

fn to_offset(time: SystemTime) -> OffsetDateTime {
    OffsetDateTime::from(time)
}

/// Unix milliseconds of `time` (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl KafkaCa {
    /// A new self-signed CA for `cluster`, valid for [`KAFKA_CA_LIFETIME`] from `now`.
    pub fn create(cluster: &str, now: SystemTime) -> Result<KafkaCa, KafkaTlsError> {
        let key = KeyPair::generate().map_err(generate("the Kafka CA key"))?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "kreach");
        name.push(DnType::OrganizationalUnitName, "kafka");
        name.push(DnType::CommonName, format!("kreach Kafka CA {cluster}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + KAFKA_CA_LIFETIME);
        params.serial_number = Some(serial(now, b"ca"));
        let cert = params
            .self_signed(&key)
            .map_err(generate("the Kafka CA certificate"))?;
        Ok(KafkaCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Check that `cert_pem` is a CA certificate and `key_pem` its key (the operator's CA files).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<KafkaCa, KafkaTlsError> {
        let ca = KafkaCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        };
        ca.issuer()?;
        Ok(ca)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, KafkaTlsError> {
        let key = KeyPair::from_pem(&self.key_pem).map_err(|e| bad("the Kafka CA key", e))?;
        let cert_public = inspect(&self.cert_pem)?.public_key_der;
        if !same_public_key(&key.public_key_pem(), &cert_public) {
            return Err(bad(
                "the Kafka CA key",
                "it does not belong to the CA certificate",
            ));
        }
        Issuer::from_ca_cert_pem(&self.cert_pem, key)
            .map_err(|e| bad("the Kafka CA certificate", e))
    }

    /// A broker certificate for `public_key_pem` (the broker agent's key), valid from `now` for
    /// `lifetime`, with `sans` (IP addresses become IP SANs, the rest DNS SANs), for TLS servers
    /// and, on the inter-broker listener, clients. The chain is the certificate then the CA.
    pub fn issue(
        &self,
        common_name: &str,
        public_key_pem: &str,
        sans: &[String],
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<IssuedCertificate, KafkaTlsError> {
        if sans.is_empty() {
            return Err(bad("the certificate request", "no SAN to cover"));
        }
        let public = SubjectPublicKeyInfo::from_pem(public_key_pem)
            .map_err(|e| bad("the broker's public key", e))?;
        let issuer = self.issuer()?;
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "kreach");
        name.push(DnType::OrganizationalUnitName, "kafka");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.subject_alt_names = sans
            .iter()
            .map(|san| match san.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => san
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|_| bad("a SAN", format!("{san:?} is not an ASCII DNS name"))),
            })
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let not_after = now + lifetime;
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(not_after);
        params.serial_number = Some(serial(now, public_key_pem.as_bytes()));
        let cert = params
            .signed_by(&public, &issuer)
            .map_err(generate("the broker certificate"))?;
        let leaf = cert.pem();
        let info = inspect(&leaf)?;
        Ok(IssuedCertificate {
            chain_pem: format!("{leaf}{}", self.cert_pem),
            sans: info.sans,
            serial: info.serial,
            not_after_ms: unix_ms(not_after),
        })
    }
}

/// A broker certificate as issued: the PEM chain (leaf, then CA) and what it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    pub chain_pem: String,
    pub sans: Vec<String>,
    pub serial: String,
    pub not_after_ms: u64,
}

/// What a certificate says, read back from its PEM (the first certificate of a chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// DNS names as written, IP addresses in their usual text form.
    pub sans: Vec<String>,
    /// Hex, as `openssl x509 -serial` prints it.
    pub serial: String,
    pub not_after_ms: u64,
    /// SubjectPublicKeyInfo, DER.
    pub public_key_der: Vec<u8>,
}

fn first_der(pem_text: &str, what: &str) -> Result<Vec<u8>, KafkaTlsError> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(pem_text.as_bytes()) {
        let pem = pem.map_err(|e| bad(what, e))?;
        if pem.label == "CERTIFICATE" {
            return Ok(pem.contents);
        }
    }
    Err(bad(what, "no CERTIFICATE block"))
}

/// Read the first certificate of `chain_pem`.
pub fn inspect(chain_pem: &str) -> Result<CertificateInfo, KafkaTlsError> {
    inspect_der(&first_der(chain_pem, "the certificate")?)
}

/// Read one DER certificate, e.g. the one a TLS peer presented.
pub fn inspect_der(der: &[u8]) -> Result<CertificateInfo, KafkaTlsError> {
    let what = "the certificate";
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| bad(what, e))?;
    let mut sans = Vec::new();
    if let Ok(Some(extension)) = cert.subject_alternative_name() {
        for name in &extension.value.general_names {
            match name {
                GeneralName::DNSName(dns) => sans.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => sans.push(IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()).to_string()),
                    16 => {
                        sans.push(IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()).to_string())
                    }
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let not_after = cert.validity().not_after.timestamp();
    let spki = cert.public_key().raw;
    Ok(CertificateInfo {
        sans,
        serial: cert.raw_serial_as_string().replace(':', ""),
        not_after_ms: u64::try_from(not_after).unwrap_or(0).saturating_mul(1000),
        public_key_der: spki.to_vec(),
    })
}

/// A serial number unique per issue: the issue time in nanoseconds and a hash of `salt`, positive.
fn serial(now: SystemTime, salt: &[u8]) -> SerialNumber {
    use sha2::Digest as _;
    let nanos = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&(nanos as u64).to_be_bytes());
    bytes.extend_from_slice(&sha2::Sha256::digest(salt)[..8]);
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

/// Whether `public_key_pem` (a PUBLIC KEY block) is the key whose SubjectPublicKeyInfo DER is
/// `der`.
pub fn same_public_key(public_key_pem: &str, der: &[u8]) -> bool {
    x509_parser::pem::Pem::iter_from_buffer(public_key_pem.as_bytes())
        .filter_map(Result::ok)
        .any(|pem| pem.label == "PUBLIC KEY" && pem.contents == der)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_certificate_is_issued_for_the_agents_key_with_every_san_and_verifies() {
        let now = SystemTime::now();
        let ca = KafkaCa::create("c", now).unwrap();
        let broker_key = new_private_key_pem().unwrap();
        let public = public_key_pem(&broker_key).unwrap();
        let sans = vec![
            "emr-worker-1.c".to_string(),
            "emr-worker-1".to_string(),
            "198.19.0.11".to_string(),
            "2001:db8::11".to_string(),
        ];
        let lifetime = Duration::from_secs(90 * 86_400);
        let issued = ca.issue("broker 1", &public, &sans, now, lifetime).unwrap();
        assert_eq!(issued.sans, sans);
        assert!(issued.chain_pem.ends_with(&ca.cert_pem));
        let info = inspect(&issued.chain_pem).unwrap();
        assert!(same_public_key(&public, &info.public_key_der));
        assert!((info.not_after_ms as i64 - unix_ms(now + lifetime) as i64).abs() < 1000);
        // Signed by the CA: x509-parser verifies the signature with the CA's key.
        let leaf = first_der(&issued.chain_pem, "leaf").unwrap();
        let ca_der = first_der(&ca.cert_pem, "ca").unwrap();
        let (_, leaf) = x509_parser::parse_x509_certificate(&leaf).unwrap();
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        leaf.verify_signature(Some(ca_cert.public_key())).unwrap();
        // A second issue for the same key has another serial.
        let again = ca
            .issue(
                "broker 1",
                &public,
                &sans,
                now + Duration::from_secs(1),
                lifetime,
            )
            .unwrap();
        assert_ne!(again.serial, issued.serial);
    }

    #[test]
    fn a_ca_whose_key_does_not_match_is_refused() {
        let now = SystemTime::now();
        let one = KafkaCa::create("c", now).unwrap();
        let other = KafkaCa::create("c", now).unwrap();
        let error = KafkaCa::from_pem(&one.cert_pem, &other.key_pem).unwrap_err();
        assert!(error.to_string().contains("does not belong"), "{error}");
        assert!(KafkaCa::from_pem(&one.cert_pem, &one.key_pem).is_ok());
        let error = one
            .issue(
                "b",
                "not a key",
                &["b".into()],
                now,
                Duration::from_secs(3600),
            )
            .unwrap_err();
        assert!(error.to_string().contains("public key"), "{error}");
    }
}

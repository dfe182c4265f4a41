//! Why a client cannot reach a broker: the one vocabulary of the reachability matrix, shared by
//! the agent that checks (it classifies what went wrong) and the coordinator that shows and acts on
//! it (a public client timed out is told about the allowlist). On the wire a failure is its short
//! text ([`Failure::reason`]); [`Failure::from_reason`] reads it back at the edge. Pure.

/// Why an endpoint is not reachable. The short text ([`Failure::reason`]) is what the matrix shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    /// The system resolver has no address for the advertised name.
    DoesNotResolve,
    /// The network says there is no way there (EHOSTUNREACH, ENETUNREACH, ...).
    NoRoute,
    /// Something answered and refused the connection: nothing listens on that port.
    Refused,
    /// Nothing answered in time: typically a packet filter dropping this source.
    TimedOut,
    /// Another broker (or another cluster's broker) is behind the address.
    WrongBroker,
    /// The broker is in the spec but no metadata advertises it.
    NotAdvertised,
    /// A connection was made, but what is there does not answer Kafka's requests.
    NotKafka,
    /// Any other connect error.
    CannotConnect,
    /// TLS: the certificate is not valid for the advertised name or address.
    CertificateNotForHost,
    /// TLS: the certificate is not signed by the Kafka CA this host trusts.
    UnknownCa,
    /// TLS: the certificate has expired.
    CertificateExpired,
    /// TLS: the handshake failed otherwise (nothing speaks TLS there, ...).
    TlsFailed,
    /// SASL: the SCRAM login with this host's credentials failed.
    AuthenticationFailed,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::DoesNotResolve => "does not resolve",
            Failure::NoRoute => "no route",
            Failure::Refused => "refused",
            Failure::TimedOut => "timed out",
            Failure::WrongBroker => "wrong broker",
            Failure::NotAdvertised => "not advertised",
            Failure::NotKafka => "not kafka",
            Failure::CannotConnect => "cannot connect",
            Failure::CertificateNotForHost => "certificate does not cover it",
            Failure::UnknownCa => "unknown CA",
            Failure::CertificateExpired => "expired",
            Failure::TlsFailed => "tls failed",
            Failure::AuthenticationFailed => "authentication failed",
        }
    }
}

/// Every failure, for [`Failure::from_reason`].
const ALL: [Failure; 13] = [
    Failure::DoesNotResolve,
    Failure::NoRoute,
    Failure::Refused,
    Failure::TimedOut,
    Failure::WrongBroker,
    Failure::NotAdvertised,
    Failure::NotKafka,
    Failure::CannotConnect,
    Failure::CertificateNotForHost,
    Failure::UnknownCa,
    Failure::CertificateExpired,
    Failure::TlsFailed,
    Failure::AuthenticationFailed,
];

impl Failure {
    /// The failure a reported reason names; None for an empty or unknown reason (a newer agent's).
    pub fn from_reason(reason: &str) -> Option<Failure> {
        ALL.into_iter().find(|failure| failure.reason() == reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_its_failure() {
        for failure in ALL {
            assert_eq!(Failure::from_reason(failure.reason()), Some(failure));
        }
        assert_eq!(Failure::from_reason("timed out"), Some(Failure::TimedOut));
        assert_eq!(Failure::from_reason(""), None);
        assert_eq!(Failure::from_reason("something new"), None);
    }
}

//! How a follower coordinator (etcd store, issue 16) says it does not lead, and how agents and
//! kreachctl read it: `UNAVAILABLE` with a message starting `not the leader` and, when it knows
//! one, the leader's URL in the `kreach-leader` metadata.

/// The metadata key in which a follower coordinator names the leader's URL.
pub const LEADER_METADATA: &str = "kreach-leader";

/// How a follower's answer starts.
pub const NOT_THE_LEADER: &str = "not the leader";

/// Whether `status` is a coordinator's "not the leader" answer (it runs, but does not lead now).
pub fn is_not_the_leader(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message().starts_with(NOT_THE_LEADER)
}

/// The leader's URL a "not the leader" answer names, if it names one.
pub fn leader_of(status: &tonic::Status) -> Option<String> {
    if !is_not_the_leader(status) {
        return None;
    }
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|value| value.to_str().ok())
        .map(|url| url.trim().to_string())
        .filter(|url| !url.is_empty())
}

/// Two spellings of one coordinator URL (a trailing `/` aside, scheme and host in any case).
pub fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

//! Leader election on etcd (`[store] kind = "etcd"`): several coordinators share one etcd, one
//! leads (holds the core, releases steps, serves agents and kreachctl), the others follow.
//!
//! Owns: campaigning, holding the leader lease, and what a follower answers. Does not own: the
//! fencing of writes (every store write checks the leader key's create revision inside etcd, see
//! [`crate::etcd_store`]) or what the leader does.
//!
//! The leader key `PREFIX/leader` holds the leader's URL and is attached to its lease. A candidate
//! creates it only when absent (create revision 0); the revision of that creation is its fencing
//! token. The leader renews its lease every `lease_ttl / 5`; when it cannot renew it for two
//! thirds of the TTL, or etcd says the lease is gone, it stops leading before etcd can have
//! handed the key to another coordinator. A follower answers every call with `UNAVAILABLE`,
//! `not the leader: ...` and the leader's URL in the `kreach-leader` metadata, so agents and
//! kreachctl move on to it.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use kreach_etcd::{Compare, Op, Txn};
use tokio::sync::watch;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::etcd_store::{EtcdHandle, Fence};

pub use kreach_proto::leader::LEADER_METADATA;

/// How often a follower looks whether the leader key is free.
const POLL: Duration = Duration::from_millis(200);

/// What a coordinator that does not lead knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Campaigning, nothing heard from etcd yet.
    Starting,
    /// Another coordinator leads, at this URL.
    Follows(String),
    /// No coordinator can lead: etcd's answer says why.
    NoLeader(String),
}

impl Standing {
    /// The refusal a follower answers every call with.
    pub fn refusal(&self) -> tonic::Status {
        let (message, leader) = match self {
            Standing::Starting => (
                "not the leader: this coordinator is starting and campaigning".to_string(),
                None,
            ),
            Standing::Follows(url) => (
                format!("not the leader: this coordinator follows; the leader is at {url}"),
                Some(url.as_str()),
            ),
            Standing::NoLeader(why) => (
                format!("not the leader: no coordinator leads ({why})"),
                None,
            ),
        };
        let mut metadata = tonic::metadata::MetadataMap::new();
        if let Some(value) = leader.and_then(|url| url.parse().ok()) {
            metadata.insert(LEADER_METADATA, value);
        }
        tonic::Status::with_metadata(tonic::Code::Unavailable, message, metadata)
    }
}

/// A won election: the fencing token, with the lease that keeps it.
#[derive(Clone, Debug)]
pub struct Won {
    pub fence: Fence,
    /// When the lease was last renewed (the request's sending, so no later than etcd's own
    /// renewal): it lasts at least the TTL from here.
    pub renewed: Instant,
}

/// Campaign until elected as `me` (the URL clients reach this coordinator at), telling
/// `standing` who leads meanwhile. Run it on the etcd runtime ([`EtcdHandle::spawn`]), as every
/// etcd call of the coordinator: the client's connections live on the runtime that first polls
/// them, and the main runtime's workers block on store calls.
pub async fn campaign(
    handle: Arc<EtcdHandle>,
    me: String,
    ttl: Duration,
    standing: watch::Sender<Standing>,
) -> Won {
    let client = handle.client().clone();
    let key = handle.leader_key();
    let ttl_secs = ttl.as_secs().max(1) as i64;
    let mut said = None::<String>;
    let mut note = |standing_now: Standing| {
        let text = format!("{standing_now:?}");
        if said.as_deref() != Some(text.as_str()) {
            match &standing_now {
                Standing::Follows(url) => tracing::info!(leader = %url, "following the leader"),
                Standing::NoLeader(why) => tracing::warn!("no coordinator can lead: {why}"),
                Standing::Starting => {}
            }
            said = Some(text);
        }
        standing.send_replace(standing_now);
    };
    loop {
        let mut renewed = Instant::now();
        let lease = match client.lease_grant(ttl_secs).await {
            Ok((id, _)) => id,
            Err(error) => {
                note(Standing::NoLeader(format!("etcd: {error}")));
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        loop {
            let txn = Txn {
                when: vec![Compare::CreateRevision {
                    key: key.clone(),
                    equals: 0,
                }],
                then: vec![Op::Put {
                    key: key.clone(),
                    value: me.as_bytes().to_vec(),
                    lease,
                }],
                otherwise: vec![Op::Get { key: key.clone() }],
            };
            match client.txn(txn).await {
                Ok(result) if result.succeeded => {
                    tracing::info!(
                        revision = result.revision,
                        lease,
                        "elected leader of the coordinators"
                    );
                    return Won {
                        fence: Fence {
                            key,
                            revision: result.revision,
                            lease,
                        },
                        renewed,
                    };
                }
                Ok(result) => {
                    let url = result
                        .gets
                        .first()
                        .and_then(|kvs| kvs.first())
                        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                    match url {
                        // Its own key from before it started again (a kill, a lost lease): it
                        // expires with that lease, as nothing renews it.
                        Some(url) if url == *me => note(Standing::NoLeader(format!(
                            "the leader key still names this coordinator from before it started again; it expires within {ttl:?}"
                        ))),
                        Some(url) => note(Standing::Follows(url)),
                        // Deleted between the compare and the get: try again at once.
                        None => continue,
                    }
                }
                Err(error) => note(Standing::NoLeader(format!("etcd: {error}"))),
            }
            tokio::time::sleep(POLL).await;
            // Keep the candidate's lease alive while it waits; a lost one is granted again.
            if renewed.elapsed() >= ttl / 3 {
                let asked = Instant::now();
                match client.lease_keep_alive(lease).await {
                    Ok(left) if left > 0 => renewed = asked,
                    _ => break,
                }
            }
        }
    }
}

/// Hold the leader lease; returns why leadership was lost: at the latest two thirds of the TTL
/// after the last renewal etcd confirmed, so it stops before etcd can let the key go.
pub async fn hold(handle: Arc<EtcdHandle>, won: Won, ttl: Duration) -> String {
    let client = handle.client().clone();
    let every = ttl / 5;
    let give_up = ttl * 2 / 3;
    let mut renewed = won.renewed;
    let mut deposed = handle.deposed();
    let mut why = String::new();
    loop {
        let deadline = renewed + give_up;
        let pause = every.min(deadline.saturating_duration_since(Instant::now()));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = deposed.changed() => {
                if let Some(why) = deposed.borrow().clone() {
                    return why;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return format!(
                "the leader lease could not be renewed for {:?} (of its {ttl:?} TTL): {why}",
                renewed.elapsed()
            );
        }
        // A slow answer still counts while it comes before the deadline.
        let asked = Instant::now();
        match tokio::time::timeout(left, client.lease_keep_alive(won.fence.lease)).await {
            Ok(Ok(remaining)) if remaining > 0 => renewed = asked,
            Ok(Ok(_)) => return "etcd says the leader lease expired".to_string(),
            Ok(Err(error)) => {
                why = error.to_string();
                tracing::warn!("renewing the leader lease: {why}");
            }
            Err(_) => {
                why = format!("no answer within {left:?}");
                tracing::warn!("renewing the leader lease: {why}");
            }
        }
    }
}

/// Give up the lease (a stopping leader), so another coordinator is elected at once.
pub async fn resign(handle: Arc<EtcdHandle>, lease: i64) {
    let attempt =
        tokio::time::timeout(Duration::from_secs(2), handle.client().lease_revoke(lease)).await;
    match attempt {
        Ok(Ok(())) => tracing::info!("resigned: the leader lease is revoked"),
        Ok(Err(error)) => tracing::warn!("revoking the leader lease: {error}"),
        Err(_) => tracing::warn!("revoking the leader lease: no answer within 2s"),
    }
}

/// The follower's answer to every call of the service `S` names.
pub struct Refusal<S> {
    standing: watch::Receiver<Standing>,
    service: PhantomData<fn() -> S>,
}

impl<S> Refusal<S> {
    pub fn new(standing: watch::Receiver<Standing>) -> Refusal<S> {
        Refusal {
            standing,
            service: PhantomData,
        }
    }
}

impl<S> Clone for Refusal<S> {
    fn clone(&self) -> Refusal<S> {
        Refusal::new(self.standing.clone())
    }
}

impl<S: NamedService> NamedService for Refusal<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Refusal<S> {
    type Response = http::Response<axum::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Request<B>) -> Self::Future {
        let status = self.standing.borrow().refusal();
        std::future::ready(Ok(status.into_http()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_follower_names_the_leader_and_a_leaderless_one_says_why() {
        let status = Standing::Follows("https://198.18.0.251:7443".into()).refusal();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(
            status.message(),
            "not the leader: this coordinator follows; the leader is at https://198.18.0.251:7443"
        );
        assert_eq!(
            status.metadata().get(LEADER_METADATA).unwrap(),
            "https://198.18.0.251:7443"
        );
        let status = Standing::NoLeader("etcd: etcdserver: no leader".into()).refusal();
        assert_eq!(
            status.message(),
            "not the leader: no coordinator leads (etcd: etcdserver: no leader)"
        );
        assert!(status.metadata().get(LEADER_METADATA).is_none());
    }
}

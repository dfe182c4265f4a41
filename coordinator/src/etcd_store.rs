//! The coordinator's store on etcd (`[store] kind = "etcd"`): the same records as the redb store,
//! under one key prefix, written with etcd transactions.
//!
//! Owns: the key layout, splitting a write into transactions within etcd's limits, fencing every
//! write on the leader key, compacting old revisions. Does not own: the records' meaning
//! ([`crate::store`]) or the election ([`crate::leader`]).
//!
//! Key layout, for a store at `ROOT` (`PREFIX/home/` or `PREFIX/clusters/NAME/`):
//! `ROOT meta/KEY`, `ROOT gen/N` (20 digits), `ROOT agent/NODE`, `ROOT audit/NODE/ORDINAL`,
//! `ROOT cursor/NODE`, `ROOT live` (the agents connected to the leader, on its lease); and `PREFIX/index/NAME` for each cluster store, `PREFIX/leader` for the
//! leader key.
//!
//! **Fencing.** A leader's store carries the leader key and its create revision; every write is a
//! transaction that holds only while that key still has that revision. A deposed leader (its
//! lease expired, another coordinator elected) has every write refused inside etcd, however late
//! it arrives, and is told through [`EtcdHandle::deposed`]. Since a release is stored before it is
//! sent, a refused write means the step is never released.
//!
//! **Limits.** etcd takes at most 128 operations per transaction and 1.5 MiB per request: a write
//! is split into transactions of at most [`MAX_OPS`] operations and [`MAX_BYTES`] bytes, in order.
//! Each record is whole in one of them; a write split in several is not atomic as a whole, which
//! the callers allow for (an agents' batch, an audit batch whose cursor comes after its entries).
//! A single record over [`MAX_BYTES`] is refused with an error naming it.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use kreach_etcd::{Client, Compare, KeyValue, Op, Txn};

/// Operations per transaction: etcd's default `--max-txn-ops` is 128.
pub const MAX_OPS: usize = 120;
/// Bytes of keys and values per transaction: etcd's default `--max-request-bytes` is 1.5 MiB.
pub const MAX_BYTES: usize = 1_400_000;
/// Revisions kept before the coordinator compacts the older ones.
pub const KEEP_REVISIONS: i64 = 10_000;

/// The leader key and the create revision this coordinator's election gave it, with the lease
/// that keeps the key (and the records that last only as long as this coordinator leads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub key: Vec<u8>,
    pub revision: i64,
    pub lease: i64,
}

/// One etcd connection for the whole process, with a runtime of its own so that the store's
/// synchronous callers (the core, under its lock; the report writer's thread) can wait on it from
/// anywhere.
pub struct EtcdHandle {
    client: Client,
    runtime: Option<tokio::runtime::Runtime>,
    prefix: String,
    fence: Mutex<Option<Fence>>,
    deposed: tokio::sync::watch::Sender<Option<String>>,
    compacted: AtomicI64,
    /// A follower's reader: every write is refused (see [`EtcdHandle::new_reader`]).
    read_only: bool,
    /// A reader's second connection, for reads etcd cannot answer linearizably (no quorum):
    /// any member's own copy, without asking for a leader.
    fallback: Option<Client>,
    /// Why a read since [`EtcdHandle::take_stale`] came from one member's own copy.
    stale: Mutex<Option<String>>,
}

impl EtcdHandle {
    pub fn new(config: kreach_etcd::Config, prefix: &str) -> Result<Arc<EtcdHandle>, String> {
        EtcdHandle::open(config, prefix, false)
    }

    /// A connection of its own for a follower's reads of the store: every write through it is
    /// refused, so that nothing a follower does (opening a store not created yet, say) can write
    /// beside the leader's fenced writes. A read etcd cannot answer linearizably (it has lost
    /// quorum) is answered from one member's own copy instead, which may be stale; the handle
    /// says so ([`EtcdHandle::take_stale`]).
    pub fn new_reader(
        config: kreach_etcd::Config,
        prefix: &str,
    ) -> Result<Arc<EtcdHandle>, String> {
        EtcdHandle::open(config, prefix, true)
    }

    fn open(
        config: kreach_etcd::Config,
        prefix: &str,
        read_only: bool,
    ) -> Result<Arc<EtcdHandle>, String> {
        let fallback_config = read_only.then(|| kreach_etcd::Config {
            require_leader: false,
            ..config.clone()
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("kreach-etcd")
            .enable_all()
            .build()
            .map_err(|error| format!("cannot start the etcd client's runtime: {error}"))?;
        let (client, fallback) = {
            let _inside = runtime.enter();
            let client =
                |config| Client::new(config).map_err(|error| format!("store.endpoints: {error}"));
            (client(config)?, fallback_config.map(client).transpose()?)
        };
        Ok(Arc::new(EtcdHandle {
            client,
            runtime: Some(runtime),
            prefix: prefix.to_string(),
            fence: Mutex::new(None),
            deposed: tokio::sync::watch::channel(None).0,
            compacted: AtomicI64::new(0),
            read_only,
            fallback,
            stale: Mutex::new(None),
        }))
    }

    /// The connection `[store]` describes (kind = "etcd"): its endpoints, TLS files and prefix.
    pub fn from_config(store: &crate::config::StoreConfig) -> Result<Arc<EtcdHandle>, String> {
        EtcdHandle::new(EtcdHandle::client_config(store)?, &store.prefix)
    }

    /// [`EtcdHandle::new_reader`] on the connection `[store]` describes.
    pub fn reader(store: &crate::config::StoreConfig) -> Result<Arc<EtcdHandle>, String> {
        EtcdHandle::new_reader(EtcdHandle::client_config(store)?, &store.prefix)
    }

    fn client_config(store: &crate::config::StoreConfig) -> Result<kreach_etcd::Config, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|error| format!("store: cannot read {}: {error}", path.display()))
        };
        let tls = match &store.ca {
            Some(ca) => Some(kreach_etcd::Tls {
                ca_pem: read(ca)?,
                cert_pem: store.cert.as_deref().map(read).transpose()?,
                key_pem: store.key.as_deref().map(read).transpose()?,
                domain: None,
            }),
            None => None,
        };
        let config = kreach_etcd::Config {
            endpoints: store.endpoints.clone(),
            tls,
            // Per member and attempt; a store write waits for etcd's fsync, which a busy disk can
            // make slow. The lease renewals bound their own attempts (leader::hold).
            timeout: std::time::Duration::from_secs(2),
            require_leader: true,
        };
        Ok(config)
    }

    /// Who leads (the leader key's value), if anyone.
    pub fn leader(&self) -> Result<Option<String>, String> {
        Ok(self
            .get(self.leader_key())?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// How many records are under the prefix: every key but the leader key and the stores'
    /// format markers (which a coordinator writes when it opens an empty store).
    pub fn keys_under_prefix(&self) -> Result<usize, String> {
        let leader = self.leader_key();
        Ok(self
            .get_prefix(format!("{}/", self.prefix).into_bytes())?
            .iter()
            .filter(|kv| kv.key != leader && !kv.key.ends_with(b"/meta/format"))
            .count())
    }

    /// A follower's reader ([`EtcdHandle::new_reader`]): it never writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The leader key: who leads, as its URL; its create revision is the fencing token.
    pub fn leader_key(&self) -> Vec<u8> {
        format!("{}/leader", self.prefix).into_bytes()
    }

    /// The lease of the election this coordinator won (0: none), which records that last only as
    /// long as it leads are attached to.
    fn lease(&self) -> i64 {
        self.fence
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |fence| fence.lease)
    }

    /// Fence every write from now on on `fence` (None: unfenced, for `migrate`).
    pub fn set_fence(&self, fence: Option<Fence>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Set (with why) once a fenced write was refused: this coordinator no longer leads.
    pub fn deposed(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.deposed.subscribe()
    }

    /// Run `future` on the etcd runtime: its one worker only ever runs etcd calls, never the
    /// core's synchronous work, so what runs there (the leader lease's renewals) is never held up
    /// by a store call blocked on an unreachable etcd.
    pub fn spawn<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> tokio::task::JoinHandle<T> {
        self.runtime.as_ref().expect("running").spawn(future)
    }

    /// Run `future` on the etcd runtime and wait for it, from any thread.
    pub fn block<T: Send + 'static>(&self, future: impl Future<Output = T> + Send + 'static) -> T {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.runtime.as_ref().expect("running").spawn(async move {
            let _ = sender.send(future.await);
        });
        receiver.recv().expect("the etcd runtime answers")
    }

    /// The stores' names under `PREFIX/index/` (one per cluster store besides the home one).
    pub fn cluster_names(&self) -> Result<Vec<String>, String> {
        let prefix = format!("{}/index/", self.prefix);
        let kvs = self.get_prefix(prefix.into_bytes())?;
        let skip = self.prefix.len() + "/index/".len();
        Ok(kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.key[skip..]).into_owned())
            .collect())
    }

    /// Write `ops` in order, in as few fenced transactions as etcd's limits allow.
    pub fn commit(&self, ops: Vec<Op>) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(
                "this coordinator follows: it reads the store and never writes it".to_string(),
            );
        }
        let fence = self.fence.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut revision = 0;
        for chunk in chunks(ops)? {
            let when = fence
                .iter()
                .map(|fence| Compare::CreateRevision {
                    key: fence.key.clone(),
                    equals: fence.revision,
                })
                .collect();
            let txn = Txn {
                when,
                then: chunk,
                otherwise: Vec::new(),
            };
            let client = self.client.clone();
            let result = self
                .block(async move { client.txn(txn).await })
                .map_err(|error| error.to_string())?;
            if !result.succeeded {
                let why = format!(
                    "this coordinator no longer leads: the leader key {} is no longer the one it created at revision {} (its lease expired or another coordinator was elected); the write was refused",
                    String::from_utf8_lossy(&fence.as_ref().expect("fenced").key),
                    fence.as_ref().expect("fenced").revision
                );
                self.deposed.send_replace(Some(why.clone()));
                return Err(why);
            }
            revision = result.revision;
        }
        self.compact_behind(revision);
        Ok(())
    }

    /// Compact the revisions older than [`KEEP_REVISIONS`] behind `revision`, in the background.
    fn compact_behind(&self, revision: i64) {
        let target = revision - KEEP_REVISIONS;
        let last = self.compacted.load(Ordering::Relaxed);
        if target <= 0 || target - last < KEEP_REVISIONS / 10 {
            return;
        }
        self.compacted.store(target, Ordering::Relaxed);
        let client = self.client.clone();
        self.runtime.as_ref().expect("running").spawn(async move {
            match client.compact(target).await {
                Ok(()) => tracing::debug!(revision = target, "compacted the etcd store"),
                Err(error) => tracing::warn!(revision = target, "compacting etcd: {error}"),
            }
        });
    }

    fn get(&self, key: Vec<u8>) -> Result<Option<KeyValue>, String> {
        let client = self.client.clone();
        let again = key.clone();
        let read = self.block(async move { client.get(&key).await });
        self.or_stale(read, |client| async move {
            client.get_serializable(&again).await
        })
    }

    fn get_prefix(&self, prefix: Vec<u8>) -> Result<Vec<KeyValue>, String> {
        let client = self.client.clone();
        let again = prefix.clone();
        let read = self.block(async move { client.get_prefix(&prefix).await });
        self.or_stale(read, |client| async move {
            client.get_prefix_serializable(&again).await
        })
        .map(|(kvs, _)| kvs)
    }

    /// `read`, or where it failed and this is a reader, the same read from one member's own
    /// copy (noted for [`EtcdHandle::take_stale`]).
    fn or_stale<T: Send + 'static, F>(
        &self,
        read: Result<T, kreach_etcd::Error>,
        stale: impl FnOnce(Client) -> F,
    ) -> Result<T, String>
    where
        F: Future<Output = Result<T, kreach_etcd::Error>> + Send + 'static,
    {
        let (error, fallback) = match (read, &self.fallback) {
            (Ok(value), _) => return Ok(value),
            (Err(error), None) => return Err(error.to_string()),
            (Err(error), Some(fallback)) => (error.to_string(), fallback.clone()),
        };
        let value = self.block(stale(fallback)).map_err(|stale_error| {
            format!("{error}; and from any member's own copy: {stale_error}")
        })?;
        *self.stale.lock().unwrap_or_else(|p| p.into_inner()) = Some(error);
        Ok(value)
    }

    /// Why reads since the last call were answered from one member's own copy (etcd could not
    /// answer them linearizably); None when every read was linearizable.
    pub fn take_stale(&self) -> Option<String> {
        self.stale.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl Drop for EtcdHandle {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

fn op_bytes(op: &Op) -> usize {
    match op {
        Op::Put { key, value, .. } => key.len() + value.len() + 16,
        Op::Delete { key } | Op::Get { key } => key.len() + 16,
        Op::DeletePrefix { prefix } => prefix.len() + 16,
        Op::DeleteRange { from, to } => from.len() + to.len() + 16,
    }
}

/// `ops` in order, cut into transactions within [`MAX_OPS`] and [`MAX_BYTES`].
fn chunks(ops: Vec<Op>) -> Result<Vec<Vec<Op>>, String> {
    let mut out: Vec<Vec<Op>> = vec![Vec::new()];
    let mut bytes = 0;
    for op in ops {
        let size = op_bytes(&op);
        if size > MAX_BYTES {
            let key = match &op {
                Op::Put { key, .. } => String::from_utf8_lossy(key).into_owned(),
                _ => "?".to_string(),
            };
            return Err(format!(
                "record {key} is {size} bytes, over the {MAX_BYTES} bytes one etcd request may carry (etcd's --max-request-bytes is 1.5 MiB)"
            ));
        }
        let current = out.last_mut().expect("one");
        if current.len() == MAX_OPS || bytes + size > MAX_BYTES {
            out.push(Vec::new());
            bytes = 0;
        }
        out.last_mut().expect("one").push(op);
        bytes += size;
    }
    Ok(out)
}

/// One store (the home one or one cluster's) on the shared handle.
pub struct EtcdStore {
    handle: Arc<EtcdHandle>,
    root: String,
    /// `PREFIX/index/NAME` for a cluster store, written with the format marker.
    index: Option<Vec<u8>>,
}

fn ordinal_key(n: u64) -> String {
    format!("{n:020}")
}

impl EtcdStore {
    /// The home store (`name` None) or the store of the cluster stored as `name`.
    pub fn new(handle: Arc<EtcdHandle>, name: Option<&str>) -> EtcdStore {
        let prefix = handle.prefix().to_string();
        let (root, index) = match name {
            None => (format!("{prefix}/home/"), None),
            Some(name) => (
                format!("{prefix}/clusters/{name}/"),
                Some(format!("{prefix}/index/{name}").into_bytes()),
            ),
        };
        EtcdStore {
            handle,
            root,
            index,
        }
    }

    /// Where it is, for messages: `etcd:PREFIX/home/`.
    pub fn location(&self) -> String {
        format!("etcd:{}", self.root)
    }

    pub fn handle(&self) -> &Arc<EtcdHandle> {
        &self.handle
    }

    fn key(&self, kind: &str, rest: &str) -> Vec<u8> {
        format!("{}{kind}/{rest}", self.root).into_bytes()
    }

    pub fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.handle.get(self.key("meta", key))?.map(|kv| kv.value))
    }

    pub fn put_meta(&self, key: &str, value: Vec<u8>) -> Op {
        self.put(self.key("meta", key), value)
    }

    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> Op {
        Op::Put {
            key,
            value,
            lease: 0,
        }
    }

    /// The ops that mark a new store: its format, and its index entry.
    pub fn create_ops(&self, format: Vec<u8>) -> Vec<Op> {
        let mut ops = vec![self.put_meta("format", format)];
        if let Some(index) = &self.index {
            ops.push(self.put(index.clone(), Vec::new()));
        }
        ops
    }

    /// The leader's record of which agents are connected to it, attached to its lease: it goes
    /// when the leader stops leading (its lease revoked or expired), so a follower that finds
    /// none knows that nobody knows. Kept outside `meta/`, which `migrate` copies.
    pub fn put_live(&self, value: Vec<u8>) -> Op {
        Op::Put {
            key: format!("{}live", self.root).into_bytes(),
            value,
            lease: self.handle.lease(),
        }
    }

    pub fn live(&self) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .handle
            .get(format!("{}live", self.root).into_bytes())?
            .map(|kv| kv.value))
    }

    pub fn put_generation(&self, generation: u64, value: Vec<u8>) -> Op {
        self.put(self.key("gen", &ordinal_key(generation)), value)
    }

    pub fn generations(&self) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let prefix = self.key("gen", "");
        let skip = prefix.len();
        self.handle
            .get_prefix(prefix)?
            .into_iter()
            .map(|kv| {
                let number = String::from_utf8_lossy(&kv.key[skip..]).into_owned();
                number
                    .parse::<u64>()
                    .map(|n| (n, kv.value))
                    .map_err(|_| format!("key {number:?} under gen/ is not a generation number"))
            })
            .collect()
    }

    pub fn generation(&self, generation: u64) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .handle
            .get(self.key("gen", &ordinal_key(generation)))?
            .map(|kv| kv.value))
    }

    pub fn put_agent(&self, node: &str, value: Vec<u8>) -> Op {
        self.put(self.key("agent", node), value)
    }

    pub fn delete_agent(&self, node: &str) -> Op {
        Op::Delete {
            key: self.key("agent", node),
        }
    }

    pub fn agents(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        self.list("agent")
    }

    /// Every record of one kind (`meta`, `agent`, `audit`, `cursor`), by the rest of its key.
    pub fn list(&self, kind: &str) -> Result<Vec<(String, Vec<u8>)>, String> {
        let prefix = self.key(kind, "");
        let skip = prefix.len();
        Ok(self
            .handle
            .get_prefix(prefix)?
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(&kv.key[skip..]).into_owned(),
                    kv.value,
                )
            })
            .collect())
    }

    pub fn cursor(&self, node: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self
            .handle
            .get(self.key("cursor", node))?
            .map(|kv| kv.value))
    }

    pub fn put_cursor(&self, node: &str, value: Vec<u8>) -> Op {
        self.put(self.key("cursor", node), value)
    }

    pub fn put_audit(&self, node: &str, ordinal: u64, value: Vec<u8>) -> Op {
        self.put(
            self.key("audit", &format!("{node}/{}", ordinal_key(ordinal))),
            value,
        )
    }

    /// Delete `node`'s audit entries below `below`.
    pub fn delete_audit_below(&self, node: &str, below: u64) -> Op {
        Op::DeleteRange {
            from: self.key("audit", &format!("{node}/{}", ordinal_key(0))),
            to: self.key("audit", &format!("{node}/{}", ordinal_key(below))),
        }
    }

    pub fn audit(&self, node: &str) -> Result<Vec<Vec<u8>>, String> {
        Ok(self
            .handle
            .get_prefix(self.key("audit", &format!("{node}/")))?
            .into_iter()
            .map(|kv| kv.value)
            .collect())
    }

    pub fn commit(&self, ops: Vec<Op>) -> Result<(), String> {
        self.handle.commit(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(n: usize, size: usize) -> Op {
        Op::Put {
            key: format!("k{n}").into_bytes(),
            value: vec![b'x'; size],
            lease: 0,
        }
    }

    #[test]
    fn a_write_is_cut_within_the_ops_and_bytes_limits_in_order() {
        let cut = chunks((0..250).map(|n| put(n, 10)).collect()).unwrap();
        assert_eq!(
            cut.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![120, 120, 10]
        );
        let cut = chunks((0..5).map(|n| put(n, 600_000)).collect()).unwrap();
        assert_eq!(cut.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2, 1]);
        let Op::Put { key, .. } = &cut[2][0] else {
            panic!("a put")
        };
        assert_eq!(key, b"k4");
        let error = chunks(vec![put(7, 2_000_000)]).unwrap_err();
        assert!(error.contains("record k7 is 2000018 bytes"), "{error}");
    }
}

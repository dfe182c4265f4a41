//! `kreach-coordinator migrate --from redb:PATH --to etcd` (and back): every store of a
//! coordinator (the home one and each cluster's) moved to the other kind, record for record.
//!
//! Refuses, changing nothing, when: a coordinator leads on the etcd prefix (or holds the redb
//! files open), a rollout is moving (running, or settling between steps), or the destination
//! already holds a store. The source is left as it was; the operator switches `[store] kind` and
//! starts the coordinators.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{CoordinatorConfig, StoreKind};
use crate::etcd_store::{EtcdHandle, EtcdStore};
use crate::store::{Store, StoreRoot, STORE_FILE};

/// One side of a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Side {
    /// A state directory's redb files (`redb:PATH`, PATH the directory or its coordinator.redb).
    Redb(PathBuf),
    /// The etcd of coordinator.toml's `[store]`.
    Etcd,
}

pub fn parse_side(flag: &str, text: &str) -> Result<Side, String> {
    if text == "etcd" {
        return Ok(Side::Etcd);
    }
    match text.strip_prefix("redb:") {
        Some(path) if !path.is_empty() => {
            let path = PathBuf::from(path);
            Ok(Side::Redb(
                if path.file_name().is_some_and(|name| name == STORE_FILE) {
                    path.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    path
                },
            ))
        }
        _ => Err(format!(
            "--{flag} {text:?}: write `etcd` or `redb:PATH` (PATH: the state directory, e.g. redb:/var/lib/kreach-coordinator)"
        )),
    }
}

/// The redb stores under `dir`: the home one, then each cluster's (by its directory's name).
fn redb_stores(dir: &Path) -> Result<Vec<(Option<String>, PathBuf)>, String> {
    let mut stores = Vec::new();
    if dir.join(STORE_FILE).is_file() {
        stores.push((None, dir.to_path_buf()));
    }
    let clusters = dir.join(crate::clusters::CLUSTERS_DIR);
    for name in crate::clusters::redb_cluster_names(dir).map_err(|e| e.to_string())? {
        let path = clusters.join(&name);
        stores.push((Some(name), path));
    }
    Ok(stores)
}

fn label(name: &Option<String>) -> String {
    match name {
        None => "home store".to_string(),
        Some(name) => format!("cluster store {name:?}"),
    }
}

/// Run the migration `from` → `to`, saying what it moved on `out`.
pub fn run(
    config: &CoordinatorConfig,
    from: &Side,
    to: &Side,
    out: &mut dyn Write,
) -> Result<(), String> {
    let (dir, to_etcd) = match (from, to) {
        (Side::Redb(dir), Side::Etcd) => (dir.clone(), true),
        (Side::Etcd, Side::Redb(dir)) => (dir.clone(), false),
        _ => {
            return Err(
                "one side is `etcd` and the other `redb:PATH`, e.g. --from redb:/var/lib/kreach-coordinator --to etcd"
                    .to_string(),
            )
        }
    };
    if config.store.kind != StoreKind::Etcd {
        return Err(
            "the etcd side is coordinator.toml's [store]: set kind = \"etcd\" and its endpoints (and prefix) there first"
                .to_string(),
        );
    }
    let handle = EtcdHandle::from_config(&config.store)?;
    let prefix = handle.prefix().to_string();
    if let Some(leader) = handle.leader().map_err(|e| format!("etcd: {e}"))? {
        return Err(format!(
            "a coordinator leads on etcd prefix {prefix} (at {leader}): stop every coordinator of this prefix first; nothing was changed"
        ));
    }
    let etcd_keys = handle
        .keys_under_prefix()
        .map_err(|e| format!("etcd: {e}"))?;

    // The sources, opened (a redb store in use by a running coordinator is refused here).
    let sources: Vec<(Option<String>, Store)> = if to_etcd {
        let found = redb_stores(&dir)?;
        if found.is_empty() {
            return Err(format!(
                "{} holds no coordinator store ({STORE_FILE}); nothing was changed",
                dir.display()
            ));
        }
        found
            .into_iter()
            .map(|(name, path)| {
                Store::open(&path.join(STORE_FILE))
                    .map(|store| (name, store))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?
    } else {
        if etcd_keys == 0 {
            return Err(format!(
                "etcd prefix {prefix} holds no coordinator store; nothing was changed"
            ));
        }
        let mut names = vec![None];
        names.extend(handle.cluster_names()?.into_iter().map(Some));
        names
            .into_iter()
            .map(|name| {
                Store::open_etcd(EtcdStore::new(Arc::clone(&handle), name.as_deref()))
                    .map(|store| (name, store))
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?
    };
    for (name, store) in &sources {
        if let Some(generation) = crate::core::rollout_moving(store).map_err(|e| e.to_string())? {
            return Err(format!(
                "the {}'s rollout of generation {generation} is moving: wait until it completes, or pause it (kreachctl rollout pause); nothing was changed",
                label(name)
            ));
        }
    }
    // The destination must be empty.
    if to_etcd {
        if etcd_keys > 0 {
            return Err(format!(
                "etcd prefix {prefix} already holds {etcd_keys} key(s): choose an empty prefix ([store] prefix); nothing was changed"
            ));
        }
    } else if !redb_stores(&dir)?.is_empty() {
        return Err(format!(
            "{} already holds a coordinator store: choose an empty state directory; nothing was changed",
            dir.display()
        ));
    }

    let root = if to_etcd {
        StoreRoot::Etcd(Arc::clone(&handle))
    } else {
        StoreRoot::Redb
    };
    for (name, source) in &sources {
        let dump = source.dump().map_err(|e| e.to_string())?;
        let path = match name {
            None => dir.clone(),
            Some(name) => dir.join(crate::clusters::CLUSTERS_DIR).join(name),
        };
        std::fs::create_dir_all(&path)
            .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
        let target = root
            .open(&path, name.as_deref())
            .map_err(|e| e.to_string())?;
        target.load(&dump).map_err(|e| e.to_string())?;
        let _ = writeln!(
            out,
            "{}: {} → {}",
            label(name),
            dump.summary(),
            target.path().display()
        );
    }
    let next = if to_etcd {
        "set [store] kind = \"etcd\" on every coordinator and start them"
    } else {
        "set [store] kind = \"redb\" (and state_dir) on the coordinator and start it"
    };
    let _ = writeln!(
        out,
        "migrated {} store(s); the source is unchanged. Next: {next}. The Kafka CA (state_dir/kafka-ca) is a file of each coordinator: copy it to every coordinator's state directory.",
        sources.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides_are_etcd_or_a_redb_state_directory() {
        assert_eq!(parse_side("to", "etcd"), Ok(Side::Etcd));
        assert_eq!(
            parse_side("from", "redb:/var/lib/kreach-coordinator"),
            Ok(Side::Redb("/var/lib/kreach-coordinator".into()))
        );
        assert_eq!(
            parse_side("from", "redb:/srv/k/coordinator.redb"),
            Ok(Side::Redb("/srv/k".into()))
        );
        let error = parse_side("from", "redb:").unwrap_err();
        assert!(
            error.starts_with("--from \"redb:\": write `etcd` or `redb:PATH`"),
            "{error}"
        );
        assert!(parse_side("to", "zookeeper").is_err());
    }

    #[test]
    fn both_sides_redb_is_refused_before_anything_is_read() {
        let config =
            CoordinatorConfig::parse("listen = \"127.0.0.1:0\"\n[tls]\ninsecure = true\n").unwrap();
        let error = run(
            &config,
            &Side::Redb("/a".into()),
            &Side::Redb("/b".into()),
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(error.starts_with("one side is `etcd`"), "{error}");
        let error = run(
            &config,
            &Side::Redb("/a".into()),
            &Side::Etcd,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert!(error.contains("set kind = \"etcd\""), "{error}");
    }
}

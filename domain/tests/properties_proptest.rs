//! Property tests for the listener editor: whatever surrounds the managed keys survives byte for
//! byte and in order, a second apply changes nothing, and the result reads back as desired.

use kreach_domain::properties::{apply_listeners, get_property, ListenerSettings, ListenerSpec};
use proptest::prelude::*;

const MANAGED: [&str; 4] = [
    "listeners",
    "advertised.listeners",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
];
const OWNED: [&str; 2] = ["INTERNAL", "EXTERNAL"];

fn desired() -> ListenerSettings {
    let spec = |name: &str, port: u16, advertised: &str, protocol: &str| ListenerSpec {
        name: name.into(),
        bind_host: "0.0.0.0".into(),
        port,
        advertised_host: advertised.into(),
        security_protocol: protocol.into(),
        tls: None,
        sasl_mechanism: None,
    };
    ListenerSettings {
        owned_names: OWNED.iter().map(|s| s.to_string()).collect(),
        listeners: vec![
            spec("INTERNAL", 19092, "10.0.1.24", "PLAINTEXT"),
            spec("EXTERNAL", 19093, "47.96.1.24", "SASL_SSL"),
        ],
        inter_broker_listener: "INTERNAL".into(),
    }
}

/// A piece of the generated file: its exact text and, for a managed definition, its key, its
/// text before the value, and whether it is the last (effective) definition of that key.
#[derive(Debug, Clone)]
struct Block {
    text: String,
    managed: Option<(String, String)>,
    effective: bool,
}

fn unrelated(text: String) -> Block {
    Block {
        text,
        managed: None,
        effective: false,
    }
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n")]
}

fn value_text() -> impl Strategy<Value = String> {
    // Tokens never end in an odd number of backslashes, so no accidental continuation.
    let token = prop_oneof![
        Just("abc"),
        Just("x:y"),
        Just("\\:"),
        Just("\\="),
        Just("\\ "),
        Just("\\u00e9"),
        Just("\\\\"),
        Just(" "),
        Just("/data,/x"),
        Just("é"),
    ];
    prop::collection::vec(token, 0..5).prop_map(|t| t.concat())
}

fn separator() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("="),
        Just(":"),
        Just(" "),
        Just(" = "),
        Just("\t:\t"),
        Just("  ")
    ]
}

fn unrelated_block() -> impl Strategy<Value = Block> {
    let comment = (
        prop_oneof![Just("#"), Just("!"), Just("  #")],
        "[ -~]{0,20}",
        eol(),
    )
        .prop_map(|(mark, text, eol)| unrelated(format!("{mark}{text}{eol}")));
    let blank = (prop_oneof![Just(""), Just("  "), Just("\t")], eol())
        .prop_map(|(b, eol)| unrelated(format!("{b}{eol}")));
    let key = (
        prop_oneof![Just(""), Just("  ")],
        "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
        separator(),
        value_text(),
        eol(),
        prop::option::of((value_text(), eol())),
    )
        .prop_filter("not a key the rules read", |(_, key, ..)| {
            key != "process.roles"
        })
        .prop_map(|(indent, key, sep, value, eol, continued)| {
            let mut text = format!("{indent}{key}{sep}{value}");
            match continued {
                Some((more, eol2)) => text.push_str(&format!("x\\{eol}    {more}{eol2}")),
                None => text.push_str(eol),
            }
            unrelated(text)
        });
    prop_oneof![comment, blank, key]
}

/// One definition of a managed key with the given value, in a random layout.
fn managed_block(key: &'static str, value: &'static str) -> impl Strategy<Value = Block> {
    (
        prop_oneof![Just(""), Just("  ")],
        separator(),
        eol(),
        any::<bool>(),
    )
        .prop_map(move |(indent, sep, eol, split)| {
            let prefix = format!("{indent}{key}{sep}");
            // Splitting at the first comma puts the value over a continuation line.
            let body = match value.split_once(',') {
                Some((a, b)) if split => format!("{a},\\{eol}      {b}"),
                _ => value.to_string(),
            };
            Block {
                text: format!("{prefix}{body}{eol}"),
                managed: Some((key.to_string(), prefix)),
                effective: false,
            }
        })
}

/// Consistent starting values for the managed keys (None = absent), so the result can obey
/// Kafka's rules; plus whether controller.listener.names is set.
fn scenario() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    let listeners = prop_oneof![
        Just(None),
        Just(Some("CONTROLLER://:9094")),
        Just(Some("INTERNAL://:9092,CONTROLLER://:9094")),
        Just(Some("EXTERNAL://:1, CONTROLLER://:9094, INTERNAL://x:2")),
    ];
    let advertised = prop_oneof![
        Just(None),
        Just(Some("INTERNAL://old:9092")),
        Just(Some("EXTERNAL://old:1,INTERNAL://old:2")),
    ];
    let map = prop_oneof![
        Just("CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"),
        Just("INTERNAL:SSL, CONTROLLER:PLAINTEXT, PLAINTEXT:PLAINTEXT"),
    ];
    let inter = prop_oneof![Just(None), Just(Some("PLAINTEXT")), Just(Some("INTERNAL"))];
    (listeners, advertised, map, inter, any::<bool>()).prop_map(
        |(listeners, advertised, map, inter, controller_names)| {
            let mut values = Vec::new();
            if let Some(l) = listeners {
                values.push(("listeners", l));
                values.push(("listener.security.protocol.map", map));
                if controller_names {
                    values.push(("controller.listener.names", "CONTROLLER"));
                }
            }
            if let Some(a) = advertised {
                values.push(("advertised.listeners", a));
            }
            if let Some(i) = inter {
                values.push(("inter.broker.listener.name", i));
            }
            values
        },
    )
}

fn file() -> impl Strategy<Value = (Vec<Block>, bool)> {
    scenario()
        .prop_flat_map(|values| {
            let definitions: Vec<_> = values
                .into_iter()
                .map(|(key, value)| {
                    // Managed keys appear once or twice; the earlier copy is dead but kept.
                    let stale = prop::option::of(managed_block(key, "STALE://:1"));
                    (stale, managed_block(key, value))
                })
                .collect();
            (
                definitions,
                prop::collection::vec(unrelated_block(), 0..12),
                any::<u64>(),
                any::<bool>(),
            )
        })
        .prop_map(|(definitions, mut blocks, seed, final_newline)| {
            let mut seed = seed;
            let mut insert = |blocks: &mut Vec<Block>, block: Block, after: Option<usize>| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let low = after.map_or(0, |a| a + 1);
                let at = low + (seed >> 33) as usize % (blocks.len() - low + 1);
                blocks.insert(at, block);
                at
            };
            for (stale, mut effective) in definitions {
                let stale_at = stale.map(|s| insert(&mut blocks, s, None));
                effective.effective = true;
                insert(&mut blocks, effective, stale_at);
            }
            if !final_newline {
                if let Some(last) = blocks.last_mut() {
                    let trimmed = last.text.trim_end_matches(['\r', '\n']).len();
                    last.text.truncate(trimmed);
                }
            }
            (blocks, final_newline)
        })
}

fn entries(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

fn name_of(entry: &str) -> String {
    let name = entry.split_once("://").map_or_else(
        || entry.rsplit_once(':').map_or(entry, |(n, _)| n),
        |(n, _)| n,
    );
    name.to_uppercase()
}

/// What a managed list must hold after the edit: the desired entries plus the non-owned entries
/// of the original, in their order.
fn check_list(before: &str, after: &str, desired: &[String]) -> Result<(), TestCaseError> {
    let after = entries(after);
    let owned = |e: &String| OWNED.contains(&name_of(e).as_str());
    let kept: Vec<_> = entries(before).into_iter().filter(|e| !owned(e)).collect();
    let after_kept: Vec<_> = after.iter().filter(|e| !owned(e)).cloned().collect();
    prop_assert_eq!(kept, after_kept);
    let mut after_owned: Vec<_> = after.iter().filter(|e| owned(e)).cloned().collect();
    let mut desired = desired.to_vec();
    after_owned.sort();
    desired.sort();
    prop_assert_eq!(after_owned, desired);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn unrelated_text_survives_and_apply_is_idempotent((blocks, final_newline) in file()) {
        let input: String = blocks.iter().map(|b| b.text.as_str()).collect();
        let desired = desired();
        let edit = apply_listeners(&input, &desired)
            .map_err(|e| TestCaseError::fail(format!("{e}\n--- input ---\n{input}")))?;
        let output = &edit.content;
        if edit.changed_keys.is_empty() {
            prop_assert_eq!(output, &input);
        }

        // Walk the output block by block: everything but an effective managed definition is
        // verbatim; that one, if its value changed, is rewritten onto one line with its prefix kept.
        let mut rest = output.as_str();
        for block in &blocks {
            match &block.managed {
                Some((key, prefix)) if block.effective && edit.changed_keys.contains(key) => {
                    prop_assert!(rest.starts_with(prefix.as_str()), "{} lost its prefix {:?} in\n{}", key, prefix, output);
                    let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
                    rest = &rest[end..];
                }
                _ => {
                    prop_assert!(rest.starts_with(&block.text), "block {:?} missing or moved in\n{}", block.text, output);
                    rest = &rest[block.text.len()..];
                }
            }
        }
        if !final_newline {
            rest = rest.strip_prefix("\r\n").or_else(|| rest.strip_prefix('\n')).unwrap_or(rest);
        }
        for line in rest.lines() {
            let key = line.split_once('=').map(|(k, _)| k).unwrap_or(line);
            prop_assert!(MANAGED.contains(&key), "unexpected appended line {:?}", line);
        }

        let again = apply_listeners(output, &desired).unwrap();
        prop_assert_eq!(&again.content, output);
        prop_assert!(again.changed_keys.is_empty());

        let get = |content: &str, key: &str| get_property(content, key).unwrap();
        let listeners_before = get(&input, "listeners").unwrap_or_else(|| "PLAINTEXT://:9092".into());
        let controller = get(&input, "controller.listener.names").map(|c| c.to_uppercase());
        let advertised_before = get(&input, "advertised.listeners").unwrap_or_else(|| {
            entries(&listeners_before)
                .into_iter()
                .filter(|e| Some(name_of(e)) != controller)
                .collect::<Vec<_>>()
                .join(",")
        });
        let map_before = get(&input, "listener.security.protocol.map").unwrap_or_else(|| {
            "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL".into()
        });
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        check_list(&listeners_before, &get(output, "listeners").unwrap(),
            &strings(&["INTERNAL://0.0.0.0:19092", "EXTERNAL://0.0.0.0:19093"]))?;
        check_list(&advertised_before, &get(output, "advertised.listeners").unwrap(),
            &strings(&["INTERNAL://10.0.1.24:19092", "EXTERNAL://47.96.1.24:19093"]))?;
        check_list(&map_before, &get(output, "listener.security.protocol.map").unwrap(),
            &strings(&["INTERNAL:PLAINTEXT", "EXTERNAL:SASL_SSL"]))?;
        let inter = get(output, "inter.broker.listener.name");
        prop_assert_eq!(inter.as_deref(), Some("INTERNAL"));
    }
}

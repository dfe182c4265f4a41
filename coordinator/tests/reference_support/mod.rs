//! Reading the reference tables of docs/*.md, and asking a serde config parser which keys it knows,
//! for the tests that keep the reference and the parsers in step (spec_reference.rs and
//! config_reference.rs here, agent/tests/config_reference.rs).
//!
//! A reference is a `## Reference` section whose `### ` headings name a table (`` `[rollout]` ``,
//! `` `[[broker]]` ``; "top level" for keys outside any table) and hold one markdown table each:
//! `| key | type | allowed values | default | what it does |`, the key in backticks.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::path::PathBuf;

/// One documented key.
#[derive(Debug, Clone)]
pub struct Row {
    /// The table it is in, dotted (`listeners.external`); `""` for the top level.
    pub section: String,
    pub key: String,
    pub allowed: String,
    pub default: String,
}

impl Row {
    /// `section.key`, or `key` at the top level.
    pub fn path(&self) -> String {
        join(&self.section, &self.key)
    }
}

pub fn join(section: &str, key: &str) -> String {
    if section.is_empty() {
        key.to_string()
    } else {
        format!("{section}.{key}")
    }
}

/// The text of `docs/NAME` at the workspace root.
pub fn read_doc(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every row of the `## Reference` section's tables.
pub fn reference_rows(markdown: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut in_reference = false;
    let mut section: Option<String> = None;
    for (number, line) in markdown.lines().enumerate() {
        let number = number + 1;
        if let Some(title) = line.strip_prefix("## ") {
            in_reference = title.trim() == "Reference";
            section = None;
            continue;
        }
        if !in_reference {
            continue;
        }
        if let Some(title) = line.strip_prefix("### ") {
            section = Some(section_of(title).unwrap_or_else(|| {
                panic!("line {number}: a reference heading names `[table]`, `[[table]]` or \"top level\": {line}")
            }));
            continue;
        }
        if line.starts_with("| key |") {
            assert_eq!(
                cells(line),
                ["key", "type", "allowed values", "default", "what it does"],
                "line {number}: the reference table's columns"
            );
            continue;
        }
        if !line.starts_with("| `") {
            continue;
        }
        let cells = cells(line);
        assert_eq!(cells.len(), 5, "line {number}: five cells: {line}");
        let key = cells[0].trim_matches('`').to_string();
        let section = section
            .clone()
            .unwrap_or_else(|| panic!("line {number}: a key row before any `### [table]` heading"));
        rows.push(Row {
            section,
            key,
            allowed: cells[2].clone(),
            default: cells[3].clone(),
        });
    }
    assert!(!rows.is_empty(), "no `## Reference` rows found");
    rows
}

fn section_of(title: &str) -> Option<String> {
    if title.trim().eq_ignore_ascii_case("top level") {
        return Some(String::new());
    }
    let code = code_spans(title).into_iter().next()?;
    let name = code.trim_start_matches('[').trim_end_matches(']');
    (code.starts_with('[') && !name.is_empty()).then(|| name.to_string())
}

fn cells(line: &str) -> Vec<String> {
    line.trim()
        .trim_start_matches('|')
        .trim_end_matches('|')
        .split('|')
        .map(|cell| cell.trim().to_string())
        .collect()
}

/// The `code spans` of a line.
pub fn code_spans(text: &str) -> Vec<String> {
    text.split('`')
        .enumerate()
        .filter(|(index, _)| index % 2 == 1)
        .map(|(_, span)| span.to_string())
        .collect()
}

/// The code spans of a cell that are TOML values (`"60s"`, `1`, `["10.0.0.0/8"]`; not `hostname`).
pub fn toml_values(cell: &str) -> Vec<(String, toml::Value)> {
    code_spans(cell)
        .into_iter()
        .filter_map(|span| {
            let table: toml::Table = format!("value = {span}").parse().ok()?;
            Some((span, table.get("value")?.clone()))
        })
        .collect()
}

/// `base` (TOML) with `key = value` set in `section` (the first entry of an array of tables).
pub fn with_key(base: &str, section: &str, key: &str, value: toml::Value) -> String {
    let mut root: toml::Table = base.parse().expect("the base parses");
    let mut table = &mut root;
    for part in section.split('.').filter(|part| !part.is_empty()) {
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(table) => table,
            toml::Value::Array(items) => items
                .first_mut()
                .and_then(toml::Value::as_table_mut)
                .expect("an array of tables with an entry"),
            other => panic!("{section}: not a table: {other:?}"),
        };
    }
    table.insert(key.to_string(), value);
    toml::to_string(&root).expect("serializes")
}

/// The keys a serde parser with `deny_unknown_fields` knows, as dotted paths of the leaves: asks
/// it about an unknown key at the top level and reads the "expected one of" list, then the same
/// inside every key that turns out to be a table.
pub fn serde_keys(parse: &dyn Fn(&str) -> Result<(), String>) -> BTreeSet<String> {
    let mut leaves = BTreeSet::new();
    let root = fields_of(parse, "").expect("the top level is a table with deny_unknown_fields");
    let mut pending: Vec<String> = root;
    while let Some(path) = pending.pop() {
        match fields_of(parse, &path) {
            Some(fields) => pending.extend(fields.into_iter().map(|field| join(&path, &field))),
            None => {
                leaves.insert(path);
            }
        }
    }
    leaves
}

const PROBE: &str = "zz_unknown_probe";

/// The fields of the table at `path`, or None when `path` is not a table.
fn fields_of(parse: &dyn Fn(&str) -> Result<(), String>, path: &str) -> Option<Vec<String>> {
    let text = if path.is_empty() {
        format!("{PROBE} = 1\n")
    } else {
        format!("[{path}]\n{PROBE} = 1\n")
    };
    let error = parse(&text).err()?;
    let marker = format!("unknown field `{PROBE}`");
    let at = error.find(&marker)?;
    let rest = &error[at + marker.len()..];
    let expected = rest.split_once("expected")?.1;
    // "expected one of `a`, `b`" / "expected `a`": the backticked names up to the end.
    let fields: Vec<String> = code_spans(expected)
        .into_iter()
        .filter(|name| !name.is_empty() && !name.contains(' '))
        .collect();
    assert!(!fields.is_empty(), "{path}: no field names in {error:?}");
    Some(fields)
}

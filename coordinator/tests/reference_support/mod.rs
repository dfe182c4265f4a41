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

/// The keys an example config sets or shows commented out (`# key = value` lines that are TOML),
/// as dotted paths.
pub fn example_keys(example: &str) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut section = String::new();
    for line in example.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let setting = line.strip_prefix('#').map(str::trim).unwrap_or(line);
        if let Ok(table) = setting.parse::<toml::Table>() {
            if let Some((key, value)) = table.iter().next() {
                // A dotted key parses as a table too; an inline table (`labels = { .. }`) is
                // one key's value.
                let inline_table = setting.contains("= {");
                if table.len() == 1 && (!value.is_table() || inline_table) {
                    keys.insert(join(&section, key));
                }
            }
        }
    }
    keys
}

/// What a config reference page must agree with: the parser (through [`serde_keys`]), the
/// packaged example, its defaults and its documented values. `bases` are valid configs with every
/// table present: defaults are compared in the first, and a documented value must be accepted in
/// one of them (some values need a sibling, such as `restart` a `kind = "command"`). `parse`
/// returns the config's Debug text so defaults can be compared.
pub fn check_config_reference(
    doc: &str,
    example: &str,
    bases: &[&str],
    parse: &dyn Fn(&str) -> Result<String, String>,
) {
    let base = bases[0];
    let rows = reference_rows(&read_doc(doc));
    let documented: BTreeSet<String> = rows.iter().map(Row::path).collect();
    assert_eq!(rows.len(), documented.len(), "{doc}: a key has two rows");

    let parser = serde_keys(&|text| parse(text).map(|_| ()));
    let undocumented: Vec<_> = parser.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&parser).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "docs/{doc} and the parser disagree.\nknown to the parser, no row: {undocumented:?}\nrows the parser does not know: {unknown:?}"
    );

    let shown = example_keys(example);
    let not_in_example: Vec<_> = documented.difference(&shown).collect();
    let not_documented: Vec<_> = shown.difference(&documented).collect();
    assert!(
        not_in_example.is_empty() && not_documented.is_empty(),
        "docs/{doc} and its packaged example disagree.\ndocumented, not in the example (set or commented): {not_in_example:?}\nin the example, not documented: {not_documented:?}"
    );

    let base_parsed = parse(base).unwrap_or_else(|error| panic!("the base config: {error}"));
    let mut defaults = 0;
    for row in &rows {
        let values = toml_values(&row.default);
        let [(literal, value)] = values.as_slice() else {
            continue;
        };
        let text = with_key(base, &row.section, &row.key, value.clone());
        let with_default =
            parse(&text).unwrap_or_else(|error| panic!("{} = {literal}: {error}", row.path()));
        assert_eq!(
            with_default,
            base_parsed,
            "{doc}: {} = {literal} (the documented default) is not what leaving it out means",
            row.path()
        );
        defaults += 1;
    }
    assert!(defaults >= 3, "{doc}: only {defaults} defaults checked");

    for row in &rows {
        for (literal, value) in toml_values(&row.allowed) {
            let errors: Vec<String> = bases
                .iter()
                .filter_map(|base| {
                    parse(&with_key(base, &row.section, &row.key, value.clone())).err()
                })
                .collect();
            assert!(
                errors.len() < bases.len(),
                "{doc}: {} = {literal} is documented as allowed: {errors:?}",
                row.path()
            );
        }
    }
}

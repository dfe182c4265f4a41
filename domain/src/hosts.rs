//! The pure editor for kreach's blocks in `/etc/hosts`.
//!
//! Owns: finding, rendering, replacing and removing each cluster's marked block
//! (`# BEGIN kreach CLUSTER` … `# END kreach CLUSTER`), reading the entries back out of one,
//! validating the names we are asked to write, and spotting lines that would shadow our names:
//! unmanaged lines, and another cluster's block mapping the same name elsewhere.
//!
//! The block of a kreach from before several clusters per host (`# BEGIN kreach cluster=NAME` …
//! `# END kreach`) is that cluster's: the first apply for it rewrites it in place with today's
//! markers, in the one write of that apply, so its names are never missing.
//!
//! Does not own: reading or writing the file (atomic writes, backups and bind-mount handling live in
//! the agent), deciding which entries a node needs (see [`crate::desired`]), or fixing conflicting
//! lines — those belong to the operator, so we only report them.
//!
//! Everything outside the block is kept byte for byte (DESIGN.md rule 5). The editor is built so that,
//! for any text `X` without a block, `strip_block(apply_block(X, c, e))` is `X` again and applying the
//! same entries twice changes nothing; the tests check both over generated files.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

/// Every begin marker starts with this, then the cluster's name.
const BEGIN_PREFIX: &str = "# BEGIN kreach";
/// Every end marker starts with this, then the cluster's name (none in the older format).
const END_MARKER: &str = "# END kreach";
/// The older begin marker's spelling of the name (`# BEGIN kreach cluster=NAME`).
const LEGACY_NAME: &str = "cluster=";

/// One managed line: an address and its names, long hostname first then short alias(es).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostsEntry {
    pub ip: IpAddr,
    pub names: Vec<String>,
}

/// A line outside our block that maps one of our names to a different address: an unmanaged
/// line, or a line of another cluster's kreach block (`cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsConflict {
    /// The other cluster whose kreach block has the line; None for an unmanaged line.
    pub cluster: Option<String>,
    /// 1-based, counted in the text that was passed to [`apply_block`].
    pub line_number: usize,
    /// The name as kreach writes it (the line may spell it in another case).
    pub name: String,
    /// The address exactly as the line writes it.
    pub their_ip: String,
    pub our_ip: IpAddr,
    /// The whole line, without its line ending.
    pub line: String,
}

impl fmt::Display for HostsConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.cluster {
            None => write!(
                f,
                "line {} maps {} to {}, but kreach manages it as {} \
                 (the resolver uses the first match; remove or fix that line)",
                self.line_number, self.name, self.their_ip, self.our_ip
            ),
            Some(cluster) => write!(
                f,
                "line {} (cluster {cluster}'s kreach block) maps {} to {}, but this cluster \
                 maps it to {}: two clusters claim the name and the resolver uses the first \
                 match; fix one of the two specs",
                self.line_number, self.name, self.their_ip, self.our_ip
            ),
        }
    }
}

/// The result of [`apply_block`]: the new file content and the lines that contradict it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEdit {
    pub content: String,
    pub conflicts: Vec<HostsConflict>,
}

/// Why a hosts file or a requested block cannot be handled. Line numbers are 1-based.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HostsError {
    #[error(
        "line {line}: `{BEGIN_PREFIX}` has no matching `{END_MARKER}` line; \
         add the END line after the kreach entries or delete the partial block by hand"
    )]
    UnterminatedBlock { line: usize },
    #[error(
        "line {line}: `{BEGIN_PREFIX}` inside the kreach block opened at line {open_line}; \
         blocks cannot nest, fix the markers by hand"
    )]
    NestedBlock { line: usize, open_line: usize },
    #[error(
        "line {line}: a second kreach block of the same cluster (the first is at line \
         {first_line}); delete one of them by hand"
    )]
    DuplicateBlock { line: usize, first_line: usize },
    #[error(
        "line {line}: `{END_MARKER} {end}` closes the block of {begin:?} opened at line \
         {open_line}; fix the markers by hand"
    )]
    MismatchedEnd {
        line: usize,
        end: String,
        open_line: usize,
        begin: String,
    },
    #[error(
        "line {line}: `{END_MARKER}` without a `{BEGIN_PREFIX}` line before it; \
         delete it or restore the missing BEGIN line"
    )]
    EndWithoutBegin { line: usize },
    #[error("line {line}: inside the kreach block, {reason}")]
    InvalidBlockLine { line: usize, reason: String },
    #[error("entry {entry} ({ip}): name {name:?} {reason}")]
    InvalidName {
        /// 1-based position in the entries passed to [`apply_block`].
        entry: usize,
        ip: IpAddr,
        name: String,
        reason: String,
    },
    #[error("entry {entry} ({ip}) has no names; every hosts line needs at least one")]
    EntryWithoutNames { entry: usize, ip: IpAddr },
    #[error("cluster name {cluster:?} {reason}")]
    InvalidClusterName { cluster: String, reason: String },
    #[error(transparent)]
    NotText(#[from] crate::limits::TextError),
}

/// Render `original` with kreach's block for `cluster` set to exactly `entries` (empty entries => the block is removed entirely).
///
/// The cluster's block (or the older format's block named for it) is replaced where it stands;
/// otherwise the block is appended. Other clusters' blocks are kept as they are. Conflicts are
/// reported, never fixed, and do not stop the edit: our block is still correct for every name no
/// other line shadows.
pub fn apply_block(
    original: &str,
    cluster: &str,
    entries: &[HostsEntry],
) -> Result<HostsEdit, HostsError> {
    validate_cluster(cluster)?;
    validate_entries(entries)?;
    crate::limits::check_text(original)?;
    let lines = split_lines(original);
    let blocks = locate_blocks(&lines)?;
    let block = block_of(&blocks, cluster);
    let conflicts = find_conflicts(&lines, &blocks, block, entries);

    let content = match (block, entries.is_empty()) {
        (None, true) => original.to_owned(),
        (Some(block), true) => remove_block(original, &lines, block),
        (Some(block), false) => {
            let eol = file_line_ending(&lines, Some(block));
            let final_eol = !lines[block.end].ending.is_empty();
            let (before, after) = (block.byte_start(&lines), block.byte_end(&lines));
            let mut content = String::with_capacity(original.len() + 64 * entries.len());
            content.push_str(&original[..before]);
            content.push_str(&render_block(cluster, entries, eol, final_eol));
            content.push_str(&original[after..]);
            content
        }
        (None, false) if original.is_empty() => render_block(cluster, entries, LF, true),
        (None, false) if original.ends_with('\n') => {
            let eol = file_line_ending(&lines, None);
            format!("{original}{}", render_block(cluster, entries, eol, true))
        }
        (None, false) => {
            // The last line has no ending. We give it one and leave the END line without one, so that
            // removing the block (which then takes exactly that ending along) restores the original.
            // A file ending in a bare `\r` must get `\r\n`: a lone `\n` would merge with the `\r` into
            // a CRLF ending that removal could not tell apart from one we added in full.
            let file_eol = first_line_ending(&lines, None);
            let separator = if file_eol == Some(CRLF) || original.ends_with('\r') {
                CRLF
            } else {
                LF
            };
            // Decide as a later apply will, when it finds the separator as the file's first ending.
            let eol = file_eol.unwrap_or(separator);
            format!(
                "{original}{separator}{}",
                render_block(cluster, entries, eol, false)
            )
        }
    };
    Ok(HostsEdit { content, conflicts })
}

/// The entries currently inside `cluster`'s block (None when it has none).
///
/// Blank and comment lines inside the block are skipped; any other line that is not an address
/// followed by names is an error, because it means someone edited the block and we will not guess
/// what they meant.
pub fn read_block(content: &str, cluster: &str) -> Result<Option<Vec<HostsEntry>>, HostsError> {
    let lines = split_lines(content);
    let blocks = locate_blocks(&lines)?;
    let Some(block) = block_of(&blocks, cluster) else {
        return Ok(None);
    };
    let mut entries = Vec::with_capacity(block.end - block.begin);
    for line in &lines[block.begin + 1..block.end] {
        let mut tokens = strip_comment(line.text).split_whitespace();
        let Some(address) = tokens.next() else {
            continue;
        };
        let ip = address
            .parse::<IpAddr>()
            .map_err(|_| HostsError::InvalidBlockLine {
                line: line.number,
                reason: format!("{address:?} is not an IP address"),
            })?;
        let names: Vec<String> = tokens.map(str::to_owned).collect();
        if names.is_empty() {
            return Err(HostsError::InvalidBlockLine {
                line: line.number,
                reason: format!("address {address} has no names"),
            });
        }
        entries.push(HostsEntry { ip, names });
    }
    Ok(Some(entries))
}

/// The addresses a resolver's `files` source gives for `name` in this hosts file: every line that
/// lists the name (case-insensitively), in file order, inside kreach's block or not — what a lookup
/// through `/etc/hosts` would return on a host whose hosts file this is.
pub fn lookup(content: &str, name: &str) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for line in split_lines(content) {
        if let Some((_, ip, names)) = parse_hosts_line(line.text) {
            if names.iter().any(|n| n.eq_ignore_ascii_case(name)) && !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    addresses
}

/// `content` with `cluster`'s block (and only it) removed.
pub fn strip_block(content: &str, cluster: &str) -> Result<String, HostsError> {
    let lines = split_lines(content);
    let blocks = locate_blocks(&lines)?;
    Ok(match block_of(&blocks, cluster) {
        Some(block) => remove_block(content, &lines, block),
        None => content.to_owned(),
    })
}

/// `content` without the kreach blocks of clusters other than `keep` (a block of the older
/// format without a name is kept: it is the one cluster's of that time).
pub fn retain_blocks(content: &str, keep: &[&str]) -> Result<String, HostsError> {
    let mut content = content.to_owned();
    // One block at a time: each removal moves the lines after it. Bounded by the block count.
    loop {
        let lines = split_lines(&content);
        let blocks = locate_blocks(&lines)?;
        let Some(drop) = blocks
            .iter()
            .find(|block| block.cluster.is_some_and(|name| !keep.contains(&name)))
        else {
            return Ok(content);
        };
        content = remove_block(&content, &lines, *drop);
    }
}

/// The names of the clusters that have a kreach block in `content`, in file order (a block of
/// the older format without a name is left out).
pub fn block_clusters(content: &str) -> Result<Vec<String>, HostsError> {
    let lines = split_lines(content);
    Ok(locate_blocks(&lines)?
        .iter()
        .filter_map(|block| block.cluster.map(str::to_owned))
        .collect())
}

const LF: &str = "\n";
const CRLF: &str = "\r\n";

/// One line of the file. `text` excludes the ending; a `\r` not followed by `\n` stays in `text`.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    /// 1-based.
    number: usize,
    /// Byte offset of `text` in the whole content.
    start: usize,
    text: &'a str,
    /// `"\n"`, `"\r\n"`, or `""` for a last line without an ending.
    ending: &'a str,
}

impl Line<'_> {
    fn byte_end(&self) -> usize {
        self.start + self.text.len() + self.ending.len()
    }
}

fn split_lines(content: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut start = 0;
    while start < content.len() {
        let rest = &content[start..];
        let (text, ending) = match rest.find('\n') {
            Some(newline) if rest[..newline].ends_with('\r') => {
                (&rest[..newline - 1], &rest[newline - 1..=newline])
            }
            Some(newline) => (&rest[..newline], &rest[newline..=newline]),
            None => (rest, ""),
        };
        lines.push(Line {
            number: lines.len() + 1,
            start,
            text,
            ending,
        });
        start += text.len() + ending.len();
    }
    lines
}

/// Indices into the line list of the BEGIN and END marker lines, and whose block it is.
#[derive(Debug, Clone, Copy)]
struct Block<'a> {
    begin: usize,
    end: usize,
    /// The cluster the BEGIN line names; None for an older block without a name.
    cluster: Option<&'a str>,
    /// Written in the older format (`cluster=NAME`, an END without a name).
    legacy: bool,
}

impl Block<'_> {
    fn byte_start(&self, lines: &[Line<'_>]) -> usize {
        lines[self.begin].start
    }

    fn byte_end(&self, lines: &[Line<'_>]) -> usize {
        lines[self.end].byte_end()
    }

    fn contains(&self, index: usize) -> bool {
        (self.begin..=self.end).contains(&index)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker<'a> {
    /// `cluster`: the name after the prefix (None: none); `legacy`: spelled `cluster=NAME`, or
    /// no name at all.
    Begin {
        cluster: Option<&'a str>,
        legacy: bool,
    },
    /// The name after the prefix (None in the older format).
    End { cluster: Option<&'a str> },
}

fn marker(text: &str) -> Option<Marker<'_>> {
    // Require a word boundary so that, say, `# BEGIN kreachy` from some other tool is not ours.
    let after = |prefix: &str| {
        text.trim_start()
            .strip_prefix(prefix)
            .filter(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace))
            // The first word after the prefix, unless it opens the "(managed by ...)" note.
            .map(|rest| {
                rest.split_whitespace()
                    .next()
                    .filter(|w| !w.starts_with('('))
            })
    };
    if let Some(word) = after(BEGIN_PREFIX) {
        return Some(match word {
            None => Marker::Begin {
                cluster: None,
                legacy: true,
            },
            Some(word) => match word.strip_prefix(LEGACY_NAME) {
                Some(name) => Marker::Begin {
                    cluster: Some(name),
                    legacy: true,
                },
                None => Marker::Begin {
                    cluster: Some(word),
                    legacy: false,
                },
            },
        });
    }
    after(END_MARKER).map(|cluster| Marker::End { cluster })
}

/// The block `cluster` owns: its own, else an older one named for it or not named at all.
fn block_of<'a>(blocks: &[Block<'a>], cluster: &str) -> Option<Block<'a>> {
    let ours = |block: &&Block<'a>| !block.legacy && block.cluster == Some(cluster);
    let older = |block: &&Block<'a>| block.legacy && block.cluster.is_none_or(|c| c == cluster);
    blocks
        .iter()
        .find(ours)
        .or_else(|| blocks.iter().find(older))
        .copied()
}

/// Finds every block, rejecting every marker layout that would make us guess which lines are
/// whose: nested blocks, a cluster's second block, an END that names another cluster than its
/// BEGIN, a BEGIN without END or an END without BEGIN.
fn locate_blocks<'a>(lines: &[Line<'a>]) -> Result<Vec<Block<'a>>, HostsError> {
    let mut open: Option<(usize, Option<&'a str>, bool)> = None;
    let mut found: Vec<Block<'a>> = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        match (marker(line.text), open) {
            (None, _) => {}
            (Some(Marker::Begin { .. }), Some((open_index, ..))) => {
                return Err(HostsError::NestedBlock {
                    line: line.number,
                    open_line: lines[open_index].number,
                })
            }
            (Some(Marker::Begin { cluster, legacy }), None) => {
                // A cluster has one block; a block without a name (hand-written) is the only one.
                let clash = |block: &&Block<'a>| {
                    block.cluster == cluster || block.cluster.is_none() || cluster.is_none()
                };
                if let Some(first) = found.iter().find(clash) {
                    return Err(HostsError::DuplicateBlock {
                        line: line.number,
                        first_line: lines[first.begin].number,
                    });
                }
                open = Some((index, cluster, legacy));
            }
            (Some(Marker::End { .. }), None) => {
                return Err(HostsError::EndWithoutBegin { line: line.number })
            }
            (Some(Marker::End { cluster: end }), Some((begin, cluster, legacy))) => {
                if let Some(end) = end.filter(|end| Some(*end) != cluster) {
                    return Err(HostsError::MismatchedEnd {
                        line: line.number,
                        end: end.to_owned(),
                        open_line: lines[begin].number,
                        begin: cluster.unwrap_or_default().to_owned(),
                    });
                }
                found.push(Block {
                    begin,
                    end: index,
                    cluster,
                    legacy,
                });
                open = None;
            }
        }
    }
    match open {
        Some((begin, ..)) => Err(HostsError::UnterminatedBlock {
            line: lines[begin].number,
        }),
        None => Ok(found),
    }
}

fn remove_block(content: &str, lines: &[Line<'_>], block: Block<'_>) -> String {
    let mut start = block.byte_start(lines);
    // An END line without an ending sits at the end of the file; the line before it got its ending
    // only because the block followed, so it goes too (this is what lets removal restore a file
    // that had no final newline).
    if lines[block.end].ending.is_empty() && block.begin > 0 {
        start -= lines[block.begin - 1].ending.len();
    }
    let mut stripped = String::with_capacity(content.len());
    stripped.push_str(&content[..start]);
    stripped.push_str(&content[block.byte_end(lines)..]);
    stripped
}

fn first_line_ending<'a>(lines: &[Line<'a>], skip: Option<Block<'_>>) -> Option<&'a str> {
    lines
        .iter()
        .enumerate()
        .filter(|(index, _)| !skip.is_some_and(|block| block.contains(*index)))
        .map(|(_, line)| line.ending)
        .find(|ending| !ending.is_empty())
}

/// The ending the block should use: the file's own (judged outside the block, so that a block that
/// happens to come first does not decide for the operator's lines), else the block's, else LF.
fn file_line_ending(lines: &[Line<'_>], block: Option<Block<'_>>) -> &'static str {
    let found = first_line_ending(lines, block).or_else(|| first_line_ending(lines, None));
    if found == Some(CRLF) {
        CRLF
    } else {
        LF
    }
}

fn render_block(cluster: &str, entries: &[HostsEntry], eol: &str, final_eol: bool) -> String {
    let mut block = format!(
        "{BEGIN_PREFIX} {cluster} (managed by kreach-agent; manual edits inside are reverted){eol}"
    );
    for entry in entries {
        block.push_str(&entry.ip.to_string());
        block.push('\t');
        block.push_str(&entry.names.join(" "));
        block.push_str(eol);
    }
    block.push_str(END_MARKER);
    block.push(' ');
    block.push_str(cluster);
    if final_eol {
        block.push_str(eol);
    }
    block
}

fn strip_comment(text: &str) -> &str {
    text.split_once('#').map_or(text, |(before, _)| before)
}

/// Parses a hosts line as resolvers do: an address, then names; `None` for anything else.
fn parse_hosts_line(text: &str) -> Option<(&str, IpAddr, Vec<&str>)> {
    let mut tokens = strip_comment(text).split_whitespace();
    let address = tokens.next()?;
    // A zone (`fe80::1%eth0`) does not change which address a name points to.
    let ip = address.split('%').next()?.parse::<IpAddr>().ok()?;
    Some((address, ip, tokens.collect()))
}

fn find_conflicts(
    lines: &[Line<'_>],
    blocks: &[Block<'_>],
    block: Option<Block<'_>>,
    entries: &[HostsEntry],
) -> Vec<HostsConflict> {
    // Resolvers compare names case-insensitively, so index ours by their lowercase form.
    let mut ours: HashMap<String, (&str, Vec<IpAddr>)> = HashMap::new();
    for entry in entries {
        for name in &entry.names {
            ours.entry(name.to_ascii_lowercase())
                .or_insert_with(|| (name.as_str(), Vec::new()))
                .1
                .push(entry.ip);
        }
    }
    if ours.is_empty() {
        return Vec::new();
    }

    let mut conflicts = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if block.is_some_and(|block| block.contains(index)) {
            continue;
        }
        let cluster = blocks
            .iter()
            .find(|other| other.contains(index))
            .map(|other| other.cluster.unwrap_or_default().to_owned());
        let Some((address, ip, names)) = parse_hosts_line(line.text) else {
            continue;
        };
        let mut reported: Vec<String> = Vec::new();
        for name in names {
            let key = name.to_ascii_lowercase();
            let Some((our_name, our_ips)) = ours.get(&key) else {
                continue;
            };
            if our_ips.contains(&ip) || reported.contains(&key) {
                continue;
            }
            conflicts.push(HostsConflict {
                cluster: cluster.clone(),
                line_number: line.number,
                name: (*our_name).to_owned(),
                their_ip: address.to_owned(),
                our_ip: our_ips[0],
                line: line.text.to_owned(),
            });
            reported.push(key);
        }
    }
    conflicts
}

fn validate_cluster(cluster: &str) -> Result<(), HostsError> {
    let invalid = |reason: &str| {
        Err(HostsError::InvalidClusterName {
            cluster: cluster.to_owned(),
            reason: reason.to_owned(),
        })
    };
    if cluster.is_empty() {
        return invalid("is empty");
    }
    // The name goes into the BEGIN marker line; whitespace would make it ambiguous and a line break
    // would split the marker.
    if cluster.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid("contains whitespace or a control character");
    }
    // The name is the marker's first word: `(` would read as the note after it, `cluster=` as
    // the older format.
    if cluster.starts_with('(') || cluster.starts_with(LEGACY_NAME) {
        return invalid("starts with '(' or 'cluster='");
    }
    Ok(())
}

fn validate_entries(entries: &[HostsEntry]) -> Result<(), HostsError> {
    for (position, entry) in entries.iter().enumerate() {
        let entry_number = position + 1;
        if entry.names.is_empty() {
            return Err(HostsError::EntryWithoutNames {
                entry: entry_number,
                ip: entry.ip,
            });
        }
        for name in &entry.names {
            if let Err(reason) = check_hostname(name) {
                return Err(HostsError::InvalidName {
                    entry: entry_number,
                    ip: entry.ip,
                    name: name.clone(),
                    reason,
                });
            }
        }
    }
    Ok(())
}

/// RFC 1123 host names. Underscores are refused on purpose: the resolver would accept them, but
/// Java's URI parsing (and so Kafka clients) cannot use such a host, so the entry would not help.
pub fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_owned());
    }
    if name.len() > 253 {
        return Err(format!(
            "is {} characters long; the limit is 253",
            name.len()
        ));
    }
    let labels: Vec<&str> = name.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err("has an empty label (a leading, trailing or doubled '.')".to_owned());
        }
        if label.len() > 63 {
            return Err(format!(
                "has the label {label:?} of {} characters; the limit is 63",
                label.len()
            ));
        }
        if let Some(bad) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "contains {bad:?}; only ASCII letters, digits, '-' and '.' are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "has the label {label:?} starting or ending with '-'"
            ));
        }
    }
    // An all-digit last label reads as an address (`10.0.0.1`), not a name.
    if labels
        .last()
        .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("ends in an all-numeric label, so it would read as an address".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ip: &str, names: &[&str]) -> HostsEntry {
        HostsEntry {
            ip: ip.parse().unwrap(),
            names: names.iter().map(|name| (*name).to_owned()).collect(),
        }
    }

    fn brokers() -> Vec<HostsEntry> {
        vec![
            entry("10.0.1.24", &["b-1.kafka.internal", "b-1"]),
            entry("10.0.1.25", &["b-2.kafka.internal", "b-2"]),
        ]
    }

    const MARKER: &str =
        "# BEGIN kreach prod (managed by kreach-agent; manual edits inside are reverted)";
    /// The block of a kreach from before several clusters per host.
    const OLDER_MARKER: &str =
        "# BEGIN kreach cluster=prod (managed by kreach-agent; manual edits inside are reverted)";

    #[test]
    fn empty_file_becomes_just_the_block_with_a_final_newline() {
        let edit = apply_block("", "prod", &brokers()).unwrap();
        assert_eq!(
            edit.content,
            format!(
                "{MARKER}\n10.0.1.24\tb-1.kafka.internal b-1\n10.0.1.25\tb-2.kafka.internal b-2\n# END kreach prod\n"
            )
        );
        assert!(edit.conflicts.is_empty());
        assert_eq!(apply_block(&edit.content, "prod", &[]).unwrap().content, "");
    }

    #[test]
    fn removing_when_there_is_no_block_changes_nothing() {
        let original = "127.0.0.1 localhost\r\n::1 localhost";
        let edit = apply_block(original, "prod", &[]).unwrap();
        assert_eq!(edit.content, original);
    }

    #[test]
    fn single_line_without_ending_gets_lf_and_round_trips() {
        let original = "127.0.0.1 localhost";
        let content = apply_block(original, "prod", &brokers()).unwrap().content;
        assert!(content.starts_with("127.0.0.1 localhost\n# BEGIN kreach"));
        assert!(content.ends_with("# END kreach prod"));
        assert_eq!(strip_block(&content, "prod").unwrap(), original);
        assert_eq!(
            apply_block(&content, "prod", &brokers()).unwrap().content,
            content
        );
    }

    #[test]
    fn trailing_bare_carriage_return_survives_a_round_trip() {
        for original in ["x\r", "a\nb\r", "a\r\nb\r"] {
            let content = apply_block(original, "prod", &brokers()).unwrap().content;
            assert_eq!(
                strip_block(&content, "prod").unwrap(),
                original,
                "{original:?}"
            );
            assert_eq!(
                apply_block(&content, "prod", &brokers()).unwrap().content,
                content,
                "{original:?}"
            );
        }
    }

    #[test]
    fn block_first_in_file_follows_the_operators_line_endings() {
        // The operator's lines are LF even though the block (first in the file) is CRLF.
        let content = format!("{MARKER}\r\n10.0.0.1\tx\r\n# END kreach\r\n127.0.0.1 localhost\n");
        let edit = apply_block(&content, "prod", &brokers()).unwrap();
        assert_eq!(
            edit.content,
            format!(
                "{MARKER}\n10.0.1.24\tb-1.kafka.internal b-1\n10.0.1.25\tb-2.kafka.internal b-2\n# END kreach prod\n127.0.0.1 localhost\n"
            )
        );
    }

    #[test]
    fn read_block_skips_comments_and_rejects_garbage() {
        let content = format!("{MARKER}\n# note\n\n10.0.0.1 a b # why\n# END kreach\n");
        assert_eq!(
            read_block(&content, "prod").unwrap(),
            Some(vec![entry("10.0.0.1", &["a", "b"])])
        );
        let content = format!("{MARKER}\nnot-an-ip a\n# END kreach\n");
        assert_eq!(
            read_block(&content, "prod").unwrap_err(),
            HostsError::InvalidBlockLine {
                line: 2,
                reason: "\"not-an-ip\" is not an IP address".to_owned()
            }
        );
        let content = format!("x\n{MARKER}\n10.0.0.1\n# END kreach\n");
        assert!(matches!(
            read_block(&content, "prod"),
            Err(HostsError::InvalidBlockLine { line: 3, .. })
        ));
        assert_eq!(read_block("127.0.0.1 localhost\n", "prod").unwrap(), None);
    }

    #[test]
    fn manual_edits_inside_the_block_are_reverted() {
        let content = format!("a\n{MARKER}\nnot-an-ip a\n# hand edit\n# END kreach\nz\n");
        let edit = apply_block(&content, "prod", &brokers()).unwrap();
        assert_eq!(
            edit.content,
            format!(
                "a\n{MARKER}\n10.0.1.24\tb-1.kafka.internal b-1\n10.0.1.25\tb-2.kafka.internal b-2\n# END kreach prod\nz\n"
            )
        );
    }

    #[test]
    fn markers_need_a_word_boundary_and_may_be_indented() {
        assert_eq!(marker("# BEGIN kreachy"), None);
        assert_eq!(marker("# END kreach2"), None);
        let begin = |cluster, legacy| Some(Marker::Begin { cluster, legacy });
        assert_eq!(marker("  # BEGIN kreach cluster=x"), begin(Some("x"), true));
        assert_eq!(
            marker("# BEGIN kreach x (managed ...)"),
            begin(Some("x"), false)
        );
        assert_eq!(marker("# BEGIN kreach (managed ...)"), begin(None, true));
        assert_eq!(
            marker("# END kreach  "),
            Some(Marker::End { cluster: None })
        );
        assert_eq!(
            marker("# END kreach x"),
            Some(Marker::End { cluster: Some("x") })
        );
        assert_eq!(marker("#BEGIN kreach"), None);
    }

    #[test]
    fn lookup_answers_as_the_files_resolver_does_first_line_first() {
        let text =
            "127.0.0.1 localhost\n10.0.0.9 B1.c # hand-made, shadows\n# BEGIN kreach cluster=c\n\
                    10.0.0.1 b1.c b1\n10.0.0.1 again b1.c\n# END kreach\n";
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(lookup(text, "b1.c"), [ip("10.0.0.9"), ip("10.0.0.1")]);
        assert_eq!(lookup(text, "B1"), [ip("10.0.0.1")]);
        assert!(lookup(text, "b2.c").is_empty());
        assert!(
            lookup(text, "hand-made").is_empty(),
            "comments are not names"
        );
    }

    #[test]
    fn conflicts_are_case_insensitive_once_per_name_and_ignore_same_address() {
        let original = "10.9.9.9 B-1.KAFKA.internal b-1 b-1 # stale\n\
                        10.0.1.25 b-2 # same address: fine\n\
                        # 10.9.9.9 b-2 commented out: fine\n\
                        fe80::1%eth0 b-2\n";
        let edit = apply_block(original, "prod", &brokers()).unwrap();
        let found: Vec<(usize, &str, &str)> = edit
            .conflicts
            .iter()
            .map(|c| (c.line_number, c.name.as_str(), c.their_ip.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (1, "b-1.kafka.internal", "10.9.9.9"),
                (1, "b-1", "10.9.9.9"),
                (4, "b-2", "fe80::1%eth0"),
            ]
        );
        assert_eq!(
            edit.conflicts[0].line,
            "10.9.9.9 B-1.KAFKA.internal b-1 b-1 # stale"
        );
        assert_eq!(
            edit.conflicts[0].to_string(),
            "line 1 maps b-1.kafka.internal to 10.9.9.9, but kreach manages it as 10.0.1.24 \
             (the resolver uses the first match; remove or fix that line)"
        );
    }

    #[test]
    fn a_name_managed_at_two_addresses_conflicts_with_neither() {
        let entries = vec![entry("10.0.0.1", &["b-1"]), entry("fd00::1", &["b-1"])];
        let edit = apply_block("fd00::1 b-1\n10.0.0.1 b-1\n", "prod", &entries).unwrap();
        assert!(edit.conflicts.is_empty());
    }

    #[test]
    fn invalid_names_are_refused_with_their_entry() {
        let cases: [(&str, &str); 8] = [
            ("", "is empty"),
            ("kafka_1", "contains '_'"),
            ("-b", "starting or ending with '-'"),
            ("b.", "empty label"),
            ("a..b", "empty label"),
            ("10.0.0.1", "all-numeric"),
            ("bröker", "contains 'ö'"),
            ("has space", "contains ' '"),
        ];
        for (name, expected) in cases {
            let entries = vec![
                entry("10.0.0.1", &["ok"]),
                entry("10.0.0.2", &["ok2", name]),
            ];
            let error = apply_block("", "prod", &entries).unwrap_err();
            let message = error.to_string();
            assert!(
                message.starts_with("entry 2 (10.0.0.2): name ") && message.contains(expected),
                "{name:?}: {message}"
            );
        }
        assert!(check_hostname(&format!("{}.x", "a".repeat(63))).is_ok());
        assert!(check_hostname(&format!("{}.x", "a".repeat(64))).is_err());
        assert!(check_hostname(&vec!["a"; 128].join(".")).is_err());
        assert!(check_hostname("0day.example.com").is_ok());
    }

    #[test]
    fn entries_without_names_and_bad_cluster_names_are_refused() {
        let entries = vec![entry("10.0.0.1", &[])];
        assert_eq!(
            apply_block("", "prod", &entries).unwrap_err().to_string(),
            "entry 1 (10.0.0.1) has no names; every hosts line needs at least one"
        );
        for cluster in ["", "a b", "a\nb"] {
            assert!(matches!(
                apply_block("", cluster, &brokers()),
                Err(HostsError::InvalidClusterName { .. })
            ));
        }
    }

    #[test]
    fn the_older_block_is_rewritten_in_place_with_todays_markers() {
        let content = format!("a\n{OLDER_MARKER}\n10.0.0.1\tb-1\n# END kreach\nz\n");
        assert_eq!(
            read_block(&content, "prod").unwrap(),
            Some(vec![entry("10.0.0.1", &["b-1"])])
        );
        let edit = apply_block(&content, "prod", &brokers()).unwrap();
        assert_eq!(
            edit.content,
            format!(
                "a\n{MARKER}\n10.0.1.24\tb-1.kafka.internal b-1\n10.0.1.25\tb-2.kafka.internal b-2\n# END kreach prod\nz\n"
            )
        );
        // An older block of another name is another cluster's: kept, ours appended.
        let edit = apply_block(&content, "orders", &brokers()).unwrap();
        assert!(edit.content.starts_with(&content), "{}", edit.content);
        assert_eq!(block_clusters(&edit.content).unwrap(), ["prod", "orders"]);
        // A host that holds one cluster drops the others' blocks in the same write (a renamed
        // cluster's older block included).
        let kept = retain_blocks(&content, &["orders"]).unwrap();
        assert_eq!(kept, "a\nz\n");
    }

    #[test]
    fn another_clusters_block_mapping_our_name_elsewhere_is_a_conflict() {
        let payments =
            "# BEGIN kreach payments\n10.9.9.9\tb-1.kafka.internal\n# END kreach payments\n";
        let edit = apply_block(payments, "prod", &brokers()).unwrap();
        assert_eq!(edit.conflicts.len(), 1, "{:?}", edit.conflicts);
        let conflict = &edit.conflicts[0];
        assert_eq!(conflict.cluster.as_deref(), Some("payments"));
        assert_eq!(
            conflict.to_string(),
            "line 2 (cluster payments's kreach block) maps b-1.kafka.internal to 10.9.9.9, but this cluster maps it to 10.0.1.24: two clusters claim the name and the resolver uses the first match; fix one of the two specs"
        );
        // The same address in both blocks is no conflict.
        let same =
            "# BEGIN kreach payments\n10.0.1.24\tb-1.kafka.internal\n# END kreach payments\n";
        assert!(apply_block(same, "prod", &brokers())
            .unwrap()
            .conflicts
            .is_empty());
    }
}

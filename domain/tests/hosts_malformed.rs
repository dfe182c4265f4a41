//! Hosts files whose kreach markers do not form exactly one block: every function refuses them and
//! names the line, rather than guessing which lines are ours.

use kreach_domain::hosts::{apply_block, read_block, strip_block, HostsEntry, HostsError};

const BEGIN: &str =
    "# BEGIN kreach cluster=orders (managed by kreach-agent; manual edits inside are reverted)";

fn entries() -> Vec<HostsEntry> {
    vec![HostsEntry {
        ip: "10.0.1.24".parse().unwrap(),
        names: vec!["b-1.orders.kafka.internal".to_owned(), "b-1".to_owned()],
    }]
}

/// All three entry points, with and without entries, must fail the same way.
fn assert_refused(content: &str, expected: &HostsError) {
    assert_eq!(
        apply_block(content, "orders", &entries()).as_ref(),
        Err(expected)
    );
    assert_eq!(apply_block(content, "orders", &[]).as_ref(), Err(expected));
    assert_eq!(read_block(content).as_ref(), Err(expected));
    assert_eq!(strip_block(content).as_ref(), Err(expected));
}

#[test]
fn begin_without_end() {
    let content = format!("127.0.0.1 localhost\n{BEGIN}\n10.0.1.24\tb-1\n");
    let error = HostsError::UnterminatedBlock { line: 2 };
    assert_refused(&content, &error);
    assert!(error.to_string().starts_with("line 2: "), "{error}");
}

#[test]
fn begin_inside_a_block() {
    let content = format!("{BEGIN}\n10.0.1.24\tb-1\n{BEGIN}\n# END kreach\n");
    let error = HostsError::NestedBlock {
        line: 3,
        open_line: 1,
    };
    assert_refused(&content, &error);
    assert!(error.to_string().starts_with("line 3: "), "{error}");
}

#[test]
fn two_blocks() {
    let content =
        format!("{BEGIN}\n# END kreach\n127.0.0.1 localhost\r\n{BEGIN}\r\n# END kreach\r\n");
    let error = HostsError::DuplicateBlock {
        line: 4,
        first_line: 1,
    };
    assert_refused(&content, &error);
    assert!(error.to_string().starts_with("line 4: "), "{error}");
}

#[test]
fn end_without_begin() {
    let content = "127.0.0.1 localhost\n\n# END kreach\n";
    let error = HostsError::EndWithoutBegin { line: 3 };
    assert_refused(content, &error);
    assert!(error.to_string().starts_with("line 3: "), "{error}");
}

#[test]
fn end_before_begin() {
    let content = format!("# END kreach\n{BEGIN}\n");
    assert_refused(&content, &HostsError::EndWithoutBegin { line: 1 });
}

#[test]
fn lookalike_markers_are_ordinary_comments() {
    let content = "# BEGIN kreachy other tool\n# END kreachy\n#BEGIN kreach\n";
    assert_eq!(read_block(content), Ok(None));
    assert_eq!(strip_block(content).as_deref(), Ok(content));
    let edit = apply_block(content, "orders", &entries()).unwrap();
    assert!(edit.content.starts_with(content));
}

//! Hosts files whose kreach markers do not form one block per cluster: every function refuses
//! them and names the line, rather than guessing which lines are whose.

use kreach_domain::hosts::{
    apply_block, read_block, retain_blocks, strip_block, HostsEntry, HostsError,
};

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
    assert_eq!(read_block(content, "orders").as_ref(), Err(expected));
    assert_eq!(strip_block(content, "orders").as_ref(), Err(expected));
    assert_eq!(retain_blocks(content, &["orders"]).as_ref(), Err(expected));
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
    assert_eq!(read_block(content, "orders"), Ok(None));
    assert_eq!(strip_block(content, "orders").as_deref(), Ok(content));
    let edit = apply_block(content, "orders", &entries()).unwrap();
    assert!(edit.content.starts_with(content));
}

#[test]
fn an_end_naming_another_cluster() {
    let content = "# BEGIN kreach orders\n10.0.1.24\tb-1\n# END kreach payments\n";
    let error = HostsError::MismatchedEnd {
        line: 3,
        end: "payments".into(),
        open_line: 1,
        begin: "orders".into(),
    };
    assert_refused(content, &error);
    assert_eq!(
        error.to_string(),
        "line 3: `# END kreach payments` closes the block of \"orders\" opened at line 1; fix the markers by hand"
    );
}

#[test]
fn the_older_block_and_a_new_one_of_the_same_cluster() {
    let content = format!("{BEGIN}\n# END kreach\n# BEGIN kreach orders\n# END kreach orders\n");
    assert_refused(
        &content,
        &HostsError::DuplicateBlock {
            line: 3,
            first_line: 1,
        },
    );
}

#[test]
fn blocks_of_two_clusters_are_no_error() {
    let content = "# BEGIN kreach orders\n10.0.1.24\tb-1\n# END kreach orders\n\
                   # BEGIN kreach payments\n10.0.2.24\tp-1\n# END kreach payments\n";
    assert_eq!(read_block(content, "orders").unwrap().unwrap().len(), 1);
    assert_eq!(read_block(content, "payments").unwrap().unwrap().len(), 1);
}

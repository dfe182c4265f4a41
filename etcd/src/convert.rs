//! Our types ↔ etcd's wire messages, in one place. Pure: no I/O, unit-tested below.
//!
//! Owns: building the `RangeRequest`/`TxnRequest` etcd expects (range ends, ops, compares) and
//! reading a `TxnResponse` back into a [`TxnResult`]. Does not own: sending them (`lib.rs`).

use crate::generated::etcdserverpb as pb;
use crate::generated::mvccpb;
use crate::{Compare, Error, KeyValue, Op, Txn, TxnResult};

/// etcd's `range_end` for every key starting with `prefix`: the prefix with its last byte below
/// 0xff incremented and the rest dropped. A prefix of only 0xff bytes (or empty) has no such
/// end, so it is `"\0"`, which etcd reads as "every key >= key".
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    match prefix.iter().rposition(|&byte| byte < 0xff) {
        Some(last) => {
            let mut end = prefix[..=last].to_vec();
            end[last] += 1;
            end
        }
        None => vec![0],
    }
}

/// The key right after `key` in etcd's byte order: where the next page of a range starts.
pub(crate) fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

impl From<mvccpb::KeyValue> for KeyValue {
    fn from(kv: mvccpb::KeyValue) -> KeyValue {
        KeyValue {
            key: kv.key,
            value: kv.value,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            lease: kv.lease,
        }
    }
}

/// A linearizable (or, with `serializable`, a local) read of one key or of `[key, range_end)`.
pub(crate) fn range_request(
    key: &[u8],
    range_end: Vec<u8>,
    serializable: bool,
) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.to_vec(),
        range_end,
        serializable,
        ..Default::default()
    }
}

fn compare(compare: Compare) -> pb::Compare {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let (key, target, union) = match compare {
        Compare::CreateRevision { key, equals } => (
            key,
            CompareTarget::Create,
            TargetUnion::CreateRevision(equals),
        ),
        Compare::ModRevision { key, equals } => {
            (key, CompareTarget::Mod, TargetUnion::ModRevision(equals))
        }
        Compare::Value { key, equals } => (key, CompareTarget::Value, TargetUnion::Value(equals)),
    };
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: target as i32,
        key,
        target_union: Some(union),
        range_end: Vec::new(),
    }
}

fn request_op(op: Op) -> pb::RequestOp {
    use pb::request_op::Request;
    let delete = |key: Vec<u8>, range_end: Vec<u8>| {
        Request::RequestDeleteRange(pb::DeleteRangeRequest {
            key,
            range_end,
            prev_kv: false,
        })
    };
    let request = match op {
        Op::Put { key, value, lease } => Request::RequestPut(pb::PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        }),
        Op::Delete { key } => delete(key, Vec::new()),
        Op::DeletePrefix { prefix } => {
            let end = prefix_end(&prefix);
            delete(prefix, end)
        }
        Op::DeleteRange { from, to } => delete(from, to),
        Op::Get { key } => Request::RequestRange(range_request(&key, Vec::new(), false)),
    };
    pb::RequestOp {
        request: Some(request),
    }
}

pub(crate) fn txn_request(txn: Txn) -> pb::TxnRequest {
    pb::TxnRequest {
        compare: txn.when.into_iter().map(compare).collect(),
        success: txn.then.into_iter().map(request_op).collect(),
        failure: txn.otherwise.into_iter().map(request_op).collect(),
    }
}

/// The branch taken, its revision, and what each of its `Get`s read, in order.
pub(crate) fn txn_result(response: pb::TxnResponse) -> Result<TxnResult, Error> {
    use pb::response_op::Response;
    let mut gets = Vec::new();
    for op in response.responses {
        match op.response {
            Some(Response::ResponseRange(range)) => {
                gets.push(range.kvs.into_iter().map(KeyValue::from).collect())
            }
            Some(Response::ResponsePut(_)) | Some(Response::ResponseDeleteRange(_)) => {}
            None => {
                return Err(Error::Protocol(
                    "a txn response op without a response (nested txns are not supported)".into(),
                ))
            }
        }
    }
    Ok(TxnResult {
        succeeded: response.succeeded,
        revision: header_revision(response.header),
        gets,
    })
}

pub(crate) fn header_revision(header: Option<pb::ResponseHeader>) -> i64 {
    header.map_or(0, |header| header.revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_where_its_last_byte_below_0xff_is_incremented() {
        assert_eq!(prefix_end(b"kreach/"), b"kreach0".to_vec());
        assert_eq!(prefix_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"a\xfe"), b"a\xff".to_vec());
        // No end exists: "\0" means every key from the prefix on.
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn the_next_page_starts_right_after_the_last_key_read() {
        let next = key_after(b"k/1");
        assert!(next.as_slice() > b"k/1".as_slice());
        assert!(next.as_slice() < b"k/1\x00a".as_slice());
        assert!(next.as_slice() < b"k/2".as_slice());
    }

    #[test]
    fn a_txn_carries_its_compares_and_both_branches() {
        use pb::request_op::Request;
        let request = txn_request(Txn {
            when: vec![Compare::CreateRevision {
                key: b"leader".to_vec(),
                equals: 7,
            }],
            then: vec![
                Op::Put {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                    lease: 3,
                },
                Op::DeletePrefix {
                    prefix: b"p/".to_vec(),
                },
            ],
            otherwise: vec![Op::Get {
                key: b"leader".to_vec(),
            }],
        });
        let compare = &request.compare[0];
        assert_eq!(compare.target, pb::compare::CompareTarget::Create as i32);
        assert_eq!(compare.result, pb::compare::CompareResult::Equal as i32);
        assert_eq!(
            compare.target_union,
            Some(pb::compare::TargetUnion::CreateRevision(7))
        );
        match &request.success[1].request {
            Some(Request::RequestDeleteRange(delete)) => {
                assert_eq!(delete.key, b"p/");
                assert_eq!(delete.range_end, b"p0");
            }
            other => panic!("expected a prefix delete, got {other:?}"),
        }
        match &request.failure[0].request {
            Some(Request::RequestRange(range)) => {
                assert_eq!(range.key, b"leader");
                assert!(range.range_end.is_empty(), "a Get reads one key");
                assert!(!range.serializable);
            }
            other => panic!("expected a get, got {other:?}"),
        }
    }

    #[test]
    fn a_txn_result_has_one_entry_per_get_in_order() {
        use pb::response_op::Response;
        let range = |value: &[u8]| pb::ResponseOp {
            response: Some(Response::ResponseRange(pb::RangeResponse {
                kvs: vec![mvccpb::KeyValue {
                    key: b"k".to_vec(),
                    value: value.to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            })),
        };
        let result = txn_result(pb::TxnResponse {
            header: Some(pb::ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            succeeded: false,
            responses: vec![
                range(b"first"),
                pb::ResponseOp {
                    response: Some(Response::ResponsePut(pb::PutResponse::default())),
                },
                range(b"second"),
            ],
        })
        .unwrap();
        assert!(!result.succeeded);
        assert_eq!(result.revision, 42);
        let values: Vec<&[u8]> = result
            .gets
            .iter()
            .map(|kvs| kvs[0].value.as_slice())
            .collect();
        assert_eq!(values, [b"first".as_slice(), b"second".as_slice()]);
    }
}

//! Fuzzes how the agent's Kafka probes read a response (`kreach_runtime::kafka_frame`, which
//! `agent/src/kafka.rs` calls for every header and body): the first byte picks one of the APIs
//! and versions the probe decodes, the rest is the response frame after its size prefix. Whatever
//! the bytes, nothing panics and nothing allocates beyond a small multiple of the frame (a count
//! the check let through to `kafka-protocol`'s `Vec::with_capacity` would trip libFuzzer's
//! malloc/RSS limit); a refusal is the check's, never the decoder's; and whenever the crate
//! decodes a message it read exactly the bytes the check walked (`decode` asserts that in debug
//! builds, which fuzz builds are).
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::{
    AlterUserScramCredentialsResponse, ApiKey, ApiVersionsResponse, DescribeConfigsResponse,
    DescribeQuorumResponse, IncrementalAlterConfigsResponse, MetadataResponse, ResponseHeader,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kreach_runtime::kafka_frame::{check, decode, CheckedResponse};
use libfuzzer_sys::fuzz_target;

/// Kafka's error code for a request version the broker does not support.
const UNSUPPORTED_VERSION: i16 = 35;

/// Every API and version the probe decodes (its request versions are these, negotiated from
/// ApiVersions), in the order the selector byte indexes them.
fn targets() -> Vec<(ApiKey, i16)> {
    let mut targets = Vec::new();
    targets.extend((0..=4).map(|v| (ApiKey::ApiVersions, v)));
    targets.extend((0..=13).map(|v| (ApiKey::Metadata, v)));
    targets.extend((1..=4).map(|v| (ApiKey::DescribeConfigs, v)));
    targets.extend((0..=2).map(|v| (ApiKey::DescribeQuorum, v)));
    targets.extend((0..=1).map(|v| (ApiKey::IncrementalAlterConfigs, v)));
    targets.push((ApiKey::AlterUserScramCredentials, 0));
    targets.extend((0..=1).map(|v| (ApiKey::SaslHandshake, v)));
    targets.extend((0..=2).map(|v| (ApiKey::SaslAuthenticate, v)));
    targets
}

/// Check and decode one `T` from the front of `payload` as the agent does, holding the check
/// and the decoder to each other.
fn read<T: CheckedResponse>(payload: &mut Bytes, version: i16) -> Option<T> {
    let before = payload.clone();
    let checked = check::<T>(&before, version);
    match decode::<T>(payload, version) {
        Ok(value) => {
            let walked = checked.expect("decoded what the check refused");
            assert_eq!(before.len() - payload.len(), walked);
            Some(value)
        }
        Err(error) => {
            if let Err(refusal) = checked {
                assert_eq!(error, refusal, "a refused frame reached the decoder");
            }
            None
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, frame)) = data.split_first() else {
        return;
    };
    let targets = targets();
    let (api, version) = targets[usize::from(selector) % targets.len()];
    let mut payload = Bytes::copy_from_slice(frame);
    if read::<ResponseHeader>(&mut payload, api.response_header_version(version)).is_none() {
        return;
    }
    match api {
        ApiKey::ApiVersions => {
            // The agent's fallback: an old broker answers a version it does not know in v0.
            let answer = read::<ApiVersionsResponse>(&mut payload.clone(), version);
            if answer.is_none_or(|answer| answer.error_code == UNSUPPORTED_VERSION) {
                let _ = read::<ApiVersionsResponse>(&mut payload, 0);
            }
        }
        ApiKey::Metadata => {
            let _ = read::<MetadataResponse>(&mut payload, version);
        }
        ApiKey::DescribeConfigs => {
            let _ = read::<DescribeConfigsResponse>(&mut payload, version);
        }
        ApiKey::DescribeQuorum => {
            let _ = read::<DescribeQuorumResponse>(&mut payload, version);
        }
        ApiKey::IncrementalAlterConfigs => {
            let _ = read::<IncrementalAlterConfigsResponse>(&mut payload, version);
        }
        ApiKey::AlterUserScramCredentials => {
            let _ = read::<AlterUserScramCredentialsResponse>(&mut payload, version);
        }
        ApiKey::SaslHandshake => {
            let _ = read::<SaslHandshakeResponse>(&mut payload, version);
        }
        ApiKey::SaslAuthenticate => {
            let _ = read::<SaslAuthenticateResponse>(&mut payload, version);
        }
        _ => unreachable!("not a probe API"),
    }
});

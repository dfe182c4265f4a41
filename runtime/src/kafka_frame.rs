//! Kafka response frames checked before they are decoded: the agent's probes talk to whatever
//! answers on an address, and what it sends is hostile input until proven otherwise.
//!
//! `kafka-protocol` decodes an array by reserving `Vec::with_capacity(count)` from the count on
//! the wire, before it reads a single element; a frame of a few bytes claiming four billion
//! elements would make the agent abort on allocation. So every response the probe decodes is
//! first walked here, field by field, in the same order and with the same version conditions as
//! the crate's generated decoders, and refused unless every count fits the bytes actually left:
//! an array of `n` elements needs at least `n` × the element's smallest encoding, a string or
//! byte field needs its length. Only a frame that passes is handed to the crate, so the crate
//! never reserves more than a small multiple of the frame's own size.
//!
//! Covered, exactly the messages and versions the probe decodes: the response header (v0, v1),
//! ApiVersions (v0..v4; v3+ flexible, with its known tagged fields), Metadata (v0..v13; v9+
//! flexible), DescribeConfigs (v1..v4; v4 flexible), DescribeQuorum (v0..v2, always flexible)
//! IncrementalAlterConfigs (v0..v1; v1 flexible), AlterUserScramCredentials (v0, flexible),
//! SaslHandshake (v0..v1) and SaslAuthenticate (v0..v2; v2 flexible).
//! Anything else is refused. Pure: no I/O.
//!
//! The walk checks bounds and the grammar, not meaning: UTF-8, error codes and the like are left
//! to the crate and the caller. Trailing bytes after the message are tolerated, as the crate does.

use bytes::Bytes;
use kafka_protocol::messages::alter_user_scram_credentials_response::AlterUserScramCredentialsResult;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::describe_quorum_response::{
    Listener, Node, PartitionData, ReplicaState, TopicData,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    AlterUserScramCredentialsResponse, ApiVersionsResponse, DescribeConfigsResponse,
    DescribeQuorumResponse, IncrementalAlterConfigsResponse, MetadataResponse, ResponseHeader,
    SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// A message whose wire layout is walked here before `kafka-protocol` decodes it.
pub trait CheckedResponse: Decodable {
    /// How errors name the message, e.g. `Metadata`.
    const NAME: &'static str;
    /// Walk one message of `walker.version` from the walker's position, or say what is wrong.
    fn walk(walker: &mut Walker<'_>) -> Result<(), String>;
}

/// Check `body` as a `T` of `version`: `Ok` with the bytes the message takes when every count in
/// it fits the bytes it has, otherwise what is wrong.
pub fn check<T: CheckedResponse>(body: &[u8], version: i16) -> Result<usize, String> {
    let mut walker = Walker {
        name: T::NAME,
        version,
        bytes: body,
        pos: 0,
    };
    T::walk(&mut walker)?;
    Ok(walker.pos)
}

/// Check, then decode a `T` of `version` from the front of `payload`, advancing it past what the
/// crate read. Any refusal, decoding error or panic inside the decoder comes back as a message,
/// and so does a decoder that read a different length than the check walked (the check and the
/// crate disagreeing on the layout; debug builds and the fuzz target panic on it instead).
pub fn decode<T: CheckedResponse>(payload: &mut Bytes, version: i16) -> Result<T, String> {
    let walked = check::<T>(payload, version)?;
    let before = payload.len();
    let outcome =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| T::decode(payload, version)));
    match outcome {
        Ok(Ok(value)) => {
            let read = before - payload.len();
            debug_assert_eq!(
                read,
                walked,
                "{} v{version}: the check and the decoder disagree on the layout",
                T::NAME
            );
            if read != walked {
                return Err(format!(
                    "{} v{version}: the check walked {walked} bytes but the decoder read {read}",
                    T::NAME
                ));
            }
            Ok(value)
        }
        Ok(Err(error)) => Err(format!("cannot decode {} v{version}: {error}", T::NAME)),
        Err(_) => Err(format!(
            "cannot decode {} v{version}: the decoder gave up on malformed bytes",
            T::NAME
        )),
    }
}

/// The length prefixes a flexible (compact) or a classic field uses.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prefix {
    /// `INT16` string lengths, `INT32` array counts; -1 is null.
    Classic,
    /// Unsigned varint of length + 1; 0 is null.
    Compact,
}

impl Prefix {
    fn when_flexible(flexible: bool) -> Prefix {
        if flexible {
            Prefix::Compact
        } else {
            Prefix::Classic
        }
    }
}

/// A length prefix as read: null, or a non-negative length.
enum Length {
    Null,
    Some(u64),
}

/// A cursor over one message that refuses every read past its end.
pub struct Walker<'a> {
    name: &'static str,
    version: i16,
    bytes: &'a [u8],
    pos: usize,
}

impl Walker<'_> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn error(&self, detail: impl std::fmt::Display) -> String {
        format!("the {} v{} response {detail}", self.name, self.version)
    }

    fn unsupported_version(&self) -> String {
        format!(
            "kreach does not read {} v{} responses",
            self.name, self.version
        )
    }

    fn skip(&mut self, len: u64, field: &str) -> Result<(), String> {
        let remaining = self.remaining();
        if len > remaining as u64 {
            return Err(self.error(format_args!(
                "ends inside {field}: it needs {len} bytes at offset {}, {remaining} are left",
                self.pos
            )));
        }
        self.pos += len as usize;
        Ok(())
    }

    fn take<const N: usize>(&mut self, field: &str) -> Result<[u8; N], String> {
        let start = self.pos;
        self.skip(N as u64, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[start..start + N]);
        Ok(out)
    }

    fn int16(&mut self, field: &str) -> Result<i16, String> {
        self.take::<2>(field).map(i16::from_be_bytes)
    }

    fn int32(&mut self, field: &str) -> Result<i32, String> {
        self.take::<4>(field).map(i32::from_be_bytes)
    }

    /// An unsigned varint exactly as `kafka-protocol` reads it: at most five bytes, the fifth
    /// read whatever its continuation bit says, bits past 32 dropped.
    fn varint(&mut self, field: &str) -> Result<u32, String> {
        let mut value: u32 = 0;
        for i in 0..5 {
            let [byte] = self.take::<1>(field)?;
            let byte = u32::from(byte);
            value |= (byte & 0x7f) << (i * 7);
            if byte < 0x80 {
                break;
            }
        }
        Ok(value)
    }

    fn length(&mut self, prefix: Prefix, classic_width: u8, field: &str) -> Result<Length, String> {
        match prefix {
            Prefix::Compact => Ok(match self.varint(field)? {
                0 => Length::Null,
                n => Length::Some(u64::from(n) - 1),
            }),
            Prefix::Classic => {
                let n = if classic_width == 2 {
                    i32::from(self.int16(field)?)
                } else {
                    self.int32(field)?
                };
                match n {
                    -1 => Ok(Length::Null),
                    n if n >= 0 => Ok(Length::Some(n as u64)),
                    n => Err(self.error(format_args!("claims a negative length {n} for {field}"))),
                }
            }
        }
    }

    /// A string field (STRING / COMPACT_STRING); `nullable` when the crate's field is an
    /// `Option`, otherwise a null is refused as the crate refuses it.
    fn string(&mut self, prefix: Prefix, nullable: bool, field: &str) -> Result<(), String> {
        self.sized(prefix, 2, nullable, field)
    }

    /// A non-nullable byte field (BYTES, INT32 length / COMPACT_BYTES).
    fn bytes(&mut self, prefix: Prefix, field: &str) -> Result<(), String> {
        self.sized(prefix, 4, false, field)
    }

    fn sized(
        &mut self,
        prefix: Prefix,
        classic_width: u8,
        nullable: bool,
        field: &str,
    ) -> Result<(), String> {
        match self.length(prefix, classic_width, field)? {
            Length::Null if nullable => Ok(()),
            Length::Null => Err(self.error(format_args!("has a null {field}"))),
            Length::Some(len) => {
                let remaining = self.remaining();
                if len > remaining as u64 {
                    return Err(self.error(format_args!(
                        "claims a {len}-byte {field} in {remaining} bytes"
                    )));
                }
                self.skip(len, field)
            }
        }
    }

    /// A non-nullable array of `E` (ARRAY / COMPACT_ARRAY): its count times the smallest encoding
    /// of one element must fit what is left, then `element` walks each one.
    fn array<E: Encodable + Default>(
        &mut self,
        prefix: Prefix,
        field: &str,
        mut element: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        let smallest = smallest_encoding::<E>(self.version).map_err(|error| self.error(error))?;
        self.array_of(prefix, field, smallest, |walker| element(walker))
    }

    /// A non-nullable array of `INT32` values.
    fn int32_array(&mut self, prefix: Prefix, field: &str) -> Result<(), String> {
        self.array_of(prefix, field, 4, |walker| walker.skip(4, field))
    }

    fn array_of(
        &mut self,
        prefix: Prefix,
        field: &str,
        smallest: u64,
        mut element: impl FnMut(&mut Self) -> Result<(), String>,
    ) -> Result<(), String> {
        let count = match self.length(prefix, 4, field)? {
            Length::Null => return Err(self.error(format_args!("has a null array of {field}"))),
            Length::Some(count) => count,
        };
        let remaining = self.remaining();
        if count.saturating_mul(smallest.max(1)) > remaining as u64 {
            return Err(self.error(format_args!(
                "claims {count} {field} in {remaining} bytes (each takes at least {smallest})"
            )));
        }
        for _ in 0..count {
            element(self)?;
        }
        Ok(())
    }

    /// A tagged-field section. `known` walks the value of a tag the crate decodes itself (it
    /// reads the field, not the size; here the two must agree) and returns `None` for the rest,
    /// which are skipped by their size.
    fn tagged_fields(
        &mut self,
        mut known: impl FnMut(&mut Self, u32) -> Option<Result<(), String>>,
    ) -> Result<(), String> {
        let count = self.varint("the tagged-field count")?;
        let remaining = self.remaining();
        // Each field is at least a tag byte and a size byte.
        if u64::from(count) * 2 > remaining as u64 {
            return Err(self.error(format_args!(
                "claims {count} tagged fields in {remaining} bytes"
            )));
        }
        for _ in 0..count {
            let tag = self.varint("a tagged field's tag")?;
            let size = u64::from(self.varint("a tagged field's size")?);
            let remaining = self.remaining();
            if size > remaining as u64 {
                return Err(self.error(format_args!(
                    "claims a {size}-byte tagged field {tag} in {remaining} bytes"
                )));
            }
            let start = self.pos;
            match known(self, tag) {
                None => self.skip(size, "a tagged field")?,
                Some(walked) => {
                    walked?;
                    let used = (self.pos - start) as u64;
                    if used != size {
                        return Err(self.error(format_args!(
                            "says tagged field {tag} has {size} bytes, but it has {used}"
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    fn tagged_fields_none(&mut self) -> Result<(), String> {
        self.tagged_fields(|_, _| None)
    }
}

/// The fewest bytes one `E` takes on the wire in `version`: the size of its default value, whose
/// strings and arrays are empty (as short as a null) and whose tagged fields are omitted.
fn smallest_encoding<E: Encodable + Default>(version: i16) -> Result<u64, String> {
    E::default()
        .compute_size(version)
        .map(|size| size as u64)
        .map_err(|error| format!("cannot size an element: {error}"))
}

impl CheckedResponse for ResponseHeader {
    const NAME: &'static str = "response header";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(0..=1).contains(&v) {
            return Err(w.unsupported_version());
        }
        w.skip(4, "the correlation id")?;
        if v >= 1 {
            w.tagged_fields_none()?;
        }
        Ok(())
    }
}

impl CheckedResponse for ApiVersionsResponse {
    const NAME: &'static str = "ApiVersions";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(0..=4).contains(&v) {
            return Err(w.unsupported_version());
        }
        let flexible = v >= 3;
        let prefix = Prefix::when_flexible(flexible);
        w.skip(2, "the error code")?;
        w.array::<ApiVersion>(prefix, "APIs", |w| {
            w.skip(6, "an API's key and versions")?;
            if flexible {
                w.tagged_fields_none()?;
            }
            Ok(())
        })?;
        if v >= 1 {
            w.skip(4, "the throttle time")?;
        }
        if flexible {
            w.tagged_fields(|w, tag| match tag {
                0 => Some(w.array::<SupportedFeatureKey>(
                    Prefix::Compact,
                    "supported features",
                    feature,
                )),
                1 => Some(w.skip(8, "the finalized features epoch")),
                2 => Some(w.array::<FinalizedFeatureKey>(
                    Prefix::Compact,
                    "finalized features",
                    feature,
                )),
                3 => Some(w.skip(1, "the ZooKeeper migration flag")),
                _ => None,
            })?;
        }
        Ok(())
    }
}

/// A supported or finalized feature (ApiVersions v3+ only): name, two INT16 levels, tags.
fn feature(w: &mut Walker<'_>) -> Result<(), String> {
    w.string(Prefix::Compact, false, "feature name")?;
    w.skip(4, "a feature's version levels")?;
    w.tagged_fields_none()
}

impl CheckedResponse for MetadataResponse {
    const NAME: &'static str = "Metadata";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(0..=13).contains(&v) {
            return Err(w.unsupported_version());
        }
        let flexible = v >= 9;
        let prefix = Prefix::when_flexible(flexible);
        if v >= 3 {
            w.skip(4, "the throttle time")?;
        }
        w.array::<MetadataResponseBroker>(prefix, "brokers", |w| {
            w.skip(4, "a broker's node id")?;
            w.string(prefix, false, "broker host")?;
            w.skip(4, "a broker's port")?;
            if v >= 1 {
                w.string(prefix, true, "broker rack")?;
            }
            if flexible {
                w.tagged_fields_none()?;
            }
            Ok(())
        })?;
        if v >= 2 {
            w.string(prefix, true, "cluster id")?;
        }
        if v >= 1 {
            w.skip(4, "the controller id")?;
        }
        w.array::<MetadataResponseTopic>(prefix, "topics", |w| {
            w.skip(2, "a topic's error code")?;
            w.string(prefix, true, "topic name")?;
            if v >= 10 {
                w.skip(16, "a topic id")?;
            }
            if v >= 1 {
                w.skip(1, "a topic's internal flag")?;
            }
            w.array::<MetadataResponsePartition>(prefix, "partitions", |w| {
                w.skip(10, "a partition's error code, index and leader")?;
                if v >= 7 {
                    w.skip(4, "a partition's leader epoch")?;
                }
                w.int32_array(prefix, "replicas")?;
                w.int32_array(prefix, "in-sync replicas")?;
                if v >= 5 {
                    w.int32_array(prefix, "offline replicas")?;
                }
                if flexible {
                    w.tagged_fields_none()?;
                }
                Ok(())
            })?;
            if v >= 8 {
                w.skip(4, "a topic's authorized operations")?;
            }
            if flexible {
                w.tagged_fields_none()?;
            }
            Ok(())
        })?;
        if (8..=10).contains(&v) {
            w.skip(4, "the cluster's authorized operations")?;
        }
        if v >= 13 {
            w.skip(2, "the error code")?;
        }
        if flexible {
            w.tagged_fields_none()?;
        }
        Ok(())
    }
}

impl CheckedResponse for DescribeConfigsResponse {
    const NAME: &'static str = "DescribeConfigs";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(1..=4).contains(&v) {
            return Err(w.unsupported_version());
        }
        let flexible = v >= 4;
        let prefix = Prefix::when_flexible(flexible);
        w.skip(4, "the throttle time")?;
        w.array::<DescribeConfigsResult>(prefix, "resources", |w| {
            w.skip(2, "a resource's error code")?;
            w.string(prefix, true, "error message")?;
            w.skip(1, "a resource type")?;
            w.string(prefix, false, "resource name")?;
            w.array::<DescribeConfigsResourceResult>(prefix, "configs", |w| {
                w.string(prefix, false, "config name")?;
                w.string(prefix, true, "config value")?;
                w.skip(3, "a config's flags and source")?;
                w.array::<DescribeConfigsSynonym>(prefix, "config synonyms", |w| {
                    w.string(prefix, false, "synonym name")?;
                    w.string(prefix, true, "synonym value")?;
                    w.skip(1, "a synonym's source")?;
                    if flexible {
                        w.tagged_fields_none()?;
                    }
                    Ok(())
                })?;
                if v >= 3 {
                    w.skip(1, "a config type")?;
                    w.string(prefix, true, "config documentation")?;
                }
                if flexible {
                    w.tagged_fields_none()?;
                }
                Ok(())
            })?;
            if flexible {
                w.tagged_fields_none()?;
            }
            Ok(())
        })?;
        if flexible {
            w.tagged_fields_none()?;
        }
        Ok(())
    }
}

impl CheckedResponse for IncrementalAlterConfigsResponse {
    const NAME: &'static str = "IncrementalAlterConfigs";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(0..=1).contains(&v) {
            return Err(w.unsupported_version());
        }
        let flexible = v >= 1;
        let prefix = Prefix::when_flexible(flexible);
        w.skip(4, "the throttle time")?;
        w.array::<AlterConfigsResourceResponse>(prefix, "responses", |w| {
            w.skip(2, "a resource's error code")?;
            w.string(prefix, true, "error message")?;
            w.skip(1, "a resource type")?;
            w.string(prefix, false, "resource name")?;
            if flexible {
                w.tagged_fields_none()?;
            }
            Ok(())
        })?;
        if flexible {
            w.tagged_fields_none()?;
        }
        Ok(())
    }
}

impl CheckedResponse for AlterUserScramCredentialsResponse {
    const NAME: &'static str = "AlterUserScramCredentials";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        if w.version != 0 {
            return Err(w.unsupported_version());
        }
        let prefix = Prefix::Compact;
        w.skip(4, "the throttle time")?;
        w.array::<AlterUserScramCredentialsResult>(prefix, "results", |w| {
            w.string(prefix, false, "user")?;
            w.skip(2, "a user's error code")?;
            w.string(prefix, true, "error message")?;
            w.tagged_fields_none()
        })?;
        w.tagged_fields_none()
    }
}

impl CheckedResponse for SaslHandshakeResponse {
    const NAME: &'static str = "SaslHandshake";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        if !(0..=1).contains(&w.version) {
            return Err(w.unsupported_version());
        }
        w.skip(2, "the error code")?;
        // Each mechanism is a STRING: at least its two-byte length.
        w.array_of(Prefix::Classic, "mechanisms", 2, |w| {
            w.string(Prefix::Classic, false, "mechanism")
        })
    }
}

impl CheckedResponse for SaslAuthenticateResponse {
    const NAME: &'static str = "SaslAuthenticate";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(0..=2).contains(&v) {
            return Err(w.unsupported_version());
        }
        let flexible = v >= 2;
        let prefix = Prefix::when_flexible(flexible);
        w.skip(2, "the error code")?;
        w.string(prefix, true, "error message")?;
        w.bytes(prefix, "auth bytes")?;
        if v >= 1 {
            w.skip(8, "the session lifetime")?;
        }
        if flexible {
            w.tagged_fields_none()?;
        }
        Ok(())
    }
}

impl CheckedResponse for DescribeQuorumResponse {
    const NAME: &'static str = "DescribeQuorum";
    fn walk(w: &mut Walker<'_>) -> Result<(), String> {
        let v = w.version;
        if !(0..=2).contains(&v) {
            return Err(w.unsupported_version());
        }
        // Flexible in every version.
        let prefix = Prefix::Compact;
        w.skip(2, "the error code")?;
        if v >= 2 {
            w.string(prefix, true, "error message")?;
        }
        w.array::<TopicData>(prefix, "topics", |w| {
            w.string(prefix, false, "topic name")?;
            w.array::<PartitionData>(prefix, "partitions", |w| {
                w.skip(6, "a partition's index and error code")?;
                if v >= 2 {
                    w.string(prefix, true, "error message")?;
                }
                w.skip(16, "a partition's leader, epoch and high watermark")?;
                w.array::<ReplicaState>(prefix, "voters", replica)?;
                w.array::<ReplicaState>(prefix, "observers", replica)?;
                w.tagged_fields_none()
            })?;
            w.tagged_fields_none()
        })?;
        if v >= 2 {
            w.array::<Node>(prefix, "nodes", |w| {
                w.skip(4, "a node id")?;
                w.array::<Listener>(prefix, "listeners", |w| {
                    w.string(prefix, false, "listener name")?;
                    w.string(prefix, false, "listener host")?;
                    w.skip(2, "a listener port")?;
                    w.tagged_fields_none()
                })?;
                w.tagged_fields_none()
            })?;
        }
        w.tagged_fields_none()
    }
}

/// One replica of a DescribeQuorum partition.
fn replica(w: &mut Walker<'_>) -> Result<(), String> {
    let v = w.version;
    w.skip(4, "a replica id")?;
    if v >= 2 {
        w.skip(16, "a replica directory id")?;
    }
    w.skip(8, "a replica's log end offset")?;
    if v >= 1 {
        w.skip(16, "a replica's fetch and caught-up timestamps")?;
    }
    w.tagged_fields_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn encode<T: Encodable>(value: &T, version: i16) -> Vec<u8> {
        let mut out = BytesMut::new();
        value.encode(&mut out, version).unwrap();
        out.to_vec()
    }

    fn text(s: &'static str) -> StrBytes {
        StrBytes::from_static_str(s)
    }

    /// A valid encoding is accepted whole (trailing bytes tolerated), decodes to the same
    /// message, and every strict prefix of it is refused by the check alone.
    fn accepts<T: CheckedResponse + Encodable>(value: &T, version: i16) {
        let bytes = encode(value, version);
        assert_eq!(
            check::<T>(&bytes, version),
            Ok(bytes.len()),
            "{} v{version}",
            T::NAME
        );
        let mut payload = Bytes::from(bytes.clone());
        let decoded = decode::<T>(&mut payload, version)
            .unwrap_or_else(|error| panic!("{} v{version}: {error}", T::NAME));
        assert!(payload.is_empty(), "{} v{version}", T::NAME);
        assert_eq!(encode(&decoded, version), bytes, "{} v{version}", T::NAME);
        let mut trailing = bytes.clone();
        trailing.extend_from_slice(&[0, 0, 0]);
        assert_eq!(check::<T>(&trailing, version), Ok(bytes.len()));
        for cut in 0..bytes.len() {
            let refused = check::<T>(&bytes[..cut], version);
            assert!(
                refused.is_err(),
                "{} v{version} cut at {cut} of {}",
                T::NAME,
                bytes.len()
            );
            let mut short = Bytes::copy_from_slice(&bytes[..cut]);
            assert_eq!(decode::<T>(&mut short, version).err(), refused.err());
        }
    }

    /// Refused by the check, with a message containing `expected`; `decode` says the same, so
    /// the crate's decoder never ran on it.
    fn refuses<T: CheckedResponse>(bytes: &[u8], version: i16, expected: &str) {
        let error = check::<T>(bytes, version).unwrap_err();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        let mut payload = Bytes::copy_from_slice(bytes);
        assert_eq!(decode::<T>(&mut payload, version).err(), Some(error));
    }

    /// Builds hostile frames byte by byte.
    #[derive(Default)]
    struct Frame(Vec<u8>);

    impl Frame {
        fn i8(mut self, v: i8) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn varint(mut self, mut v: u32) -> Self {
            while v >= 0x80 {
                self.0.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.0.push(v as u8);
            self
        }
        fn raw(mut self, bytes: &[u8]) -> Self {
            self.0.extend_from_slice(bytes);
            self
        }
        fn string(self, s: &str) -> Self {
            self.i16(s.len() as i16).raw(s.as_bytes())
        }
        fn compact_string(self, s: &str) -> Self {
            self.varint(s.len() as u32 + 1).raw(s.as_bytes())
        }
        fn zeros(self, n: usize) -> Self {
            self.raw(&vec![0; n])
        }
    }

    fn api_versions(version: i16) -> ApiVersionsResponse {
        let mut response = ApiVersionsResponse::default();
        response.api_keys = [(18, 0, 4), (3, 0, 13), (32, 1, 4), (55, 0, 2)]
            .into_iter()
            .map(|(key, min, max)| {
                let mut api = ApiVersion::default();
                api.api_key = key;
                api.min_version = min;
                api.max_version = max;
                if version >= 3 && key == 55 {
                    api.unknown_tagged_fields
                        .insert(7, Bytes::from_static(b"x"));
                }
                api
            })
            .collect();
        if version >= 1 {
            response.throttle_time_ms = 5;
        }
        if version >= 3 {
            let mut supported = SupportedFeatureKey::default();
            supported.name = text("metadata.version");
            supported.min_version = 1;
            supported.max_version = 21;
            response.supported_features = vec![supported];
            response.finalized_features_epoch = 42;
            let mut finalized = FinalizedFeatureKey::default();
            finalized.name = text("metadata.version");
            finalized.max_version_level = 21;
            finalized.min_version_level = 21;
            response.finalized_features = vec![finalized];
            response.zk_migration_ready = true;
            response
                .unknown_tagged_fields
                .insert(9, Bytes::from_static(b"later"));
        }
        response
    }

    fn metadata(version: i16) -> MetadataResponse {
        let mut response = MetadataResponse::default();
        if version >= 3 {
            response.throttle_time_ms = 1;
        }
        response.brokers = (7..10)
            .map(|id| {
                let mut broker = MetadataResponseBroker::default();
                broker.node_id = BrokerId(id);
                broker.host = StrBytes::from_string(format!("broker-{id}.example"));
                broker.port = 9092;
                if version >= 1 && id != 9 {
                    broker.rack = Some(text("rack-a"));
                }
                if version >= 9 && id == 8 {
                    broker
                        .unknown_tagged_fields
                        .insert(3, Bytes::from_static(b"tag"));
                }
                broker
            })
            .collect();
        if version >= 2 {
            response.cluster_id = Some(text("kreach-cluster"));
        }
        if version >= 1 {
            response.controller_id = BrokerId(8);
        }
        response.topics = ["orders", "payments"]
            .into_iter()
            .map(|name| {
                let mut topic = MetadataResponseTopic::default();
                topic.name = Some(TopicName(text(name)));
                if version >= 10 {
                    topic.topic_id = "6ba7b810-9dad-11d1-80b4-00c04fd430c8".parse().unwrap();
                }
                topic.partitions = (0..3)
                    .map(|index| {
                        let mut partition = MetadataResponsePartition::default();
                        partition.partition_index = index;
                        partition.leader_id = BrokerId(7 + index);
                        if version >= 7 {
                            partition.leader_epoch = 4;
                        }
                        partition.replica_nodes = vec![BrokerId(7), BrokerId(8), BrokerId(9)];
                        partition.isr_nodes = vec![BrokerId(7), BrokerId(8)];
                        if version >= 5 {
                            partition.offline_replicas = vec![BrokerId(9)];
                        }
                        partition
                    })
                    .collect();
                if version >= 8 {
                    topic.topic_authorized_operations = 0;
                }
                topic
            })
            .collect();
        if (8..=10).contains(&version) {
            response.cluster_authorized_operations = 0;
        }
        if version >= 9 {
            response
                .unknown_tagged_fields
                .insert(0, Bytes::from_static(b"\x01\x02"));
        }
        response
    }

    fn describe_configs(version: i16) -> DescribeConfigsResponse {
        let mut response = DescribeConfigsResponse::default();
        response.results = ["orders", "gone"]
            .into_iter()
            .map(|name| {
                let mut result = DescribeConfigsResult::default();
                result.resource_type = 2;
                result.resource_name = text(name);
                if name == "gone" {
                    result.error_code = 3;
                    result.error_message = Some(text("unknown topic"));
                    return result;
                }
                result.error_message = None;
                result.configs = [("min.insync.replicas", Some("2")), ("secret", None)]
                    .into_iter()
                    .map(|(key, value)| {
                        let mut config = DescribeConfigsResourceResult::default();
                        config.name = text(key);
                        config.value = value.map(text);
                        config.config_source = 1;
                        let mut synonym = DescribeConfigsSynonym::default();
                        synonym.name = text(key);
                        synonym.value = value.map(text);
                        synonym.source = 1;
                        config.synonyms = vec![synonym];
                        if version >= 3 {
                            config.config_type = 3;
                            config.documentation = None;
                        }
                        config
                    })
                    .collect();
                result
            })
            .collect();
        response
    }

    fn describe_quorum(version: i16) -> DescribeQuorumResponse {
        let replica = |id: i32| {
            let mut replica = ReplicaState::default();
            replica.replica_id = BrokerId(id);
            replica.log_end_offset = 100;
            if version >= 1 {
                replica.last_fetch_timestamp = 1;
                replica.last_caught_up_timestamp = 2;
            }
            replica
        };
        let mut partition = PartitionData::default();
        partition.leader_id = BrokerId(1);
        partition.leader_epoch = 3;
        partition.high_watermark = 99;
        partition.current_voters = vec![replica(1), replica(2), replica(3)];
        partition.observers = vec![replica(4)];
        let mut topic = TopicData::default();
        topic.topic_name = TopicName(text("__cluster_metadata"));
        topic.partitions = vec![partition];
        let mut response = DescribeQuorumResponse::default();
        response.topics = vec![topic];
        if version >= 2 {
            response.error_message = None;
            let mut listener = Listener::default();
            listener.name = text("CONTROLLER");
            listener.host = text("controller-1.example");
            listener.port = 9093;
            let mut node = Node::default();
            node.node_id = BrokerId(1);
            node.listeners = vec![listener];
            response.nodes = vec![node];
        }
        response
    }

    #[test]
    fn every_valid_response_the_probe_decodes_passes_and_decodes() {
        for version in 0..=1 {
            let mut header = ResponseHeader::default();
            header.correlation_id = 17;
            if version >= 1 {
                header
                    .unknown_tagged_fields
                    .insert(5, Bytes::from_static(b"abc"));
            }
            accepts(&header, version);
        }
        for version in 0..=4 {
            accepts(&api_versions(version), version);
        }
        for version in 0..=13 {
            accepts(&metadata(version), version);
        }
        for version in 1..=4 {
            accepts(&describe_configs(version), version);
        }
        for version in 0..=2 {
            accepts(&describe_quorum(version), version);
        }
        for version in 0..=1 {
            let mut response = IncrementalAlterConfigsResponse::default();
            response.throttle_time_ms = 3;
            response.responses = [(0, None), (40, Some(text("bad keystore")))]
                .into_iter()
                .map(|(code, message)| {
                    let mut answer = AlterConfigsResourceResponse::default();
                    answer.error_code = code;
                    answer.error_message = message;
                    answer.resource_type = 4;
                    answer.resource_name = text("7");
                    answer
                })
                .collect();
            accepts(&response, version);
        }
        let mut response = AlterUserScramCredentialsResponse::default();
        response.results = [
            ("app", 0, None),
            ("bad", 68, Some(text("no such mechanism"))),
        ]
        .into_iter()
        .map(|(user, code, message)| {
            let mut result = AlterUserScramCredentialsResult::default();
            result.user = text(user);
            result.error_code = code;
            result.error_message = message;
            result
        })
        .collect();
        accepts(&response, 0);
        for version in 0..=1 {
            let mut response = SaslHandshakeResponse::default();
            response.mechanisms = vec![text("SCRAM-SHA-256"), text("SCRAM-SHA-512")];
            accepts(&response, version);
        }
        for version in 0..=2 {
            let mut response = SaslAuthenticateResponse::default();
            response.error_message = Some(text("fine"));
            response.auth_bytes = Bytes::from_static(b"v=c2lnbmF0dXJl");
            if version >= 1 {
                response.session_lifetime_ms = 3_600_000;
            }
            accepts(&response, version);
        }
    }

    #[test]
    fn empty_responses_pass_too() {
        for version in 0..=13 {
            accepts(&MetadataResponse::default(), version);
        }
        for version in 0..=4 {
            accepts(&ApiVersionsResponse::default(), version);
        }
    }

    #[test]
    fn the_smallest_element_sizes_are_the_wire_minimum() {
        assert_eq!(smallest_encoding::<ApiVersion>(0), Ok(6));
        assert_eq!(smallest_encoding::<ApiVersion>(3), Ok(7));
        // node id, host length, port; v1+ a rack length; v9+ varints and a tag count.
        assert_eq!(smallest_encoding::<MetadataResponseBroker>(0), Ok(10));
        assert_eq!(smallest_encoding::<MetadataResponseBroker>(1), Ok(12));
        assert_eq!(smallest_encoding::<MetadataResponseBroker>(9), Ok(11));
        // error code, index, leader, two INT32 counts.
        assert_eq!(smallest_encoding::<MetadataResponsePartition>(0), Ok(18));
        assert_eq!(smallest_encoding::<ReplicaState>(0), Ok(13));
    }

    #[test]
    fn a_huge_classic_array_count_is_refused_before_decoding() {
        // Metadata v1: brokers count 2^31 - 1, then a few bytes.
        let frame = Frame::default().i32(i32::MAX).zeros(33).0;
        refuses::<MetadataResponse>(
            &frame,
            1,
            "the Metadata v1 response claims 2147483647 brokers in 33 bytes (each takes at least 12)",
        );
        // More elements than bytes, even if each took one byte.
        let frame = Frame::default().i32(1000).zeros(100).0;
        refuses::<MetadataResponse>(&frame, 0, "claims 1000 brokers in 100 bytes");
        // Enough bytes for a count of one-byte elements, not for 10-byte brokers.
        let frame = Frame::default().i32(10).zeros(99).0;
        refuses::<MetadataResponse>(&frame, 0, "claims 10 brokers in 99 bytes");
    }

    #[test]
    fn a_huge_compact_array_count_is_refused_before_decoding() {
        // Metadata v12: throttle time, then a varint brokers count of 2^32 - 1 (4294967294
        // brokers once the +1 is taken off).
        let frame = Frame::default().i32(0).varint(u32::MAX).zeros(37).0;
        refuses::<MetadataResponse>(
            &frame,
            12,
            "the Metadata v12 response claims 4294967294 brokers in 37 bytes",
        );
        // A five-byte varint with its continuation bit still set stops there, as the crate's does.
        let frame = Frame::default()
            .i32(0)
            .raw(&[0xff, 0xff, 0xff, 0xff, 0xff])
            .zeros(37)
            .0;
        refuses::<MetadataResponse>(&frame, 12, "claims 4294967294 brokers in 37 bytes");
    }

    #[test]
    fn nested_counts_are_bounded_by_what_is_left_at_their_place() {
        // Metadata v1: no brokers, controller, one topic whose partition count is huge.
        let frame = Frame::default()
            .i32(0)
            .i32(1)
            .i32(1)
            .i16(0)
            .string("orders")
            .i8(0)
            .i32(0x0fff_ffff)
            .zeros(40)
            .0;
        refuses::<MetadataResponse>(&frame, 1, "claims 268435455 partitions in 40 bytes");
        // The same one level down: a partition with a replica list of 2^30 ids.
        let frame = Frame::default()
            .i32(0)
            .i32(1)
            .i32(1)
            .i16(0)
            .string("orders")
            .i8(0)
            .i32(1)
            .i16(0)
            .i32(0)
            .i32(1)
            .i32(1 << 30)
            .zeros(12)
            .0;
        refuses::<MetadataResponse>(&frame, 1, "claims 1073741824 replicas in 12 bytes");
        // DescribeQuorum v1: one topic, one partition, a huge compact voter count.
        let frame = Frame::default()
            .i16(0)
            .varint(2)
            .compact_string("__cluster_metadata")
            .varint(2)
            .i32(0)
            .i16(0)
            .zeros(16)
            .varint(0x7fff_ffff)
            .zeros(20)
            .0;
        refuses::<DescribeQuorumResponse>(&frame, 1, "claims 2147483646 voters in 20 bytes");
        // DescribeConfigs v4: one resource with a huge config count.
        let frame = Frame::default()
            .i32(0)
            .varint(2)
            .i16(0)
            .varint(0)
            .i8(2)
            .compact_string("orders")
            .varint(1 << 28)
            .zeros(8)
            .0;
        refuses::<DescribeConfigsResponse>(&frame, 4, "claims 268435455 configs in 8 bytes");
    }

    #[test]
    fn huge_string_lengths_are_refused() {
        // Metadata v1: one broker whose host claims 32767 bytes.
        let frame = Frame::default().i32(1).i32(7).i16(i16::MAX).zeros(20).0;
        refuses::<MetadataResponse>(&frame, 1, "claims a 32767-byte broker host in 20 bytes");
        // Metadata v9: the same with a compact length of 2^32 - 2 bytes.
        let frame = Frame::default()
            .i32(0)
            .varint(2)
            .i32(7)
            .varint(u32::MAX)
            .zeros(20)
            .0;
        refuses::<MetadataResponse>(
            &frame,
            9,
            "claims a 4294967294-byte broker host in 20 bytes",
        );
        // A tagged field claiming more bytes than are left.
        let frame = Frame::default().i32(17).varint(1).varint(4).varint(1000).0;
        refuses::<ResponseHeader>(&frame, 1, "claims a 1000-byte tagged field 4 in 0 bytes");
    }

    #[test]
    fn negative_lengths_are_refused() {
        let frame = Frame::default().i32(-5).0;
        refuses::<MetadataResponse>(&frame, 1, "claims a negative length -5 for brokers");
        let frame = Frame::default().i32(1).i32(7).i16(-2).zeros(10).0;
        refuses::<MetadataResponse>(&frame, 1, "claims a negative length -2 for broker host");
        // Null where the crate has no Option: refused here as the crate would.
        let frame = Frame::default().i32(1).i32(7).i16(-1).zeros(10).0;
        refuses::<MetadataResponse>(&frame, 1, "has a null broker host");
        let frame = Frame::default().i16(0).i32(-1).0;
        refuses::<ApiVersionsResponse>(&frame, 0, "has a null array of APIs");
        // A null rack is fine: it is optional.
        let frame = Frame::default()
            .i32(1)
            .i32(7)
            .string("b")
            .i32(9092)
            .i16(-1)
            .i32(7)
            .i32(0)
            .0;
        let mut payload = Bytes::from(frame);
        let decoded = decode::<MetadataResponse>(&mut payload, 1).unwrap();
        assert_eq!(decoded.brokers[0].rack, None);
    }

    #[test]
    fn tagged_fields_are_bounded_and_known_ones_must_match_their_size() {
        let start = Frame::default()
            .i16(0)
            .varint(2)
            .i16(18)
            .i16(0)
            .i16(3)
            .varint(0)
            .i32(0);
        // Billions of tagged fields in a few bytes.
        let frame = Frame(start.0.clone()).varint(0x0fff_ffff).zeros(6).0;
        refuses::<ApiVersionsResponse>(&frame, 3, "claims 268435455 tagged fields in 6 bytes");
        // The supported-features list (tag 0) is decoded by the crate: its count is checked too.
        let frame = Frame(start.0.clone())
            .varint(1)
            .varint(0)
            .varint(5)
            .varint(0x0fff_ffff)
            .zeros(8)
            .0;
        refuses::<ApiVersionsResponse>(&frame, 3, "claims 268435454 supported features in 8 bytes");
        // A known tag whose size disagrees with its content.
        let frame = Frame(start.0.clone())
            .varint(1)
            .varint(3)
            .varint(5)
            .raw(&[1, 0, 0, 0, 0])
            .0;
        refuses::<ApiVersionsResponse>(&frame, 3, "says tagged field 3 has 5 bytes, but it has 1");
        // An unknown tag is skipped by its size.
        let frame = Frame(start.0).varint(1).varint(40).varint(2).raw(b"ok").0;
        let mut payload = Bytes::from(frame);
        let decoded = decode::<ApiVersionsResponse>(&mut payload, 3).unwrap();
        assert_eq!(decoded.api_keys.len(), 1);
        assert_eq!(
            decoded.unknown_tagged_fields[&40],
            Bytes::from_static(b"ok")
        );
    }

    #[test]
    fn truncated_frames_and_unknown_versions_are_refused() {
        refuses::<MetadataResponse>(&[], 1, "ends inside brokers");
        refuses::<ResponseHeader>(&[0, 0], 0, "ends inside the correlation id");
        let frame = Frame::default().i32(1).i32(7).string("broker").0;
        refuses::<MetadataResponse>(&frame, 1, "ends inside a broker's port");
        refuses::<MetadataResponse>(&[0; 64], 14, "kreach does not read Metadata v14");
        refuses::<DescribeConfigsResponse>(&[0; 64], 0, "does not read DescribeConfigs v0");
        refuses::<ApiVersionsResponse>(&[0; 64], -1, "does not read ApiVersions v-1");
    }

    #[test]
    fn a_frame_that_is_not_kafka_at_all_is_refused_quickly() {
        let banners: [&[u8]; 3] = [
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            &[0xff; 64],
        ];
        for banner in banners {
            for version in 0..=13 {
                let _ = decode::<MetadataResponse>(&mut Bytes::copy_from_slice(banner), version);
            }
            for version in 0..=4 {
                let _ = decode::<ApiVersionsResponse>(&mut Bytes::copy_from_slice(banner), version);
            }
            for version in 1..=4 {
                let _ =
                    decode::<DescribeConfigsResponse>(&mut Bytes::copy_from_slice(banner), version);
            }
            for version in 0..=2 {
                let _ =
                    decode::<DescribeQuorumResponse>(&mut Bytes::copy_from_slice(banner), version);
            }
        }
        let error = check::<ApiVersionsResponse>(b"HTTP/1.1 400 Bad Request\r\n", 0).unwrap_err();
        assert!(error.contains("claims 1414541105 APIs"), "{error}");
    }
}

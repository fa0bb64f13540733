use std::fmt::Debug;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// Why bytes could not become a value, or a value bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be serialized.
    #[error("cannot encode value: {0}")]
    Encode(String),
    /// The payload could not be deserialized into the requested type.
    #[error("cannot decode value: {0}")]
    Decode(String),
    /// The bytes do not start with layercache's envelope header: foreign bytes.
    #[error("not a layercache envelope (foreign bytes)")]
    NotAnEnvelope,
    /// The envelope was written by a format version this release does not read.
    #[error("unsupported envelope format version {0}")]
    UnsupportedVersion(u8),
    /// The envelope was written with another codec than the reader's.
    #[error("value was written with codec {found}, reader uses codec {expected}")]
    CodecMismatch {
        /// The reader's codec id.
        expected: u8,
        /// The codec id in the envelope.
        found: u8,
    },
    /// The envelope sets flags this release does not know.
    #[error("unknown envelope flags {0:#04x}")]
    UnknownFlags(u8),
    /// The envelope ends before its header or meta does, or its meta is inconsistent.
    #[error("corrupt envelope: {0}")]
    Corrupt(&'static str),
    /// The bytes are a tombstone: the key was invalidated at this moment. Not a failure: a miss.
    #[error("a tombstone (invalidated at {0:?})")]
    Tombstone(crate::Timestamp),
    /// The payload is compressed (flag `0x02`) and cannot be decompressed: layercache-core was
    /// built without its `compression` feature, the compressed block is corrupt, or it claims a
    /// size over [`MAX_DECOMPRESSED_LEN`](crate::envelope::MAX_DECOMPRESSED_LEN) or more than
    /// LZ4 can expand its input to.
    #[error("cannot decompress payload: {0}")]
    Compression(&'static str),
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        Error::codec(e.to_string()).with_source(e)
    }
}

/// How values become bytes for a shared tier, and back.
///
/// A codec has a one-byte [id](Codec::id) written into every envelope, so a reader configured
/// with another codec sees a [`CodecError::CodecMismatch`] instead of misreading the bytes.
/// Ids 0–127 are reserved for layercache's codecs; use 128–255 for your own.
pub trait Codec: Send + Sync + Debug + 'static {
    /// The id written into envelopes.
    fn id(&self) -> u8;

    /// A short name, for messages and metrics.
    fn name(&self) -> &'static str;

    /// Appends the encoding of `value` to `out`.
    fn encode<T: Serialize + ?Sized>(&self, value: &T, out: &mut Vec<u8>)
    -> Result<(), CodecError>;

    /// Decodes a value from `bytes`.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;

    /// Encoded payloads longer than this many bytes are compressed in the envelope (flag `0x02`);
    /// `None` (the default) never compresses. Wrap a codec in `Compressed` (feature
    /// `compression`) to set it. Without that feature, envelopes are never compressed, whatever
    /// this says. Reading never depends on it: any reader built with the feature decompresses.
    fn compress_above(&self) -> Option<usize> {
        None
    }
}

/// The default threshold of [`Compressed`]: encoded payloads over 4 KiB are compressed. Smaller
/// values gain little (and LZ4 has fewer repeats to find), and cost a copy.
#[cfg(feature = "compression")]
pub const DEFAULT_COMPRESSION_THRESHOLD: usize = 4 * 1024;

/// A codec whose large payloads are LZ4-compressed inside the envelope (feature `compression`).
///
/// The id, name and payload encoding are those of the wrapped codec, so readers with the plain
/// codec (built with the feature) read compressed and uncompressed envelopes alike, and a
/// payload that does not shrink is stored as it is. Set it where the codec is set, e.g.
/// `RedisBackend::builder(url).codec(Compressed::new(JsonCodec))`.
///
/// ```
/// use layercache_core::envelope::Compressed;
/// use layercache_core::{Codec, JsonCodec};
///
/// let codec = Compressed::new(JsonCodec).threshold(1024);
/// assert_eq!(codec.id(), JsonCodec.id());
/// assert_eq!(codec.compress_above(), Some(1024));
/// ```
#[cfg(feature = "compression")]
#[derive(Clone, Copy, Debug)]
pub struct Compressed<C> {
    inner: C,
    threshold: Option<usize>,
}

#[cfg(feature = "compression")]
impl<C: Codec> Compressed<C> {
    /// `inner`, compressing payloads over [`DEFAULT_COMPRESSION_THRESHOLD`] bytes.
    pub fn new(inner: C) -> Self {
        Compressed {
            inner,
            threshold: Some(DEFAULT_COMPRESSION_THRESHOLD),
        }
    }

    /// Compresses payloads over `bytes` bytes instead.
    #[must_use]
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = Some(bytes);
        self
    }

    /// The wrapped codec.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

#[cfg(feature = "compression")]
impl<C: Codec> Codec for Compressed<C> {
    fn id(&self) -> u8 {
        self.inner.id()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        self.inner.encode(value, out)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.inner.decode(bytes)
    }

    fn compress_above(&self) -> Option<usize> {
        self.threshold
    }
}

/// JSON through serde_json: the default, because other languages can read it.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn id(&self) -> u8 {
        1
    }

    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        serde_json::to_writer(out, value).map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        serde_json::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// MessagePack through rmp-serde: compact, binary, and still readable from other languages.
/// Structs are written as maps (with field names), so adding an optional field stays compatible.
#[cfg(feature = "msgpack")]
#[derive(Clone, Copy, Debug, Default)]
pub struct MsgPackCodec;

#[cfg(feature = "msgpack")]
impl Codec for MsgPackCodec {
    fn id(&self) -> u8 {
        2
    }

    fn name(&self) -> &'static str {
        "msgpack"
    }

    fn encode<T: Serialize + ?Sized>(
        &self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let mut ser = rmp_serde::Serializer::new(out).with_struct_map();
        value
            .serialize(&mut ser)
            .map_err(|e| CodecError::Encode(e.to_string()))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        check_msgpack_lengths(bytes)?;
        rmp_serde::from_slice(bytes).map_err(|e| CodecError::Decode(e.to_string()))
    }
}

/// Walks the first MessagePack value of `bytes` and refuses it if an array or map claims more
/// items than bytes remain (every item takes at least one).
///
/// rmp-serde hands a container's claimed length to serde as its size hint, and serde reserves
/// up to 1 MiB from it: without this walk, five hostile bytes (`0xdd ff ff ff ff`) would make
/// a decode reserve a megabyte. With it, what is reserved is proportional to the input.
#[cfg(feature = "msgpack")]
fn check_msgpack_lengths(bytes: &[u8]) -> Result<(), CodecError> {
    let short = || CodecError::Decode("MessagePack value claims more than its bytes".into());
    let len_at = |at: usize, n: usize| -> Result<usize, CodecError> {
        let field = bytes.get(at..at + n).ok_or_else(short)?;
        Ok(field
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b)))
    };
    let (mut at, mut pending) = (0usize, 1usize);
    while pending > 0 {
        pending -= 1;
        let marker = *bytes.get(at).ok_or_else(short)?;
        at += 1;
        // (bytes to skip after the marker, items the value contains)
        let (skip, items) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, usize::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (1 + len_at(at, 1)?, 0),
            0xc5 | 0xda => (2 + len_at(at, 2)?, 0),
            0xc6 | 0xdb => (4 + len_at(at, 4)?, 0),
            // ext 8/16/32: length, type byte, data.
            0xc7 => (2 + len_at(at, 1)?, 0),
            0xc8 => (3 + len_at(at, 2)?, 0),
            0xc9 => (5 + len_at(at, 4)?, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 | 0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xca | 0xce | 0xd2 => (4, 0),
            0xd6 => (5, 0),
            0xcb | 0xcf | 0xd3 => (8, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, len_at(at, 2)?),
            0xdd => (4, len_at(at, 4)?),
            0xde => (2, 2 * len_at(at, 2)?),
            0xdf => (4, len_at(at, 4)?.saturating_mul(2)),
            // 0xc1 is never used.
            _ => return Err(CodecError::Decode("invalid MessagePack marker 0xc1".into())),
        };
        at = at
            .checked_add(skip)
            .filter(|&end| end <= bytes.len())
            .ok_or_else(short)?;
        pending = pending.saturating_add(items);
        if pending > bytes.len() - at {
            return Err(short());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct User {
        id: u64,
        name: String,
    }

    fn round_trip(codec: &impl Codec) {
        let user = User {
            id: 7,
            name: "Ada Lovelace".into(),
        };
        let mut buf = Vec::new();
        codec.encode(&user, &mut buf).unwrap();
        assert_eq!(codec.decode::<User>(&buf).unwrap(), user);
        assert!(matches!(
            codec.decode::<User>(b"\xff\x00garbage"),
            Err(CodecError::Decode(_))
        ));
    }

    #[test]
    fn json_round_trips() {
        round_trip(&JsonCodec);
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_refuses_containers_longer_than_their_bytes() {
        let nested = vec![vec![("ä".to_owned(), 1u64 << 40)], vec![]];
        let mut buf = Vec::new();
        MsgPackCodec.encode(&nested, &mut buf).unwrap();
        assert!(check_msgpack_lengths(&buf).is_ok());
        assert_eq!(
            MsgPackCodec
                .decode::<Vec<Vec<(String, u64)>>>(&buf)
                .unwrap(),
            nested
        );
        for hostile in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
            &[0x93, 0x01, 0x02],
            &[0xdb, 0xff, 0xff, 0xff, 0xff],
            &[0xc1],
            &[],
        ] {
            assert!(
                matches!(
                    MsgPackCodec.decode::<Vec<String>>(hostile),
                    Err(CodecError::Decode(_))
                ),
                "{hostile:02x?}"
            );
        }
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_round_trips_and_is_smaller() {
        round_trip(&MsgPackCodec);
        let user = User {
            id: 7,
            name: "Ada".into(),
        };
        let (mut j, mut m) = (Vec::new(), Vec::new());
        JsonCodec.encode(&user, &mut j).unwrap();
        MsgPackCodec.encode(&user, &mut m).unwrap();
        assert!(m.len() < j.len());
    }
}

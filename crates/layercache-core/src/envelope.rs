//! The bytes a shared tier stores: a small versioned header, the entry's meta, then the payload.
//!
//! ```text
//! offset  size  field
//! 0       3     magic: 0xCA 'L' 'C'
//! 3       1     format version (1)
//! 4       1     codec id (1 = JSON, 2 = MessagePack, 128..=255 user codecs)
//! 5       1     flags: 0x01 = tombstone (see below); any other bit is refused
//! 6       8     created_at, ms since the Unix epoch, little endian
//! 14      8     fresh_until, ms, little endian
//! 22      8     stale_until, ms, little endian
//! 30      8     load cost, µs, little endian
//! 38      2     tag count, little endian, then for each tag: 2-byte length + UTF-8 bytes
//! ..      ..    payload, encoded by the codec
//! ```
//!
//! A **tombstone** marks an invalidation (a delete) at `created_at`: flag 0x01, codec id 0, no tags
//! and no payload. It reads as a miss ([`CodecError::Tombstone`]), and a conditional store
//! (`Backend::set_if_newer`) of an entry created at or before it is refused, so a load that
//! began before a delete cannot put its older value back, in any process (ADR 0012).
//!
//! The header is fixed-width and language-neutral, so other programs can read what layercache writes
//! (and layercache can tell when they wrote something else). The magic starts with a byte that is not
//! ASCII, so text or JSON written by another program is never mistaken for an envelope. Any bytes that
//! fail these checks decode to a [`CodecError`], which backends turn into a miss and a counted metric.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, CodecError};
use crate::entry::{Entry, EntryMeta, Tags, Timestamp};

/// The envelope's magic bytes.
pub const MAGIC: [u8; 3] = [0xCA, b'L', b'C'];
/// The envelope format version this release writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The length of the fixed part of the header, up to and including the tag count.
pub const HEADER_LEN: usize = 40;
/// The flag of a tombstone.
pub const FLAG_TOMBSTONE: u8 = 0x01;
/// The offset of `created_at` in the header (scripts that compare stamps read it there).
pub const CREATED_AT_OFFSET: usize = 6;
/// The most tags an envelope may carry.
pub const MAX_TAGS: usize = u16::MAX as usize;

/// Encodes `entry` with `codec` into a new buffer.
pub fn encode<C: Codec, V: Serialize>(codec: &C, entry: &Entry<V>) -> Result<Vec<u8>, CodecError> {
    let meta = &entry.meta;
    let tags = meta.tags.as_slice();
    if tags.len() > MAX_TAGS || tags.iter().any(|t| t.len() > usize::from(u16::MAX)) {
        return Err(CodecError::Encode(
            "too many tags or a tag over 65535 bytes".into(),
        ));
    }
    let tags_len: usize = tags.iter().map(|t| 2 + t.len()).sum();
    let mut out = Vec::with_capacity(HEADER_LEN + tags_len + 128);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(codec.id());
    out.push(0);
    out.extend_from_slice(&meta.created_at.as_millis().to_le_bytes());
    out.extend_from_slice(&meta.fresh_until.as_millis().to_le_bytes());
    out.extend_from_slice(&meta.stale_until.as_millis().to_le_bytes());
    let cost = u64::try_from(meta.load_cost.as_micros()).unwrap_or(u64::MAX);
    out.extend_from_slice(&cost.to_le_bytes());
    // Both lengths were checked against u16::MAX above.
    out.extend_from_slice(&(tags.len() as u16).to_le_bytes());
    for tag in tags {
        out.extend_from_slice(&(tag.len() as u16).to_le_bytes());
        out.extend_from_slice(tag.as_bytes());
    }
    codec.encode(&entry.value, &mut out)?;
    Ok(out)
}

/// A tombstone for an invalidation at `at`, to be kept until `until`.
pub fn tombstone(at: Timestamp, until: Timestamp) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(FORMAT_VERSION);
    out.push(0);
    out.push(FLAG_TOMBSTONE);
    out.extend_from_slice(&at.as_millis().to_le_bytes());
    out.extend_from_slice(&until.max(at).as_millis().to_le_bytes());
    out.extend_from_slice(&until.max(at).as_millis().to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// Whether `bytes` are a tombstone.
pub fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER_LEN && bytes[..3] == MAGIC && bytes[5] == FLAG_TOMBSTONE
}

/// Decodes an entry written by [`encode`] with the same codec. A tombstone is
/// [`CodecError::Tombstone`].
pub fn decode<C: Codec, V: DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
) -> Result<Entry<V>, CodecError> {
    let mut r = Reader(bytes);
    if r.take(3)? != MAGIC {
        return Err(CodecError::NotAnEnvelope);
    }
    let version = r.u8()?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnsupportedVersion(version));
    }
    let codec_id = r.u8()?;
    let flags = r.u8()?;
    if flags == FLAG_TOMBSTONE {
        return Err(CodecError::Tombstone(Timestamp::from_millis(r.u64()?)));
    }
    if codec_id != codec.id() {
        return Err(CodecError::CodecMismatch {
            expected: codec.id(),
            found: codec_id,
        });
    }
    if flags != 0 {
        return Err(CodecError::UnknownFlags(flags));
    }
    let created_at = Timestamp::from_millis(r.u64()?);
    let fresh_until = Timestamp::from_millis(r.u64()?);
    let stale_until = Timestamp::from_millis(r.u64()?);
    if stale_until < fresh_until {
        return Err(CodecError::Corrupt("stale_until before fresh_until"));
    }
    let load_cost = Duration::from_micros(r.u64()?);
    let count = usize::from(r.u16()?);
    let mut tags = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let tag = std::str::from_utf8(r.take(len)?)
            .map_err(|_| CodecError::Corrupt("tag is not UTF-8"))?;
        tags.push(tag.to_owned());
    }
    let value = codec.decode(r.0)?;
    let mut meta = EntryMeta::new(created_at, fresh_until, stale_until)
        .with_load_cost(load_cost)
        .with_tags(tags.into_iter().collect::<Tags>());
    meta.format_version = version;
    Ok(Entry::new(value, meta))
}

/// Reads little-endian fields off a byte slice; running short is [`CodecError::Corrupt`].
pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(CodecError::Corrupt("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, CodecError> {
        let mut b = [0; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(b))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, CodecError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EntryOptions, JsonCodec};

    fn sample() -> Entry<Vec<String>> {
        EntryOptions::new(Duration::from_secs(30))
            .with_stale_ttl(Duration::from_secs(60))
            .with_tags(["t1", "tä2"])
            .entry(
                vec!["a".to_owned(), "ü".to_owned()],
                Timestamp::from_millis(123_456),
                Duration::from_micros(1_500),
            )
            .unwrap()
    }

    #[test]
    fn round_trips_value_and_meta() {
        let entry = sample();
        let bytes = encode(&JsonCodec, &entry).unwrap();
        assert_eq!(&bytes[..3], &MAGIC);
        let back: Entry<Vec<String>> = decode(&JsonCodec, &bytes).unwrap();
        assert_eq!(back, entry);
    }

    #[test]
    fn refuses_foreign_and_corrupt_bytes() {
        let bytes = encode(&JsonCodec, &sample()).unwrap();
        let d = |b: &[u8]| decode::<_, Vec<String>>(&JsonCodec, b).unwrap_err();
        assert_eq!(d(b"\"hello\""), CodecError::NotAnEnvelope);
        assert_eq!(d(b""), CodecError::Corrupt("truncated"));
        let mut v = bytes.clone();
        v[3] = 9;
        assert_eq!(d(&v), CodecError::UnsupportedVersion(9));
        let mut v = bytes.clone();
        v[4] = 200;
        assert_eq!(
            d(&v),
            CodecError::CodecMismatch {
                expected: 1,
                found: 200
            }
        );
        let mut v = bytes.clone();
        v[5] = 2;
        assert_eq!(d(&v), CodecError::UnknownFlags(2));
        for cut in 0..bytes.len() {
            assert!(
                decode::<_, Vec<String>>(&JsonCodec, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn tombstones_read_as_tombstones_whatever_the_codec() {
        let at = Timestamp::from_millis(5_000);
        let bytes = tombstone(at, Timestamp::from_millis(65_000));
        assert_eq!(bytes.len(), HEADER_LEN);
        let got = decode::<_, Vec<String>>(&JsonCodec, &bytes).unwrap_err();
        assert_eq!(got, CodecError::Tombstone(at));
        assert_eq!(
            u64::from_le_bytes(
                bytes[CREATED_AT_OFFSET..CREATED_AT_OFFSET + 8]
                    .try_into()
                    .unwrap()
            ),
            5_000
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..10_000 {
            let len = rng.usize(0..96);
            let mut b: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            if rng.bool() && b.len() >= 6 {
                b[..3].copy_from_slice(&MAGIC);
                b[3] = FORMAT_VERSION;
                b[4] = 1;
                b[5] = 0;
            }
            let _ = decode::<_, Vec<String>>(&JsonCodec, &b);
        }
    }
}

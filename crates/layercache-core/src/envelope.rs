//! The bytes a shared tier stores: a small versioned header, the entry's meta, then the payload.
//!
//! ```text
//! offset  size  field
//! 0       3     magic: 0xCA 'L' 'C'
//! 3       1     format version (1)
//! 4       1     codec id (1 = JSON, 2 = MessagePack, 128..=255 user codecs)
//! 5       1     flags: 0x01 = tombstone, 0x02 = compressed payload; any other bit is refused
//! 6       8     created_at, ms since the Unix epoch, little endian
//! 14      8     fresh_until, ms, little endian
//! 22      8     stale_until, ms, little endian
//! 30      8     load cost, µs, little endian
//! 38      2     tag count, little endian, then for each tag: 2-byte length + UTF-8 bytes
//! ..      ..    payload, encoded by the codec (if compressed: 4-byte little-endian length of
//!               the codec's payload, then that payload as one LZ4 block)
//! ```
//!
//! A **tombstone** marks an invalidation (a delete) at `created_at`: flag 0x01, codec id 0, no tags
//! and no payload. It reads as a miss ([`CodecError::Tombstone`]), and a conditional store
//! (`Backend::set_if_newer`) of an entry created at or before it is refused, so a load that
//! began before a delete cannot put its older value back, in any process (ADR 0012).
//!
//! A **compressed** payload (flag 0x02) is written when the codec asks for it
//! ([`Codec::compress_above`], set by wrapping it in `Compressed`, feature `compression`) and the
//! payload shrinks. Decompression is bounded: a block claiming more than
//! [`MAX_DECOMPRESSED_LEN`] bytes, or more than LZ4 can expand its length to, is refused before
//! anything is allocated. Without the feature a compressed envelope is a
//! [`CodecError::Compression`].
//!
//! **Timestamps beyond reason are corrupt**: `fresh_until` after `stale_until`, `created_at` more
//! than [`MAX_CLOCK_SKEW`] ahead of the reader's clock, or `stale_until` more than [`MAX_AHEAD`]
//! ahead of it (no entry the library makes lives longer: a TTL and a stale period of at most
//! [`MAX_TTL`] each). Such an entry would otherwise sit in every tier for centuries.
//!
//! The header is fixed-width and language-neutral, so other programs can read what layercache writes
//! (and layercache can tell when they wrote something else; `docs/envelope.md` has a reader in
//! Python). The magic starts with a byte that is not ASCII, so text or JSON written by another
//! program is never mistaken for an envelope. Any bytes that fail these checks decode to a
//! [`CodecError`], which backends turn into a miss and a counted metric.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::clock::{Clock, SystemClock};
use crate::codec::{Codec, CodecError};
use crate::entry::{Entry, EntryMeta, Tags, Timestamp};

#[cfg(feature = "compression")]
pub use crate::codec::{Compressed, DEFAULT_COMPRESSION_THRESHOLD};

/// The envelope's magic bytes.
pub const MAGIC: [u8; 3] = [0xCA, b'L', b'C'];
/// The envelope format version this release writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The length of the fixed part of the header, up to and including the tag count.
pub const HEADER_LEN: usize = 40;
/// The flag of a tombstone.
pub const FLAG_TOMBSTONE: u8 = 0x01;
/// The flag of a compressed payload: a 4-byte little-endian length, then one LZ4 block.
pub const FLAG_COMPRESSED: u8 = 0x02;
/// The offset of the flags byte in the header.
pub const FLAGS_OFFSET: usize = 5;
/// The offset of `created_at` in the header (scripts that compare stamps read it there).
pub const CREATED_AT_OFFSET: usize = 6;
/// The most tags an envelope may carry.
pub const MAX_TAGS: usize = u16::MAX as usize;
/// The longest TTL, and the longest stale period, `EntryOptions` accepts (10 years).
pub const MAX_TTL: Duration = crate::entry::MAX_TTL;
/// How far ahead of the reader's clock a writer's clock may be (1 day): an envelope created later
/// than that, or a tombstone set later, is corrupt.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(24 * 3600);
/// How far ahead of the reader's clock an envelope's `stale_until` may lie: a TTL and a stale
/// period of [`MAX_TTL`] each, plus [`MAX_CLOCK_SKEW`] (20 years and a day).
pub const MAX_AHEAD: Duration = MAX_TTL
    .saturating_add(MAX_TTL)
    .saturating_add(MAX_CLOCK_SKEW);
/// The largest payload a compressed envelope may claim to decompress to (64 MiB).
pub const MAX_DECOMPRESSED_LEN: usize = 64 * 1024 * 1024;
/// How many times its length one LZ4 block can at most expand to (a byte of a match's length
/// run adds at most 255 bytes of output).
#[cfg(feature = "compression")]
const LZ4_MAX_RATIO: usize = 255;

/// Encodes `entry` with `codec` into a new buffer (compressing the payload when the codec asks
/// for it, with feature `compression`).
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
    let payload_at = out.len();
    codec.encode(&entry.value, &mut out)?;
    if let Some(threshold) = codec.compress_above() {
        compress_payload(&mut out, payload_at, threshold);
    }
    Ok(out)
}

/// Replaces the payload starting at `at` by its compression, if it is over `threshold` bytes
/// and shrinks.
#[cfg(feature = "compression")]
fn compress_payload(out: &mut Vec<u8>, at: usize, threshold: usize) {
    let payload = &out[at..];
    if payload.len() <= threshold || payload.len() > MAX_DECOMPRESSED_LEN {
        return;
    }
    // The length fits: it is at most MAX_DECOMPRESSED_LEN.
    let len = (payload.len() as u32).to_le_bytes();
    let block = lz4_flex::block::compress(payload);
    if block.len() + len.len() >= payload.len() {
        return;
    }
    out.truncate(at);
    out.extend_from_slice(&len);
    out.extend_from_slice(&block);
    out[FLAGS_OFFSET] |= FLAG_COMPRESSED;
}

#[cfg(not(feature = "compression"))]
fn compress_payload(_out: &mut [u8], _at: usize, _threshold: usize) {}

/// The payload of a compressed envelope, decompressed, with its claimed size bounded first.
#[cfg(feature = "compression")]
fn decompress(bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut r = Reader(bytes);
    let claimed = u32::from_le_bytes(r.array()?) as usize;
    let block = r.0;
    if claimed > MAX_DECOMPRESSED_LEN {
        return Err(CodecError::Compression(
            "claimed size over MAX_DECOMPRESSED_LEN",
        ));
    }
    if claimed > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(CodecError::Compression(
            "claimed size more than LZ4 can expand the block to",
        ));
    }
    let out = lz4_flex::block::decompress(block, claimed)
        .map_err(|_| CodecError::Compression("corrupt LZ4 block"))?;
    if out.len() != claimed {
        return Err(CodecError::Compression(
            "size differs from the claimed size",
        ));
    }
    Ok(out)
}

#[cfg(not(feature = "compression"))]
fn decompress(_bytes: &[u8]) -> Result<Vec<u8>, CodecError> {
    Err(CodecError::Compression(
        "the payload is compressed, but layercache-core was built without its `compression` feature",
    ))
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
    bytes.len() >= HEADER_LEN && bytes[..3] == MAGIC && bytes[FLAGS_OFFSET] == FLAG_TOMBSTONE
}

/// Decodes an entry written by [`encode`] with the same codec, checking its timestamps against
/// the system clock; see [`decode_at`]. A tombstone is [`CodecError::Tombstone`].
pub fn decode<C: Codec, V: DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
) -> Result<Entry<V>, CodecError> {
    decode_at(codec, bytes, SystemClock.now())
}

/// Decodes an entry written by [`encode`] with the same codec, read at `now` (by the reader's
/// clock). A tombstone is [`CodecError::Tombstone`]; timestamps beyond reason (see the
/// [module docs](self)) are [`CodecError::Corrupt`].
pub fn decode_at<C: Codec, V: DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
    now: Timestamp,
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
        let at = Timestamp::from_millis(r.u64()?);
        if at > now + MAX_CLOCK_SKEW {
            return Err(CodecError::Corrupt("tombstone set too far in the future"));
        }
        return Err(CodecError::Tombstone(at));
    }
    if codec_id != codec.id() {
        return Err(CodecError::CodecMismatch {
            expected: codec.id(),
            found: codec_id,
        });
    }
    if flags & !FLAG_COMPRESSED != 0 {
        return Err(CodecError::UnknownFlags(flags));
    }
    let created_at = Timestamp::from_millis(r.u64()?);
    let fresh_until = Timestamp::from_millis(r.u64()?);
    let stale_until = Timestamp::from_millis(r.u64()?);
    if stale_until < fresh_until {
        return Err(CodecError::Corrupt("stale_until before fresh_until"));
    }
    if created_at > now + MAX_CLOCK_SKEW {
        return Err(CodecError::Corrupt("created_at too far in the future"));
    }
    if stale_until > now + MAX_AHEAD {
        return Err(CodecError::Corrupt(
            "stale_until beyond the longest TTL from now",
        ));
    }
    let load_cost = Duration::from_micros(r.u64()?);
    let count = usize::from(r.u16()?);
    // Each tag takes at least its 2-byte length: never reserve more than the bytes can hold.
    let mut tags = Vec::with_capacity(count.min(r.0.len() / 2));
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let tag = std::str::from_utf8(r.take(len)?)
            .map_err(|_| CodecError::Corrupt("tag is not UTF-8"))?;
        tags.push(tag.to_owned());
    }
    let value = if flags & FLAG_COMPRESSED != 0 {
        codec.decode(&decompress(r.0)?)?
    } else {
        codec.decode(r.0)?
    };
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
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], CodecError> {
        let mut b = [0; N];
        b.copy_from_slice(self.take(N)?);
        Ok(b)
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
        v[5] = 4;
        assert_eq!(d(&v), CodecError::UnknownFlags(4));
        v[5] = FLAG_TOMBSTONE | FLAG_COMPRESSED;
        assert_eq!(d(&v), CodecError::UnknownFlags(3));
        for cut in 0..bytes.len() {
            assert!(
                decode::<_, Vec<String>>(&JsonCodec, &bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    /// `sample()` with its three timestamps replaced.
    fn with_stamps(created: u64, fresh: u64, stale: u64) -> Vec<u8> {
        let mut bytes = encode(&JsonCodec, &sample()).unwrap();
        bytes[6..14].copy_from_slice(&created.to_le_bytes());
        bytes[14..22].copy_from_slice(&fresh.to_le_bytes());
        bytes[22..30].copy_from_slice(&stale.to_le_bytes());
        bytes
    }

    #[test]
    fn timestamps_beyond_reason_are_corrupt() {
        let d = |b: &[u8]| decode::<_, Vec<String>>(&JsonCodec, b);
        use crate::Clock;
        let now = crate::SystemClock.now().as_millis();
        let year = 365 * 24 * 3600 * 1000;
        assert!(d(&with_stamps(now, now + 1_000, now + 2_000)).is_ok());
        assert!(d(&with_stamps(now, now + 10 * year, now + 20 * year)).is_ok());
        for (created, fresh, stale) in [
            (now, u64::MAX, u64::MAX),
            (now, now, u64::MAX),
            (u64::MAX, u64::MAX, u64::MAX),
            (now, now + 10 * year, now + 21 * year),
            (now + 2 * year, now + 2 * year, now + 2 * year),
            (now, now + 2_000, now + 1_000),
        ] {
            assert!(
                matches!(
                    d(&with_stamps(created, fresh, stale)),
                    Err(CodecError::Corrupt(_))
                ),
                "{created} {fresh} {stale}"
            );
        }
        let from_the_future = tombstone(Timestamp::from_millis(u64::MAX), Timestamp::MAX);
        assert!(matches!(d(&from_the_future), Err(CodecError::Corrupt(_))));
        let at = Timestamp::from_millis(now);
        let fine = tombstone(at, at + Duration::from_secs(60));
        assert_eq!(d(&fine), Err(CodecError::Tombstone(at)));
    }

    /// A header (codec JSON, no tags, sensible stamps) with `flags` and then `payload`.
    fn raw(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut bytes = with_stamps(1_000, 2_000, 3_000);
        bytes.truncate(HEADER_LEN);
        bytes[FLAGS_OFFSET] = flags;
        bytes[38..40].copy_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(payload);
        bytes
    }

    #[cfg(feature = "compression")]
    #[test]
    fn large_payloads_are_compressed_and_read_back() {
        let codec = Compressed::new(JsonCodec);
        let mut entry = sample();
        entry.value = vec!["layercache ".repeat(1_000); 4];
        let bytes = encode(&codec, &entry).unwrap();
        assert_eq!(bytes[FLAGS_OFFSET], FLAG_COMPRESSED);
        let plain = encode(&JsonCodec, &entry).unwrap();
        assert!(
            bytes.len() * 10 < plain.len(),
            "{} {}",
            bytes.len(),
            plain.len()
        );
        // Any reader with the plain codec reads both.
        assert_eq!(decode::<_, Vec<String>>(&JsonCodec, &bytes).unwrap(), entry);
        assert_eq!(decode::<_, Vec<String>>(&codec, &plain).unwrap(), entry);
        // Small payloads, and payloads that do not shrink, stay as they are.
        assert_eq!(
            encode(&codec, &sample()).unwrap(),
            encode(&JsonCodec, &sample()).unwrap()
        );
        let mut rng = fastrand::Rng::with_seed(3);
        entry.value = vec![(0..8_000).map(|_| rng.alphanumeric()).collect()];
        let noise = encode(&codec.threshold(16), &entry).unwrap();
        assert_eq!(noise[FLAGS_OFFSET], 0);
        // The most compressible payload there is still fits the expansion bound.
        entry.value = vec!["a".repeat(4 << 20)];
        let zeros = encode(&codec, &entry).unwrap();
        assert_eq!(zeros[FLAGS_OFFSET], FLAG_COMPRESSED);
        assert_eq!(decode::<_, Vec<String>>(&codec, &zeros).unwrap(), entry);
    }

    #[cfg(feature = "compression")]
    #[test]
    fn decompression_refuses_claims_beyond_its_bounds() {
        let d = |b: &[u8]| decode::<_, Vec<String>>(&JsonCodec, b).unwrap_err();
        let claim = |len: u32, block: &[u8]| {
            let mut p = len.to_le_bytes().to_vec();
            p.extend_from_slice(block);
            raw(FLAG_COMPRESSED, &p)
        };
        let over = u32::try_from(MAX_DECOMPRESSED_LEN + 1).unwrap();
        assert!(matches!(
            d(&claim(over, &[0; 64])),
            CodecError::Compression(_)
        ));
        assert!(matches!(
            d(&claim(u32::MAX, &[])),
            CodecError::Compression(_)
        ));
        // 2 bytes of block cannot become 1 000 bytes.
        assert!(matches!(
            d(&claim(1_000, &[0x1f, 0])),
            CodecError::Compression(_)
        ));
        assert!(matches!(
            d(&claim(10, &[0xff; 8])),
            CodecError::Compression(_)
        ));
        assert!(matches!(
            d(&raw(FLAG_COMPRESSED, &[1, 0])),
            CodecError::Corrupt(_)
        ));
        // A block that decodes to less than it claims.
        let block = lz4_flex::block::compress(b"[\"a\"]");
        assert!(matches!(d(&claim(6, &block)), CodecError::Compression(_)));
        assert_eq!(
            decode::<_, Vec<String>>(&JsonCodec, &claim(5, &block))
                .unwrap()
                .value,
            vec!["a".to_owned()]
        );
    }

    #[cfg(not(feature = "compression"))]
    #[test]
    fn compressed_envelopes_are_a_codec_error_without_the_feature() {
        let got = decode::<_, Vec<String>>(&JsonCodec, &raw(FLAG_COMPRESSED, b"\x05\0\0\0xx"));
        assert!(
            matches!(got, Err(CodecError::Compression(m)) if m.contains("`compression` feature")),
            "{got:?}"
        );
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

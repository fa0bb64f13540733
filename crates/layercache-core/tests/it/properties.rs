//! Property tests of the envelope and the codecs: values round trip, and any bytes decode to an
//! error or to a sane entry no larger than the bytes could hold, never a panic.

use std::collections::BTreeMap;
use std::time::Duration;

use layercache_core::envelope::{self, FLAG_COMPRESSED, FLAGS_OFFSET, MAX_AHEAD, MAX_CLOCK_SKEW};
use layercache_core::{Codec, Entry, EntryMeta, JsonCodec, Tags, Timestamp};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

/// The reader's clock in these tests (2026-01-01T00:00:00Z).
const NOW: Timestamp = Timestamp::from_millis(1_767_225_600_000);

/// A value with the shapes a cache holds: numbers, text, optional and nested fields, bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    delta: i32,
    name: String,
    price: Option<u32>,
    labels: Vec<String>,
    stock: BTreeMap<String, u16>,
    raw: Vec<u8>,
}

fn product() -> impl Strategy<Value = Product> {
    (
        any::<u64>(),
        any::<i32>(),
        ".{0,40}",
        any::<Option<u32>>(),
        prop::collection::vec(".{0,12}", 0..6),
        prop::collection::btree_map("[a-z]{1,8}", any::<u16>(), 0..4),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(id, delta, name, price, labels, stock, raw)| Product {
            id,
            delta,
            name,
            price,
            labels,
            stock,
            raw,
        })
}

/// Meta an entry made up to a day ago, with a TTL and a stale period of up to 10 years each.
fn meta() -> impl Strategy<Value = EntryMeta> {
    let year = 365 * 24 * 3600 * 1000u64;
    (
        0..24 * 3600 * 1000u64,
        1..10 * year,
        0..10 * year,
        any::<u32>(),
        prop::collection::vec(".{0,16}", 0..4),
    )
        .prop_map(|(age, ttl, stale, cost, tags)| {
            let created = NOW - Duration::from_millis(age);
            let fresh = created + Duration::from_millis(ttl);
            EntryMeta::new(created, fresh, fresh + Duration::from_millis(stale))
                .with_load_cost(Duration::from_micros(u64::from(cost)))
                .with_tags(tags.into_iter().collect::<Tags>())
        })
}

/// How much text an entry holds: what decoding had to take from its input.
fn size(entry: &Entry<Vec<String>>) -> usize {
    let text = |v: &[String]| v.iter().map(String::len).sum::<usize>();
    text(&entry.value) + text(entry.meta.tags.as_slice())
}

/// Decodes arbitrary bytes: an error, or an entry that is sane at `NOW` and no larger than
/// the input (255 times it when compressed, LZ4's most).
fn decodes_sanely<C: Codec>(codec: &C, bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = envelope::decode_at::<_, BTreeMap<String, Vec<i64>>>(codec, bytes, NOW);
    let _ = envelope::decode_at::<_, Product>(codec, bytes, NOW);
    if let Ok(entry) = envelope::decode_at::<_, Vec<String>>(codec, bytes, NOW) {
        let meta = &entry.meta;
        prop_assert!(meta.fresh_until <= meta.stale_until);
        prop_assert!(meta.created_at <= NOW + MAX_CLOCK_SKEW);
        prop_assert!(meta.stale_until <= NOW + MAX_AHEAD);
        let compressed = bytes[FLAGS_OFFSET] & FLAG_COMPRESSED != 0;
        let most = if compressed {
            255 * bytes.len()
        } else {
            bytes.len()
        };
        prop_assert!(
            size(&entry) <= most,
            "{} from {}",
            size(&entry),
            bytes.len()
        );
    }
    Ok(())
}

/// `bytes` behind a valid header of `codec` (no flags, sane stamps, the tag count next).
fn behind_header<C: Codec>(codec: &C, flags: u8, bytes: &[u8]) -> Vec<u8> {
    let entry = Entry::new((), EntryMeta::new(NOW, NOW, NOW));
    let mut out = envelope::encode(codec, &entry).unwrap();
    out.truncate(envelope::HEADER_LEN - 2);
    out[FLAGS_OFFSET] = flags;
    out.extend_from_slice(bytes);
    out
}

/// Every codec under test, as a list of closures over the same body.
macro_rules! for_each_codec {
    (|$codec:ident| $body:block) => {{
        {
            let $codec = JsonCodec;
            $body
        }
        #[cfg(feature = "msgpack")]
        {
            let $codec = layercache_core::MsgPackCodec;
            $body
        }
        #[cfg(feature = "compression")]
        {
            let $codec = envelope::Compressed::new(JsonCodec).threshold(32);
            $body
        }
        #[cfg(all(feature = "compression", feature = "msgpack"))]
        {
            let $codec = envelope::Compressed::new(layercache_core::MsgPackCodec).threshold(32);
            $body
        }
    }};
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn entries_round_trip_through_every_codec(value in product(), meta in meta()) {
        let entry = Entry::new(value, meta);
        for_each_codec!(|codec| {
            let bytes = envelope::encode(&codec, &entry).unwrap();
            let back: Entry<Product> = envelope::decode_at(&codec, &bytes, NOW).unwrap();
            prop_assert_eq!(&back, &entry);
        });
    }

    #[test]
    fn values_round_trip_through_every_codec(value in product()) {
        for_each_codec!(|codec| {
            let mut bytes = Vec::new();
            codec.encode(&value, &mut bytes).unwrap();
            prop_assert_eq!(codec.decode::<Product>(&bytes).unwrap(), value.clone());
        });
    }

    #[test]
    fn codecs_take_any_bytes_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for_each_codec!(|codec| {
            let _ = codec.decode::<Product>(&bytes);
            let _ = codec.decode::<BTreeMap<String, Vec<i64>>>(&bytes);
            if let Ok(list) = codec.decode::<Vec<String>>(&bytes) {
                prop_assert!(list.iter().map(String::len).sum::<usize>() <= bytes.len());
            }
        });
    }

    #[test]
    fn envelopes_take_any_bytes_without_panicking(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        flags in prop::sample::select(vec![0u8, FLAG_COMPRESSED, 0x01, 0x04]),
    ) {
        for_each_codec!(|codec| {
            decodes_sanely(&codec, &bytes)?;
            decodes_sanely(&codec, &behind_header(&codec, flags, &bytes))?;
        });
    }

    #[test]
    fn mutated_envelopes_decode_to_errors_or_sane_entries(
        value in prop::collection::vec(".{0,300}", 0..8),
        meta in meta(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let entry = Entry::new(value, meta);
        for_each_codec!(|codec| {
            let mut bytes = envelope::encode(&codec, &entry).unwrap();
            for (at, byte) in &edits {
                let at = at.index(bytes.len());
                bytes[at] = *byte;
            }
            decodes_sanely(&codec, &bytes)?;
            let cut = cut.index(bytes.len());
            decodes_sanely(&codec, &bytes[..cut])?;
        });
    }
}

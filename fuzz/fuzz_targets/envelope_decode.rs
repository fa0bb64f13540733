//! Any bytes a shared tier hands back decode to an error or to a sane entry, never a panic, with
//! every codec; a decoded entry encodes and decodes back to itself.
#![no_main]

use std::collections::BTreeMap;

use layercache_core::envelope::{self, Compressed, MAX_AHEAD, MAX_CLOCK_SKEW};
use layercache_core::{Codec, Entry, JsonCodec, MsgPackCodec, Timestamp};
use libfuzzer_sys::fuzz_target;

/// A fixed reader clock, so a run is reproducible (2026-01-01T00:00:00Z).
const NOW: Timestamp = Timestamp::from_millis(1_767_225_600_000);

fn check<C: Codec>(codec: &C, data: &[u8]) {
    let Ok(entry) = envelope::decode_at::<_, Vec<String>>(codec, data, NOW) else {
        return;
    };
    let meta = &entry.meta;
    assert!(meta.fresh_until <= meta.stale_until);
    assert!(meta.created_at <= NOW + MAX_CLOCK_SKEW);
    assert!(meta.stale_until <= NOW + MAX_AHEAD);
    // Nothing decoded is larger than LZ4 could expand the input to.
    let size: usize = entry.value.iter().map(String::len).sum::<usize>()
        + meta.tags.as_slice().iter().map(String::len).sum::<usize>();
    assert!(
        size <= data.len().saturating_mul(255),
        "{size} from {}",
        data.len()
    );
    let bytes = envelope::encode(codec, &entry).expect("a decoded entry encodes");
    let back: Entry<Vec<String>> = envelope::decode_at(codec, &bytes, NOW).expect("and decodes");
    assert_eq!(back, entry);
}

fuzz_target!(|data: &[u8]| {
    check(&JsonCodec, data);
    check(&MsgPackCodec, data);
    check(&Compressed::new(JsonCodec).threshold(16), data);
    // Another shape: maps and numbers (the codecs' size hints for maps).
    let _ = envelope::decode_at::<_, BTreeMap<String, Vec<i64>>>(&JsonCodec, data, NOW);
    let _ = envelope::decode_at::<_, BTreeMap<String, Vec<i64>>>(&MsgPackCodec, data, NOW);
});

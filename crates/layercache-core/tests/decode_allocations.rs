//! Decoding allocates in proportion to its input: a counting global allocator (its own test
//! binary and its only test, so nothing else is counted) watches the decoder take random and
//! mutated envelopes apart. A header that claims a huge length (a tag count, a MessagePack array,
//! a compressed block's size) must not make it reserve that much before the bytes are there.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test")]

use std::alloc::System;
use std::collections::BTreeMap;
use std::time::Duration;

use layercache_core::envelope::{self, FLAG_COMPRESSED, FLAGS_OFFSET, HEADER_LEN};
use layercache_core::{Codec, EntryOptions, JsonCodec, Timestamp};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes the decoder may allocate per byte of (decompressed) input: a `String` of `Vec<String>`
/// is 24 bytes for as little as 3 bytes of JSON (`"",`), and a growing `Vec` may hold twice that.
const PER_BYTE: usize = 64;
/// Allocations any decode may make whatever its input: an error's message, a box or two.
const FIXED: usize = 4 * 1024;

/// The most bytes decoding `input` may allocate.
fn bound(input: &[u8]) -> usize {
    let compressed = input.len() > FLAGS_OFFSET && input[FLAGS_OFFSET] & FLAG_COMPRESSED != 0;
    // A compressed payload may legitimately expand up to 255 times (LZ4's bound); it is decoded
    // from the decompressed copy.
    let plain = if compressed {
        input.len() * 256
    } else {
        input.len()
    };
    plain * PER_BYTE + FIXED
}

fn bytes_allocated_by(f: impl FnOnce()) -> usize {
    let region = Region::new(GLOBAL);
    f();
    region.change().bytes_allocated
}

fn check<C: Codec>(codec: &C, input: &[u8], now: Timestamp, worst: &mut f64) {
    let list = bytes_allocated_by(|| {
        let _ = envelope::decode_at::<_, Vec<String>>(codec, input, now);
    });
    let map = bytes_allocated_by(|| {
        let _ = envelope::decode_at::<_, BTreeMap<String, Vec<u64>>>(codec, input, now);
    });
    let got = list.max(map);
    assert!(
        got <= bound(input),
        "{} decoding {} bytes allocated {got} bytes: {input:02x?}",
        codec.name(),
        input.len()
    );
    *worst = worst.max(got as f64 / bound(input) as f64);
}

/// Inputs: envelopes of every codec, then mutations of them: random bytes, random lengths
/// (including the largest a field can claim) and cuts.
fn inputs<C: Codec>(codec: &C, rng: &mut fastrand::Rng) -> Vec<Vec<u8>> {
    let now = Timestamp::from_millis(1_767_225_600_000);
    let options = EntryOptions::new(Duration::from_secs(60)).with_tags(["t1", "t2"]);
    let values = [
        vec![],
        vec!["a".to_owned(), "ü".to_owned()],
        vec!["layercache ".repeat(500); 2],
    ];
    let mut out = Vec::new();
    for value in values {
        let entry = options.entry(value, now, Duration::ZERO).unwrap();
        let valid = envelope::encode(codec, &entry).unwrap();
        for _ in 0..300 {
            let mut b = valid.clone();
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..b.len());
                match rng.u8(..4) {
                    0 => b[at] = rng.u8(..),
                    1 => b[at] = 0xff,
                    // A length or count field at its largest.
                    2 => b[at..].iter_mut().take(4).for_each(|x| *x = 0xff),
                    _ => b.truncate(at.max(HEADER_LEN)),
                }
            }
            out.push(b);
        }
        out.push(valid);
    }
    out
}

/// A valid header of `codec` read at `now`: no flags, fresh stamps, no tags.
fn header<C: Codec>(codec: &C, now: Timestamp) -> Vec<u8> {
    let entry = EntryOptions::new(Duration::from_secs(60))
        .entry((), now, Duration::ZERO)
        .unwrap();
    let mut bytes = envelope::encode(codec, &entry).unwrap();
    bytes.truncate(HEADER_LEN - 2);
    bytes
}

#[test]
fn decoding_allocates_in_proportion_to_the_input() {
    let now = Timestamp::from_millis(1_767_225_600_000);
    let mut rng = fastrand::Rng::with_seed(11);
    let mut worst = 0.0f64;
    let json_inputs = inputs(&JsonCodec, &mut rng);
    for input in &json_inputs {
        check(&JsonCodec, input, now, &mut worst);
    }
    #[cfg(feature = "msgpack")]
    {
        let codec = layercache_core::MsgPackCodec;
        for input in inputs(&codec, &mut rng) {
            check(&codec, &input, now, &mut worst);
        }
        // MessagePack containers that claim more items than there are bytes.
        for claim in [
            &[0xdd, 0xff, 0xff, 0xff, 0xff][..],
            &[0xdf, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut input = header(&codec, now);
            input.extend_from_slice(&[0, 0]);
            input.extend_from_slice(claim);
            check(&codec, &input, now, &mut worst);
        }
    }
    #[cfg(feature = "compression")]
    {
        let codec = layercache_core::envelope::Compressed::new(JsonCodec).threshold(64);
        for input in inputs(&codec, &mut rng) {
            check(&codec, &input, now, &mut worst);
        }
    }
    // Random bytes behind a valid header (random tags, then a random payload).
    for _ in 0..2_000 {
        let mut b = header(&JsonCodec, now);
        b.extend((0..rng.usize(0..64)).map(|_| rng.u8(..)));
        check(&JsonCodec, &b, now, &mut worst);
    }
    println!("worst: {:.1}% of the bound", worst * 100.0);
}

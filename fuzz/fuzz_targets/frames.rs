//! Arbitrary bytes, cut into arbitrary pieces, through the frame decoder and request parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (chunk, rest) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c) + 1, rest),
        None => (1, data),
    };
    warden_proto::harness::decode_and_parse(rest, chunk, 4096);
});

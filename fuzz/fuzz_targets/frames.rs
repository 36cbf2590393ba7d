//! Arbitrary bytes, cut into arbitrary pieces, through the frame decoder and request parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warden_proto::harness::fuzz_frames(data);
});

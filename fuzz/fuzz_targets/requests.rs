//! Arbitrary frame bodies through the JSON-RPC envelope and the typed request parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    warden_proto::harness::parse_request(data);
});

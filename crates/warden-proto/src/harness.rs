//! Entry points for fuzz targets (`fuzz/`): whole-input drivers of the frame decoder and the
//! request parser that must never panic, whatever the bytes. They say how far an input got, so
//! the committed corpus (`tests/corpus/`, replayed by `tests/corpus.rs` on stable) can pin it.

use bytes::BytesMut;

use crate::envelope::Envelope;
use crate::frame::FrameDecoder;
use crate::method::Method;
use crate::request::Request;

/// The `max_frame` of the `frames` fuzz target: small, so both sides of the limit are reachable.
pub const FUZZ_MAX_FRAME: u32 = 4096;

/// How far the request parser got with one frame body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A typed request.
    Request,
    /// Not a JSON-RPC request envelope (not JSON, not UTF-8, a bad `id`, unknown members, …).
    BadEnvelope,
    /// An envelope naming no method of the protocol.
    UnknownMethod,
    /// A known method whose params do not type.
    BadParams,
}

impl Parsed {
    /// The name a corpus file's name starts with (`tests/corpus/requests/`).
    pub fn as_str(self) -> &'static str {
        match self {
            Parsed::Request => "ok",
            Parsed::BadEnvelope => "envelope",
            Parsed::UnknownMethod => "method",
            Parsed::BadParams => "params",
        }
    }
}

/// What a stream of bytes decoded to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded {
    /// Complete frames taken off the stream (each also run through the request parser).
    pub frames: usize,
    /// Whether the stream ended on a framing violation (a length of 0 or over `max_frame`)
    /// rather than on a frame boundary or in the middle of a frame.
    pub broken: bool,
}

/// The `frames` fuzz target: the first byte picks the piece size (1 to 256), the rest is the
/// stream, decoded with [`FUZZ_MAX_FRAME`].
pub fn fuzz_frames(data: &[u8]) -> Decoded {
    let (chunk, rest) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c) + 1, rest),
        None => (1, data),
    };
    decode_and_parse(rest, chunk, FUZZ_MAX_FRAME)
}

/// Feeds `data` to a decoder in pieces of `chunk` bytes and parses every frame that comes out as
/// a request. Says how many frames were decoded before the stream ended or broke.
pub fn decode_and_parse(data: &[u8], chunk: usize, max_frame: u32) -> Decoded {
    let dec = FrameDecoder::new(max_frame.max(1));
    let mut buf = BytesMut::new();
    let mut frames = 0;
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    frames += 1;
                    parse_request(&frame);
                }
                Ok(None) => break,
                Err(_) => {
                    return Decoded {
                        frames,
                        broken: true,
                    };
                }
            }
        }
    }
    Decoded {
        frames,
        broken: false,
    }
}

/// Runs one frame body through the envelope and typed-request parsers (the `requests` fuzz
/// target).
pub fn parse_request(frame: &[u8]) -> Parsed {
    let Ok(env) = Envelope::parse(frame) else {
        return Parsed::BadEnvelope;
    };
    let Some(method) = Method::from_name(&env.method) else {
        return Parsed::UnknownMethod;
    };
    match Request::parse(method, env.params) {
        Ok(_) => Parsed::Request,
        Err(_) => Parsed::BadParams,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Pins: no input makes the decoder or the request parser panic.
        #[test]
        fn no_input_panics(data in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
            decode_and_parse(&data, chunk, 512);
        }

        /// Pins: JSON-shaped garbage inside valid frames never panics the parser.
        #[test]
        fn json_shaped_input_never_panics(s in r#"\{"jsonrpc":"2\.0","id":[0-9"a-z]{1,4},"method":"(hello|status|whoami|x)","params":.{0,40}\}"#) {
            parse_request(s.as_bytes());
        }
    }
}

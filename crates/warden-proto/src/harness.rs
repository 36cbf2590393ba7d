//! Entry points for fuzz targets (`fuzz/`): whole-input drivers of the frame decoder and the
//! request parser that must never panic, whatever the bytes.

use bytes::BytesMut;

use crate::envelope::Envelope;
use crate::frame::FrameDecoder;
use crate::method::Method;
use crate::request::Request;

/// Feeds `data` to a decoder in pieces of `chunk` bytes and parses every frame that comes out as
/// a request. Returns how many frames were decoded before the stream ended or broke.
pub fn decode_and_parse(data: &[u8], chunk: usize, max_frame: u32) -> usize {
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
                Err(_) => return frames,
            }
        }
    }
    frames
}

/// Runs one frame body through the envelope and typed-request parsers.
pub fn parse_request(frame: &[u8]) {
    if let Ok(env) = Envelope::parse(frame)
        && let Some(method) = Method::from_name(&env.method)
    {
        let _ = Request::parse(method, env.params);
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

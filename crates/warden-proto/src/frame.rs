//! The frame codec: a frame is a 4-byte big-endian length N followed by N bytes of UTF-8 JSON,
//! with `1 <= N <= max_frame`.
//!
//! The decoder validates the announced length before it reserves anything, so a peer that
//! announces 4 GiB costs four bytes of buffer and gets an answer at once. It never panics on any
//! byte sequence (a property test and the fuzz harness hold it to that).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Size of the length prefix.
pub const HEADER_LEN: usize = 4;

/// Default largest frame body: 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// A frame whose announced length breaks the rules. Either way the connection is finished: the
/// stream cannot be resynchronised after a bad length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length 0 is invalid: a frame carries 1 to {max} bytes")]
    Empty { max: u32 },
    #[error("frame length {len} exceeds max_frame {max}")]
    TooLarge { len: u32, max: u32 },
}

/// Splits a byte stream into frames.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame: u32,
}

impl FrameDecoder {
    pub fn new(max_frame: u32) -> Self {
        FrameDecoder { max_frame }
    }

    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Checks an announced length against the limits.
    pub fn check_len(&self, len: u32) -> Result<usize, FrameError> {
        match len {
            0 => Err(FrameError::Empty {
                max: self.max_frame,
            }),
            n if n > self.max_frame => Err(FrameError::TooLarge {
                len: n,
                max: self.max_frame,
            }),
            n => Ok(n as usize),
        }
    }

    /// Takes one complete frame body off the front of `buf`, or returns `Ok(None)` when more
    /// bytes are needed. Reserves room for the rest of a frame only after its length passed
    /// [`FrameDecoder::check_len`].
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        let Some(header) = buf.first_chunk::<HEADER_LEN>() else {
            return Ok(None);
        };
        let len = self.check_len(u32::from_be_bytes(*header))?;
        let total = HEADER_LEN + len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        buf.advance(HEADER_LEN);
        Ok(Some(buf.split_to(len).freeze()))
    }
}

/// Prefixes `payload` with its length. Refuses bodies the peer would reject.
pub fn encode_frame(payload: &[u8], max_frame: u32) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge {
        len: u32::MAX,
        max: max_frame,
    })?;
    FrameDecoder::new(max_frame).check_len(len)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    Ok(out)
}

/// Reads one frame from `r`. `Ok(None)` on a clean end of stream before any byte of a frame.
/// An invalid length is returned as `InvalidData` without reading the body.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max_frame: u32,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = FrameDecoder::new(max_frame)
        .check_len(u32::from_be_bytes(header))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Writes `payload` as one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    payload: &[u8],
    max_frame: u32,
) -> std::io::Result<()> {
    let frame = encode_frame(payload, max_frame)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    w.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn frame(len: u32, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn a_frame_of_exactly_max_frame_is_accepted() {
        let dec = FrameDecoder::new(16);
        let mut buf = frame(16, &[b'x'; 16]);
        assert_eq!(dec.decode(&mut buf).unwrap().unwrap().len(), 16);
        assert!(buf.is_empty());
    }

    #[test]
    fn max_frame_plus_one_and_zero_are_refused_from_the_header_alone() {
        let dec = FrameDecoder::new(16);
        let mut buf = frame(17, b"");
        assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        );
        let mut buf = frame(0, b"");
        assert_eq!(dec.decode(&mut buf), Err(FrameError::Empty { max: 16 }));
    }

    #[test]
    fn announcing_four_gib_reserves_nothing() {
        let dec = FrameDecoder::new(DEFAULT_MAX_FRAME);
        let mut buf = frame(u32::MAX, b"");
        let cap = buf.capacity();
        assert!(dec.decode(&mut buf).is_err());
        assert_eq!(buf.capacity(), cap);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes_and_pipelined_frames_split() {
        let dec = FrameDecoder::new(64);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0]);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(&[0, 3, b'a']);
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"bc");
        buf.extend_from_slice(&frame(1, b"d"));
        assert_eq!(&dec.decode(&mut buf).unwrap().unwrap()[..], b"abc");
        assert_eq!(&dec.decode(&mut buf).unwrap().unwrap()[..], b"d");
        assert_eq!(dec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn encode_refuses_what_decode_would_refuse() {
        assert!(encode_frame(b"", 8).is_err());
        assert!(encode_frame(&[0; 9], 8).is_err());
        assert_eq!(
            encode_frame(b"ab", 8).unwrap(),
            vec![0, 0, 0, 2, b'a', b'b']
        );
    }

    proptest! {
        /// Pins: any frame sequence survives encode → arbitrary re-chunking → decode unchanged.
        #[test]
        fn frames_round_trip_through_any_chunking(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..200), 1..8),
            cut in 1usize..50,
        ) {
            let wire: Vec<u8> = bodies.iter().flat_map(|b| encode_frame(b, 256).unwrap()).collect();
            let dec = FrameDecoder::new(256);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(f) = dec.decode(&mut buf).unwrap() {
                    out.push(f.to_vec());
                }
            }
            prop_assert_eq!(out, bodies);
        }

        /// Pins: arbitrary bytes never panic the decoder and never make it reserve past max_frame.
        #[test]
        fn arbitrary_bytes_never_panic_or_over_reserve(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let dec = FrameDecoder::new(128);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = dec.decode(&mut buf) {}
            prop_assert!(buf.capacity() <= data.len().max(HEADER_LEN + 128) + 64);
        }
    }
}

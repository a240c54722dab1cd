//! Framing: every message of the machine link travels as one frame, a
//! 4-byte big-endian length and then that many payload bytes.
//!
//! ```text
//! frame = length (u32 BE, 0 ..= FRAME_BYTES_MAX) ++ payload (length bytes)
//! ```
//!
//! tokio-util's `LengthDelimitedCodec` does the splitting and prefixing;
//! [`frame_codec`] is the one place its settings live. The TCP shells use it
//! through `Framed`, `FramedRead` and `FramedWrite`, and the deterministic
//! simulation calls its `Decoder` and `Encoder` on plain `BytesMut` buffers,
//! so both split a stream the same way. An incomplete frame is a normal
//! state (`Ok(None)`); a length above `FRAME_BYTES_MAX` is an error as soon
//! as the prefix arrives, before its payload is buffered, and the
//! connection is then closed.

pub use crate::channel::FRAME_BYTES_MAX;
pub use tokio_util::codec::LengthDelimitedCodec;
use tokio_util::codec::LengthDelimitedCodecError;

/// Bytes of the length prefix in front of every frame.
pub const LENGTH_BYTES: usize = 4;

/// The link's framing: a u32 big-endian length prefix that counts only the
/// payload, and payloads of at most [`FRAME_BYTES_MAX`] bytes each way.
pub fn frame_codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_offset(0)
        .length_field_length(LENGTH_BYTES)
        .length_adjustment(0)
        .num_skip(LENGTH_BYTES)
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

/// Whether a framing error means a frame longer than [`FRAME_BYTES_MAX`]
/// (the peer is broken or hostile), rather than a failed or closed
/// connection. Both end the connection; only the first is counted as a
/// malformed frame.
pub fn is_oversized_frame(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use proptest::prelude::*;
    use tokio_util::codec::{Decoder, Encoder};

    fn encode(payload: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        frame_codec()
            .encode(Bytes::copy_from_slice(payload), &mut out)
            .unwrap();
        out
    }

    #[test]
    fn frames_split_a_stream_at_any_boundary() {
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1, 2, 3], vec![9; 1_000]];
        let stream: Vec<u8> = payloads.iter().flat_map(|p| encode(p)).collect();
        for chunk in [1, 2, 3, 7, 64, stream.len()] {
            let mut codec = frame_codec();
            let mut buffer = BytesMut::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                buffer.extend_from_slice(piece);
                while let Some(frame) = codec.decode(&mut buffer).unwrap() {
                    out.push(frame.to_vec());
                }
            }
            assert_eq!(out, payloads);
            assert!(buffer.is_empty());
        }
    }

    #[test]
    fn the_largest_frame_passes_and_one_byte_more_is_refused() {
        let largest = vec![7u8; FRAME_BYTES_MAX];
        let mut buffer = encode(&largest);
        assert_eq!(buffer.len(), LENGTH_BYTES + FRAME_BYTES_MAX);
        let frame = frame_codec().decode(&mut buffer).unwrap().unwrap();
        assert_eq!(frame.len(), FRAME_BYTES_MAX);

        let mut out = BytesMut::new();
        let refused = frame_codec()
            .encode(Bytes::from(vec![7u8; FRAME_BYTES_MAX + 1]), &mut out)
            .unwrap_err();
        assert!(is_oversized_frame(&refused));
        assert!(out.is_empty(), "nothing of a refused frame is written");
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        for length in [FRAME_BYTES_MAX as u32 + 1, u32::MAX] {
            let mut buffer = BytesMut::from(&length.to_be_bytes()[..]);
            let error = frame_codec().decode(&mut buffer).unwrap_err();
            assert!(is_oversized_frame(&error), "{error}");
        }
        let closed = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!is_oversized_frame(&closed));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut codec = frame_codec();
            let mut buffer = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = codec.decode(&mut buffer) {
                prop_assert!(frame.len() <= FRAME_BYTES_MAX);
            }
        }
    }
}

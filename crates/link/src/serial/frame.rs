//! Frames on the line: a body and its CRC-32, COBS-encoded and ended by a zero byte.
//!
//! COBS (the `cobs` crate) keeps zero out of every encoded frame, so a receiver that lost
//! bytes or saw them corrupted finds the next frame at the next zero; the CRC-32
//! (`crc32fast`, IEEE) then tells a whole frame from a damaged one.
//!
//! Body (big-endian): kind u8 (1 data, 2 ack) · message u32 · chunk u16 · then for data:
//! chunks u16 · bytes (1 ..= [`MAX_CHUNK`]). The CRC-32 of the body follows it.

/// Most message bytes one data frame carries: a frame of about 1 KiB keeps a corrupted
/// frame's retransmission short (90 ms at 115 200 baud) and the framing overhead under 2 %.
pub const MAX_CHUNK: usize = 1024;

const DATA: u8 = 1;
const ACK: u8 = 2;
const HEADER: usize = 1 + 4 + 2;
const CRC: usize = 4;
/// Longest encoded frame, its zero excluded: COBS adds one byte per 254.
pub(crate) const MAX_ENCODED: usize = {
    let body = HEADER + 2 + MAX_CHUNK + CRC;
    body + body / 254 + 2
};

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Chunk `chunk` of `chunks` of message `message`.
    Data {
        message: u32,
        chunk: u16,
        chunks: u16,
        bytes: Vec<u8>,
    },
    /// The receiver holds chunk `chunk` of message `message`.
    Ack { message: u32, chunk: u16 },
}

impl Frame {
    /// The frame on the wire, its terminating zero included.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(HEADER + 2 + MAX_CHUNK + CRC);
        match self {
            Frame::Data {
                message,
                chunk,
                chunks,
                bytes,
            } => {
                body.push(DATA);
                body.extend_from_slice(&message.to_be_bytes());
                body.extend_from_slice(&chunk.to_be_bytes());
                body.extend_from_slice(&chunks.to_be_bytes());
                body.extend_from_slice(bytes);
            }
            Frame::Ack { message, chunk } => {
                body.push(ACK);
                body.extend_from_slice(&message.to_be_bytes());
                body.extend_from_slice(&chunk.to_be_bytes());
            }
        }
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_be_bytes());
        let mut wire = cobs::encode_vec(&body);
        wire.push(0);
        wire
    }

    /// The frame in `encoded` (the bytes before a zero), or `None` if it was damaged:
    /// not COBS, a wrong CRC, an unknown kind or a length out of range.
    pub(crate) fn decode(encoded: &[u8]) -> Option<Frame> {
        if encoded.is_empty() || encoded.len() > MAX_ENCODED {
            return None;
        }
        let body = cobs::decode_vec(encoded).ok()?;
        let (body, crc) = body.split_at_checked(body.len().checked_sub(CRC)?)?;
        if crc32fast::hash(body) != u32::from_be_bytes(crc.try_into().ok()?) || body.len() < HEADER
        {
            return None;
        }
        let message = u32::from_be_bytes(body[1..5].try_into().ok()?);
        let chunk = u16::from_be_bytes(body[5..7].try_into().ok()?);
        match (body[0], &body[HEADER..]) {
            (ACK, []) => Some(Frame::Ack { message, chunk }),
            (DATA, [a, b, bytes @ ..]) if !bytes.is_empty() && bytes.len() <= MAX_CHUNK => {
                let chunks = u16::from_be_bytes([*a, *b]);
                (chunk < chunks).then(|| Frame::Data {
                    message,
                    chunk,
                    chunks,
                    bytes: bytes.to_vec(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_every_flipped_bit_is_caught() {
        let data = Frame::Data {
            message: 7,
            chunk: 1,
            chunks: 3,
            bytes: vec![0, 1, 2, 0, 255],
        };
        let wire = data.encode();
        assert_eq!(wire.iter().filter(|b| **b == 0).count(), 1, "zero ends it");
        assert_eq!(Frame::decode(&wire[..wire.len() - 1]), Some(data));
        for i in 0..wire.len() - 1 {
            for bit in 0..8 {
                let mut bad = wire.clone();
                bad[i] ^= 1 << bit;
                let caught = bad[..bad.len() - 1]
                    .split(|b| *b == 0)
                    .all(|part| Frame::decode(part).is_none());
                assert!(caught, "flip of bit {bit} of byte {i} passed");
            }
        }
        let ack = Frame::Ack {
            message: 7,
            chunk: 2,
        };
        let wire = ack.encode();
        assert_eq!(Frame::decode(&wire[..wire.len() - 1]), Some(ack));
    }
}

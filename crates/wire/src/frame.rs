//! The frame protocol on the TEE core's local socket.
//!
//! ```text
//! magic "CTEE" (4) | version (1) | kind (1) | payload length u32 BE (4) | payload
//! ```
//! The version is the wire protocol's ([`PROTOCOL_VERSION`]): a peer of another version is
//! refused with [`RefusalCode::UnsupportedVersion`] before anything of its payload is parsed
//! or allocated (a reader may have buffered a few KiB past the header).
//! Kinds: 1 request (node server → TEE), 2 response, 3 refusal (the frame itself was bad;
//! payload = code byte + UTF-8 message; the connection is then closed). Length limits are
//! checked from the header, before any payload is allocated.

use std::io::{self, Read, Write};

use crate::protocol::{MAX_REQUEST_LEN, PROTOCOL_VERSION};

/// Frame magic.
pub const MAGIC: &[u8; 4] = b"CTEE";
/// Header length.
pub const HEADER_LEN: usize = 10;
/// Largest request payload.
pub const MAX_REQUEST: usize = MAX_REQUEST_LEN;
/// Largest response payload (key lists and batched transfers can be large).
pub const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Frame kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// Request.
    Request = 1,
    /// Response.
    Response = 2,
    /// Refusal of a bad frame.
    Refusal = 3,
}

/// Why a frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RefusalCode {
    /// Magic bytes wrong.
    BadMagic = 1,
    /// Unknown frame version.
    UnsupportedVersion = 2,
    /// Unexpected frame kind.
    BadKind = 3,
    /// Payload over the limit.
    TooLarge = 4,
    /// Peer not allowed to talk to the TEE.
    PeerRejected = 5,
    /// Too many connections.
    Busy = 6,
}

impl RefusalCode {
    /// Parses a code byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::BadMagic,
            2 => Self::UnsupportedVersion,
            3 => Self::BadKind,
            4 => Self::TooLarge,
            5 => Self::PeerRejected,
            6 => Self::Busy,
            _ => return None,
        })
    }
}

/// A frame-level failure.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// I/O failure.
    #[error("I/O: {0}")]
    Io(#[from] io::Error),
    /// The header was invalid.
    #[error("frame refused ({code:?}): {message}")]
    Invalid {
        /// Code.
        code: RefusalCode,
        /// Detail.
        message: String,
    },
}

/// The header of a frame of `kind` carrying `len` payload bytes (for async transports,
/// which write it themselves; [`write_frame`] uses it too).
pub fn encode_header(kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[..4].copy_from_slice(MAGIC);
    header[4] = PROTOCOL_VERSION;
    header[5] = kind as u8;
    header[6..].copy_from_slice(&(len as u32).to_be_bytes());
    header
}

/// Largest payload sent with its header in one write ([`encode_frame`]); a larger one goes
/// out after its header, not copied (responses may be up to [`MAX_RESPONSE`]).
pub const ONE_WRITE_MAX: usize = 64 * 1024;

/// A whole frame: header and payload in one buffer, so that it goes out in one write and
/// the peer wakes once for it rather than once for the header and again for the payload.
pub fn encode_frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(HEADER_LEN + payload.len());
    frame.extend_from_slice(&encode_header(kind, payload.len()));
    frame.extend_from_slice(payload);
    frame
}

/// What to write for a frame, in order: the whole frame in one buffer up to
/// [`ONE_WRITE_MAX`] (nothing after it), else the header and then the payload as it is.
pub fn frame_writes(kind: Kind, payload: &[u8]) -> (Vec<u8>, &[u8]) {
    if payload.len() <= ONE_WRITE_MAX {
        (encode_frame(kind, payload), &[])
    } else {
        (encode_header(kind, payload.len()).to_vec(), payload)
    }
}

/// Writes one frame ([`frame_writes`]).
pub fn write_frame(w: &mut impl Write, kind: Kind, payload: &[u8]) -> io::Result<()> {
    let (first, rest) = frame_writes(kind, payload);
    w.write_all(&first)?;
    w.write_all(rest)?;
    w.flush()
}

/// Checks a frame header and returns its kind and payload length, refusing a bad magic, a
/// version other than [`PROTOCOL_VERSION`], an unknown kind or a length over `max` (for async
/// transports, which read it themselves; [`read_frame`] uses it too).
pub fn parse_header(header: &[u8; HEADER_LEN], max: usize) -> Result<(Kind, usize), FrameError> {
    let invalid = |code, message: String| FrameError::Invalid { code, message };
    if &header[..4] != MAGIC {
        return Err(invalid(RefusalCode::BadMagic, "bad magic".into()));
    }
    if header[4] != PROTOCOL_VERSION {
        return Err(invalid(
            RefusalCode::UnsupportedVersion,
            format!(
                "protocol version {} not supported (this side speaks {PROTOCOL_VERSION})",
                header[4]
            ),
        ));
    }
    let kind = match header[5] {
        1 => Kind::Request,
        2 => Kind::Response,
        3 => Kind::Refusal,
        k => {
            return Err(invalid(
                RefusalCode::BadKind,
                format!("unknown frame kind {k}"),
            ))
        }
    };
    let len = u32::from_be_bytes(header[6..].try_into().expect("4 bytes")) as usize;
    if len > max {
        return Err(invalid(
            RefusalCode::TooLarge,
            format!("payload of {len} bytes exceeds the {max}-byte limit"),
        ));
    }
    Ok((kind, len))
}

/// Reads one frame, refusing bad headers and payloads over `max` before reading them.
pub fn read_frame(r: &mut impl Read, max: usize) -> Result<(Kind, Vec<u8>), FrameError> {
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => {
                return Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside a frame header",
                )))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (kind, len) = parse_header(&header, max)?;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    Ok((kind, payload))
}

/// Encodes a refusal payload.
pub fn refusal_payload(code: RefusalCode, message: &str) -> Vec<u8> {
    let mut p = vec![code as u8];
    p.extend_from_slice(message.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_limits() {
        let mut buf = Vec::new();
        write_frame(&mut buf, Kind::Request, b"hello").unwrap();
        let (k, p) = read_frame(&mut buf.as_slice(), 16).unwrap();
        assert_eq!((k, p.as_slice()), (Kind::Request, &b"hello"[..]));
        let err = read_frame(&mut buf.as_slice(), 4).unwrap_err();
        assert!(matches!(
            err,
            FrameError::Invalid {
                code: RefusalCode::TooLarge,
                ..
            }
        ));
        let mut bad = buf.clone();
        bad[0] = b'X';
        assert!(matches!(
            read_frame(&mut bad.as_slice(), 16).unwrap_err(),
            FrameError::Invalid {
                code: RefusalCode::BadMagic,
                ..
            }
        ));
        let mut bad = buf.clone();
        bad[4] = 9;
        assert!(matches!(
            read_frame(&mut bad.as_slice(), 16).unwrap_err(),
            FrameError::Invalid {
                code: RefusalCode::UnsupportedVersion,
                ..
            }
        ));
        assert!(matches!(
            read_frame(&mut &b""[..], 16).unwrap_err(),
            FrameError::Closed
        ));
    }

    #[test]
    fn a_frame_is_one_write_up_to_the_limit_and_header_then_payload_beyond() {
        let small = vec![7u8; ONE_WRITE_MAX];
        let (first, rest) = frame_writes(Kind::Response, &small);
        assert_eq!((first.len(), rest.len()), (HEADER_LEN + ONE_WRITE_MAX, 0));
        let large = vec![9u8; ONE_WRITE_MAX + 1];
        let (first, rest) = frame_writes(Kind::Response, &large);
        assert_eq!(first, encode_header(Kind::Response, large.len()));
        assert_eq!(rest, &large[..]);
        for payload in [small, large] {
            let mut buf = Vec::new();
            write_frame(&mut buf, Kind::Response, &payload).unwrap();
            let (k, p) = read_frame(&mut buf.as_slice(), MAX_RESPONSE).unwrap();
            assert_eq!((k, p), (Kind::Response, payload));
        }
    }
}

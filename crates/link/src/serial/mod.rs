//! The separate channel as a serial line (RS-232, USB serial; issue 15): the link's
//! envelopes as messages over a byte stream that may drop or corrupt bytes.
//!
//! * Frames: a body and its CRC-32, COBS-encoded and ended by a zero byte, so a receiver
//!   resynchronises at the next zero after damage; at most [`MAX_CHUNK`] message bytes each.
//! * [`SerialLine`]: stop-and-wait retransmission (each data frame acknowledged, written
//!   again after a timeout, at most [`MAX_TRANSMISSIONS`] times), writes paced at the
//!   configured line rate, each message delivered once ([`LineStats`] counts the repairs).
//! * [`SerialTransport`] / [`serve_serial`]: the external relay and the bridge on a line;
//!   the link's signatures, exactly-once store and age limits apply as on every transport.

mod frame;
mod line;
mod transport;

pub use frame::MAX_CHUNK;
pub use line::{LineStats, SerialLine, MAX_SERIAL_MESSAGE, MAX_TRANSMISSIONS};
pub use transport::{serve_serial, SerialTransport};

/// Fuzzing entry (built only by `cargo fuzz`, which sets `--cfg fuzzing`; `fuzz/`): decodes
/// the bytes between two zeros as a frame, and checks that an accepted frame is encoded
/// back to the same frame.
#[cfg(fuzzing)]
pub fn fuzz_frame(encoded: &[u8]) {
    if let Some(f) = frame::Frame::decode(encoded) {
        let wire = f.encode();
        let (end, body) = wire.split_last().expect("a frame ends with a zero");
        assert_eq!(*end, 0);
        assert_eq!(frame::Frame::decode(body), Some(f));
    }
}

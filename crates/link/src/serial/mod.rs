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

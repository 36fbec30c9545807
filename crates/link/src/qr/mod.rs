//! The separate channel as animated QR codes (patent [0024], claim 13; issue 15): an
//! envelope crosses as a multipart Uniform Resource (Blockchain Commons BCR-2020-005, the
//! format air-gapped wallets use) whose fountain-coded parts survive lost, reordered and
//! repeated frames, each part drawn as one QR code and read back from pixels.
//!
//! * [`FrameSender`]: an envelope's parts, as many as the receiver needs (a fountain: parts
//!   past the first `n` mix fragments, so any `n` or a few more rebuild it).
//! * [`FrameReceiver`]: takes what a camera read, in any order, and gives the envelope back
//!   once complete; a part that names another message, too many parts or a wrong type is
//!   refused by name, and the UR's CRC-32 and then the envelope's signature stand between a
//!   damaged frame and a wrong envelope.
//! * [`draw`] / [`read`]: a part to a QR image and back, through the pixels.
//! * [`damage`]: a channel that drops, shuffles, blurs, rotates and adds noise to frames, for
//!   tests, the demo and the benchmark.

pub mod damage;
mod pixels;
mod ur_parts;

pub use pixels::{draw, read, MODULE_PIXELS};
pub use ur_parts::{FrameReceiver, FrameSender, FRAGMENT_LEN, MAX_PARTS, MAX_QR_ENVELOPE, UR_TYPE};

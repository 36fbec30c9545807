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
//! * [`show_frames`] / [`Capture`]: frames as PNG pages in a screen folder (to loop in a
//!   viewer or print) and a folder of captured images read back; [`QrTransport`] (relay)
//!   and [`QrServer`] (bridge) carry the link over them.
//! * [`damage`]: a channel that drops, shuffles, blurs, rotates and adds noise to frames, for
//!   tests, the demo and the benchmark.

pub mod damage;
mod folder;
mod pixels;
mod transport;
mod ur_parts;

pub use folder::{
    frames_to_show, load_image, png, show_frames, Capture, CaptureStats, MAX_IMAGE_FILE,
};
pub use pixels::{draw, read, MODULE_PIXELS};
pub use transport::{QrDirs, QrServer, QrTransport, REPLY_AGAIN_AFTER, REPLY_SHOWN_FOR};
pub use ur_parts::{
    FrameReceiver, FrameSender, Reassembler, FRAGMENT_LEN, MAX_MESSAGES, MAX_PARTS,
    MAX_QR_ENVELOPE, UR_TYPE,
};

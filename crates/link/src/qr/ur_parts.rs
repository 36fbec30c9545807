//! Envelopes as multipart URs (the `ur` crate: bytewords, CBOR fountain parts, CRC-32).

use crate::error::{FrameFault, LinkError};

/// The UR type of a Custos link envelope: its CBOR is a byte string holding the envelope's
/// encoding (BCR-2020-006 style registry name, private to Custos).
pub const UR_TYPE: &str = "custos-envelope";
/// Bytes of a fountain fragment: a part of about 560 bytewords characters, one QR code of
/// version 12 (level L), so a sign request (1.3 KiB) is 6 fragments and its reply (2 KiB)
/// 9. Measured with `custos bench link`: at 120 bytes the fountain's overhead (it needs a
/// few parts beyond the fragment count) made the reply take 46 frames; at 250, 16.
pub const FRAGMENT_LEN: usize = 250;
/// Largest envelope sent over QR codes (a sign request and its reply are about 1 KiB; an
/// import's sealed seed a few): at [`FRAGMENT_LEN`] it is at most 263 fragments.
pub const MAX_QR_ENVELOPE: usize = 64 * 1024;
/// Most fragments a receiver accepts a message to have; a part claiming more is refused
/// before the fountain decoder sizes anything by it.
pub const MAX_PARTS: usize = MAX_QR_ENVELOPE.div_ceil(FRAGMENT_LEN) + 1;
/// Longest part text read from one code (a QR code holds at most 4 296 characters).
const MAX_PART_TEXT: usize = 4296;

fn fault(what: FrameFault, detail: impl std::fmt::Display) -> LinkError {
    LinkError::Frame {
        what,
        detail: detail.to_string(),
    }
}

/// An envelope's parts, one per frame, without end.
pub struct FrameSender {
    encoder: ur::Encoder<'static>,
}

impl FrameSender {
    /// The parts of `envelope` (its encoding, at most [`MAX_QR_ENVELOPE`] bytes).
    pub fn new(envelope: &[u8]) -> Result<Self, LinkError> {
        if envelope.len() > MAX_QR_ENVELOPE {
            return Err(LinkError::Oversize {
                what: "envelope over QR codes",
                size: envelope.len() as u64,
                limit: MAX_QR_ENVELOPE as u64,
            });
        }
        let cbor = minicbor::to_vec(<&minicbor::bytes::ByteSlice>::from(envelope))
            .map_err(|e| LinkError::Internal(format!("CBOR of an envelope: {e}")))?;
        let encoder = ur::Encoder::new(&cbor, FRAGMENT_LEN, UR_TYPE)
            .map_err(|e| LinkError::Internal(format!("UR encoder: {e}")))?;
        Ok(Self { encoder })
    }

    /// Fragments the message was split into: the fewest frames that can carry it.
    pub fn fragment_count(&self) -> usize {
        self.encoder.fragment_count()
    }

    /// The next part (`ur:custos-envelope/<n>-<count>/<bytewords>`).
    pub fn next_part(&mut self) -> Result<String, LinkError> {
        self.encoder
            .next_part()
            .map_err(|e| LinkError::Internal(format!("UR part: {e}")))
    }
}

/// Collects parts read by a camera, in any order, repeated or not.
#[derive(Default)]
pub struct FrameReceiver {
    decoder: ur::Decoder,
    parts: usize,
}

impl FrameReceiver {
    /// A receiver waiting for its first part.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one part as read from a code. `Ok(Some(envelope))` once the message is whole
    /// (its CRC-32 checked); a part of another message, type or shape is refused and the
    /// parts taken so far kept.
    pub fn receive(&mut self, part: &str) -> Result<Option<Vec<u8>>, LinkError> {
        if part.len() > MAX_PART_TEXT {
            return Err(fault(FrameFault::NotAPart, "longer than a QR code holds"));
        }
        let part = part.to_ascii_lowercase();
        let count = check_header(&part)?;
        // The fountain decoder keeps every mixed part it cannot use yet: a stream of parts
        // that never completes must not grow it without end.
        if self.parts >= max_parts_taken(count) {
            return Err(fault(
                FrameFault::TooManyParts,
                format!(
                    "{} parts taken for a message of {count} fragments",
                    self.parts
                ),
            ));
        }
        self.decoder.receive(&part).map_err(|e| match e {
            ur::ur::Error::UnexpectedType => fault(FrameFault::WrongType, e),
            ur::ur::Error::Fountain(ur::fountain::Error::InconsistentPart) => {
                fault(FrameFault::Inconsistent, e)
            }
            e => fault(FrameFault::NotAPart, e),
        })?;
        self.parts += 1;
        if !self.decoder.complete() {
            return Ok(None);
        }
        let cbor = self
            .decoder
            .message()
            .map_err(|e| fault(FrameFault::Checksum, e))?
            .ok_or_else(|| LinkError::Internal("complete UR without a message".into()))?;
        let bytes: minicbor::bytes::ByteVec =
            minicbor::decode(&cbor).map_err(|e| fault(FrameFault::NotAPart, e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// Parts taken so far.
    pub fn parts_taken(&self) -> usize {
        self.parts
    }
}

/// Most parts a receiver takes for a message of `count` fragments before giving up on it:
/// a camera missing a third of the frames needs about `1.5 count` and a few.
fn max_parts_taken(count: usize) -> usize {
    3 * count + 16
}

/// The part's type and fragment count, checked before the fountain decoder sees it: a
/// count beyond [`MAX_PARTS`] would size its tables.
fn check_header(part: &str) -> Result<usize, LinkError> {
    let mut fields = part.splitn(4, '/');
    let scheme_type = fields.next().unwrap_or_default();
    if scheme_type != format!("ur:{UR_TYPE}") {
        let what = if scheme_type.starts_with("ur:") {
            FrameFault::WrongType
        } else {
            FrameFault::NotAPart
        };
        return Err(fault(what, format!("{scheme_type:?} is not ur:{UR_TYPE}")));
    }
    let indices = fields.next().unwrap_or_default();
    let count = indices
        .split_once('-')
        .and_then(|(_, c)| c.parse::<usize>().ok())
        .ok_or_else(|| fault(FrameFault::NotAPart, "not a multipart UR (<n>-<count>)"))?;
    if count == 0 || count > MAX_PARTS {
        return Err(fault(
            FrameFault::TooManyParts,
            format!("{count} fragments, at most {MAX_PARTS}"),
        ));
    }
    Ok(count)
}

/// Messages a [`Reassembler`] collects at once; a part of one more drops the oldest.
pub const MAX_MESSAGES: usize = 32;
/// Messages a [`Reassembler`] remembers as complete until [`Reassembler::forget_complete`],
/// so their frames still in view are ignored instead of rebuilding them again.
const REMEMBERED: usize = 64;

/// What tells one message's parts from another's: fragment count, length and CRC-32.
type MessageKey = (u32, u32, u32);

/// Collects the parts of several envelopes at once, as a camera watching a screen that
/// shows more than one sees them, and gives each envelope back once.
#[derive(Default)]
pub struct Reassembler {
    open: Vec<(MessageKey, FrameReceiver)>,
    done: std::collections::VecDeque<MessageKey>,
}

impl Reassembler {
    /// A reassembler holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets which messages were complete: the same envelope shown again (a retry, or
    /// the same stored answer to a retried request) must be read again. A reader calls it
    /// between batches of images, so the rest of one showing is ignored but not a later one.
    pub fn forget_complete(&mut self) {
        self.done.clear();
    }

    /// Takes one part as read from a code: `Ok(Some(envelope))` when it completed one, `Ok(None)`
    /// while its message is incomplete or was complete already.
    pub fn receive(&mut self, part: &str) -> Result<Option<Vec<u8>>, LinkError> {
        if part.len() > MAX_PART_TEXT {
            return Err(fault(FrameFault::NotAPart, "longer than a QR code holds"));
        }
        check_header(&part.to_ascii_lowercase())?;
        let key = message_key(part)?;
        if self.done.contains(&key) {
            return Ok(None);
        }
        let at = match self.open.iter().position(|(k, _)| *k == key) {
            Some(at) => at,
            None => {
                if self.open.len() == MAX_MESSAGES {
                    self.open.remove(0);
                }
                self.open.push((key, FrameReceiver::new()));
                self.open.len() - 1
            }
        };
        let result = self.open[at].1.receive(part);
        if let Err(LinkError::Frame {
            what: FrameFault::TooManyParts,
            ..
        }) = result
        {
            // Given up on; a later showing starts afresh.
            self.open.remove(at);
            return result;
        }
        let over = matches!(
            result,
            Ok(Some(_))
                | Err(LinkError::Frame {
                    what: FrameFault::Checksum,
                    ..
                })
        );
        if over {
            // Complete, or its parts rebuilt a wrong message: either way it is over.
            self.open.remove(at);
            if self.done.len() == REMEMBERED {
                self.done.pop_front();
            }
            self.done.push_back(key);
        }
        result
    }
}

/// The message a part belongs to, read from the part's CBOR (with `minicbor`): the array
/// `[sequence, count, length, checksum, data]` of BCR-2020-005.
fn message_key(part: &str) -> Result<MessageKey, LinkError> {
    let (_, cbor) = ur::decode(part).map_err(|e| fault(FrameFault::NotAPart, e))?;
    let mut d = minicbor::Decoder::new(&cbor);
    let not_a_part = |e: minicbor::decode::Error| fault(FrameFault::NotAPart, e);
    if d.array().map_err(not_a_part)? != Some(5) {
        return Err(fault(
            FrameFault::NotAPart,
            "a fountain part is an array of 5",
        ));
    }
    d.u32().map_err(not_a_part)?;
    Ok((
        d.u32().map_err(not_a_part)?,
        d.u32().map_err(not_a_part)?,
        d.u32().map_err(not_a_part)?,
    ))
}

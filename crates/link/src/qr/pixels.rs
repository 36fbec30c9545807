//! A part as one QR code and back: drawn with `qrcode`, read from pixels with `rqrr`.

use image::{GrayImage, Luma};
use qrcode::{EcLevel, QrCode};

use crate::error::{FrameFault, LinkError};

/// Pixels per QR module when drawn: big enough for a camera across a desk, and for a
/// small rotation, blur and noise to leave each module readable (at 4 pixels a blurred,
/// tilted frame mostly did not read).
pub const MODULE_PIXELS: u32 = 8;

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
    // As a scanner does, a second look through a smoothing filter when the raw frame does
    // not read: a camera's noise is what it mostly removes.
    read_once(image).or_else(|e| read_once(&image::imageops::blur(image, 1.0)).map_err(|_| e))
}

fn read_once(image: &GrayImage) -> Result<Vec<String>, LinkError> {
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

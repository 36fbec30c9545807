//! Frames as files, for operators: the frames a screen shows, as PNG pages in a folder (to
//! loop in a viewer or print), and a folder of captured images (a camera's or a scanner's)
//! read back into envelopes.
//!
//! A screen folder holds one sub-folder per envelope shown, `frame-0001.png` onwards,
//! renamed into place once complete; names starting with `.` are being written.

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::GrayImage;

use super::{draw, read, FrameSender, Reassembler};
use crate::error::LinkError;
use crate::spool::write_atomic;

/// Largest image file read: a phone photo is a few MiB.
pub const MAX_IMAGE_FILE: u64 = 16 * 1024 * 1024;
/// Largest side of an image read, pixels (decoding sizes its buffer by it): a 12-megapixel
/// phone photo is 4 032 wide.
const MAX_IMAGE_SIDE: u32 = 4096;
/// Most memory decoding one image may take: such a photo in RGBA is 48 MiB.
const MAX_IMAGE_ALLOC: u64 = 64 * 1024 * 1024;
/// Captured images read per pass; the rest wait for the next.
const MAX_IMAGES_PER_PASS: usize = 256;

/// Frames shown for an envelope of `fragments` fragments: three times as many and four
/// more, so that a camera missing a third of them and failing to read some still has
/// enough (the fountain needs a few parts beyond `n`; at twice as many, a 5-fragment
/// envelope filmed across a desk fell short).
pub fn frames_to_show(fragments: usize) -> usize {
    3 * fragments + 4
}

/// Draws `envelope`'s frames into `screen/name/` and returns how many; the folder appears
/// whole (written as `.name`, then renamed).
pub fn show_frames(screen: &Path, name: &str, envelope: &[u8]) -> Result<usize, LinkError> {
    let mut sender = FrameSender::new(envelope)?;
    let count = frames_to_show(sender.fragment_count());
    let partial = screen.join(format!(".{name}"));
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    for i in 1..=count {
        let frame = draw(&sender.next_part()?)?;
        write_atomic(&partial, &format!("frame-{i:04}.png"), &png(&frame)?)?;
    }
    fs::rename(&partial, screen.join(name))?;
    Ok(count)
}

/// `frame` as PNG bytes.
pub fn png(frame: &GrayImage) -> Result<Vec<u8>, LinkError> {
    let mut out = Cursor::new(Vec::new());
    frame
        .write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| LinkError::Internal(format!("PNG of a frame: {e}")))?;
    Ok(out.into_inner())
}

/// The bytes of the regular file at `path`, at most [`MAX_IMAGE_FILE`]: opened without
/// following a link or waiting on a FIFO, and read no further than the limit whatever the
/// file grows to.
fn read_image_file(path: &Path) -> Result<Vec<u8>, LinkError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags((nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK).bits())
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(LinkError::Malformed(format!(
            "{}: not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_IMAGE_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_IMAGE_FILE {
        return Err(LinkError::Oversize {
            what: "captured image",
            size: bytes.len() as u64,
            limit: MAX_IMAGE_FILE,
        });
    }
    Ok(bytes)
}

/// The image in the file at `path`, in grey, refusing a file or an image too large before
/// decoding it.
pub fn load_image(path: &Path) -> Result<GrayImage, LinkError> {
    decode_image(path, read_image_file(path)?)
}

fn decode_image(path: &Path, bytes: Vec<u8>) -> Result<GrayImage, LinkError> {
    let mut reader = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(LinkError::Io)?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_IMAGE_SIDE);
    limits.max_image_height = Some(MAX_IMAGE_SIDE);
    limits.max_alloc = Some(MAX_IMAGE_ALLOC);
    reader.limits(limits);
    let image = reader
        .decode()
        .map_err(|e| LinkError::Malformed(format!("{}: not an image: {e}", path.display())))?;
    Ok(image.to_luma8())
}

/// The files of `dir` not being written (no leading `.`), sorted by name.
pub(crate) fn entries(dir: &Path) -> Result<Vec<PathBuf>, LinkError> {
    let mut names: Vec<PathBuf> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .collect();
    names.sort();
    Ok(names)
}

/// What a [`Capture`] read so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Image files taken from the folder.
    pub images: u64,
    /// Images in which a code was read.
    pub decoded: u64,
    /// Images without a readable code, or not images at all.
    pub unreadable: u64,
    /// Codes read but refused (not a part of a Custos envelope).
    pub refused: u64,
    /// Envelopes rebuilt.
    pub envelopes: u64,
}

/// A folder of captured images, read and emptied pass by pass.
pub struct Capture {
    dir: PathBuf,
    parts: Reassembler,
    stats: CaptureStats,
}

impl Capture {
    /// Reads images from `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Result<Self, LinkError> {
        fs::create_dir_all(&dir)?;
        Ok(Self {
            dir,
            parts: Reassembler::new(),
            stats: CaptureStats::default(),
        })
    }

    /// Reads the images there now (removing each once read) and returns the envelopes they
    /// completed. An image without a code or with a refused code is counted and dropped:
    /// a camera sees many such frames.
    pub fn pass(&mut self) -> Result<Vec<Vec<u8>>, LinkError> {
        // One pass takes what a camera wrote of a showing; an envelope complete in an
        // earlier pass and seen again is a new showing (a retry) and is read again.
        self.parts.forget_complete();
        let mut envelopes = Vec::new();
        let files = entries(&self.dir)?
            .into_iter()
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()));
        for path in files.take(MAX_IMAGES_PER_PASS) {
            self.stats.images += 1;
            // Taken out of the folder before it is decoded: whatever decoding does with
            // it, it is never read twice.
            let bytes = read_image_file(&path);
            fs::remove_file(&path)?;
            let texts = bytes
                .and_then(|b| decode_image(&path, b))
                .and_then(|image| read(&image));
            let Ok(texts) = texts else {
                self.stats.unreadable += 1;
                continue;
            };
            self.stats.decoded += 1;
            for text in texts {
                match self.parts.receive(&text) {
                    Ok(Some(envelope)) => {
                        self.stats.envelopes += 1;
                        envelopes.push(envelope);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.stats.refused += 1;
                        tracing::warn!(image = %path.display(), error = %e, "QR link: code refused");
                    }
                }
            }
        }
        Ok(envelopes)
    }

    /// What was read so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }
}

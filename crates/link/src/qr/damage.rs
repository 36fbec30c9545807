//! A camera's view of a screen showing frames: some frames missed, the rest caught out of
//! order, each slightly rotated, blurred and noisy. Seeded, so a test or a benchmark run
//! repeats exactly. Used by the tests, the demo and `custos bench link`.

use image::{GrayImage, Luma};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{draw, read, FrameReceiver, FrameSender};
use crate::error::LinkError;

/// How a channel damages frames.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damage {
    /// Share of frames never caught (0.3: 30 %).
    pub drop: f64,
    /// Most a pixel's grey level moves either way (uniform noise).
    pub noise: u8,
    /// Rotation of every frame, degrees.
    pub rotate_degrees: f32,
    /// A 3×3 box blur of every frame.
    pub blur: bool,
    /// Seed of the channel's choices.
    pub seed: u64,
}

impl Damage {
    /// No damage at all.
    pub fn none() -> Self {
        Damage {
            drop: 0.0,
            noise: 0,
            rotate_degrees: 0.0,
            blur: false,
            seed: 0,
        }
    }

    /// A camera across a desk from the screen, the test channel: 30 % of frames
    /// missed, noise of ±40 grey levels, a blur and a 3° tilt.
    pub fn across_a_desk(seed: u64) -> Self {
        Damage {
            drop: 0.3,
            noise: 40,
            rotate_degrees: 3.0,
            blur: true,
            seed,
        }
    }
}

/// A seeded channel applying [`Damage`] to the frames it carries.
pub struct DamagedChannel {
    damage: Damage,
    rng: ChaCha8Rng,
}

impl DamagedChannel {
    /// A channel damaging frames as `damage` says.
    pub fn new(damage: Damage) -> Self {
        Self {
            damage,
            rng: ChaCha8Rng::seed_from_u64(damage.seed),
        }
    }

    /// The frames a camera catches of `shown`, with their place in it: each missed with the
    /// drop rate, the rest in shuffled order, each rotated, blurred and noisy.
    pub fn carry(&mut self, shown: Vec<GrayImage>) -> Vec<(usize, GrayImage)> {
        let mut caught: Vec<(usize, GrayImage)> = shown
            .into_iter()
            .enumerate()
            .filter(|_| !self.rng.gen_bool(self.damage.drop.clamp(0.0, 1.0)))
            .collect();
        caught.shuffle(&mut self.rng);
        caught
            .into_iter()
            .map(|(i, f)| (i, self.view(&f)))
            .collect()
    }

    fn view(&mut self, frame: &GrayImage) -> GrayImage {
        let mut out = rotate(frame, self.damage.rotate_degrees);
        if self.damage.blur {
            out = box_blur(&out);
        }
        let n = i16::from(self.damage.noise);
        if n > 0 {
            for p in out.pixels_mut() {
                let v = i16::from(p.0[0]) + self.rng.gen_range(-n..=n);
                p.0[0] = v.clamp(0, 255) as u8;
            }
        }
        out
    }
}

/// `frame` rotated by `degrees` about its centre (bilinear, white outside).
fn rotate(frame: &GrayImage, degrees: f32) -> GrayImage {
    if degrees == 0.0 {
        return frame.clone();
    }
    let (w, h) = frame.dimensions();
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    let (sin, cos) = degrees.to_radians().sin_cos();
    let sample = |x: f32, y: f32| -> f32 {
        if x < 0.0 || y < 0.0 || x >= (w - 1) as f32 || y >= (h - 1) as f32 {
            return 255.0;
        }
        let (x0, y0) = (x.floor() as u32, y.floor() as u32);
        let (fx, fy) = (x - x0 as f32, y - y0 as f32);
        let p = |x, y| f32::from(frame.get_pixel(x, y).0[0]);
        let top = p(x0, y0) * (1.0 - fx) + p(x0 + 1, y0) * fx;
        let bottom = p(x0, y0 + 1) * (1.0 - fx) + p(x0 + 1, y0 + 1) * fx;
        top * (1.0 - fy) + bottom * fy
    };
    GrayImage::from_fn(w, h, |x, y| {
        // The source pixel that lands on (x, y).
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let sx = cos * dx + sin * dy + cx;
        let sy = -sin * dx + cos * dy + cy;
        Luma([sample(sx, sy).round() as u8])
    })
}

fn box_blur(frame: &GrayImage) -> GrayImage {
    let (w, h) = frame.dimensions();
    GrayImage::from_fn(w, h, |x, y| {
        let mut sum = 0u32;
        let mut n = 0u32;
        for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
            for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                sum += u32::from(frame.get_pixel(xx, yy).0[0]);
                n += 1;
            }
        }
        Luma([(sum / n) as u8])
    })
}

/// What carrying one envelope took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    /// Frames shown on the screen until the receiver had the envelope.
    pub shown: usize,
    /// Frames the camera caught and read.
    pub read: usize,
    /// The fewest frames that can carry it (its fragment count).
    pub minimum: usize,
}

/// Frames shown between two looks of the camera: the ones caught among them arrive in any
/// order.
pub const SHUFFLE_WINDOW: usize = 8;

/// Shows `envelope`'s parts as frames through `channel`, [`SHUFFLE_WINDOW`] at a time,
/// until the receiver rebuilt it or `max_frames` were shown ([`LinkError::Timeout`]);
/// `shown` counts the frames up to the last one the receiver needed. A frame the camera
/// cannot read is skipped, as a scanner would; a part refused for what it says ends the
/// transfer with that refusal.
pub fn carry_envelope(
    envelope: &[u8],
    channel: &mut DamagedChannel,
    max_frames: usize,
) -> Result<(Vec<u8>, Carried), LinkError> {
    let mut sender = FrameSender::new(envelope)?;
    let mut receiver = FrameReceiver::new();
    let minimum = sender.fragment_count();
    let (mut shown, mut read_count) = (0, 0);
    while shown < max_frames {
        let batch = SHUFFLE_WINDOW.min(max_frames - shown);
        let frames = (0..batch)
            .map(|_| sender.next_part().and_then(|p| draw(&p)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut last_needed = 0;
        for (at, frame) in channel.carry(frames) {
            let Ok(texts) = read(&frame) else {
                continue;
            };
            read_count += 1;
            last_needed = last_needed.max(at + 1);
            for text in texts {
                if let Some(envelope) = receiver.receive(&text)? {
                    let carried = Carried {
                        shown: shown + last_needed,
                        read: read_count,
                        minimum,
                    };
                    return Ok((envelope, carried));
                }
            }
        }
        shown += batch;
    }
    Err(LinkError::Timeout)
}

/// What a [`DamagedCamera`] filmed of one envelope's frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filmed {
    /// The screen folder the frames came from.
    pub folder: String,
    /// Frames on the screen.
    pub shown: usize,
    /// Frames the camera caught (the rest it missed) and wrote as images.
    pub caught: usize,
    /// Of those, the frames whose code reads from the damaged pixels ([`read`]).
    pub decoded: usize,
}

/// A camera pointed at a screen folder ([`super::show_frames`]): each envelope's frames,
/// once, through a [`DamagedChannel`], written as PNG images into a captured-images
/// folder. The demo's physical channel between a relay and its bridge.
pub struct DamagedCamera {
    channel: DamagedChannel,
    seen: std::collections::HashSet<String>,
}

impl DamagedCamera {
    /// A camera damaging frames as `damage` says.
    pub fn new(damage: Damage) -> Self {
        Self {
            channel: DamagedChannel::new(damage),
            seen: std::collections::HashSet::new(),
        }
    }

    /// Films every envelope newly on `screen` into `captured` and says what it caught.
    pub fn film(
        &mut self,
        screen: &std::path::Path,
        captured: &std::path::Path,
    ) -> Result<Vec<Filmed>, LinkError> {
        let mut filmed = Vec::new();
        for folder in super::folder::entries(screen)? {
            let name = folder
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            if !folder.is_dir() || !self.seen.insert(name.clone()) {
                continue;
            }
            let frames = super::folder::entries(&folder)?
                .iter()
                .map(|f| super::folder::load_image(f))
                .collect::<Result<Vec<_>, _>>()?;
            let shown = frames.len();
            let caught = self.channel.carry(frames);
            let decoded = caught.iter().filter(|(_, f)| read(f).is_ok()).count();
            for (k, (_, image)) in caught.iter().enumerate() {
                let png = super::folder::png(image)?;
                crate::spool::write_atomic(captured, &format!("{name}-{k:04}.png"), &png)?;
            }
            filmed.push(Filmed {
                folder: name,
                shown,
                caught: caught.len(),
                decoded,
            });
        }
        Ok(filmed)
    }
}

//! The QR channel's part decoder (BC-UR multipart, fountain codes, CBOR, CRC-32) as the
//! capture folder uses it: the text of each code a camera read, one per line, into one
//! reassembler of several messages at once.
#![no_main]

use custos_link::qr::Reassembler;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut reassembler = Reassembler::new();
    for (i, part) in text.lines().enumerate() {
        if let Ok(Some(envelope)) = reassembler.receive(part) {
            assert!(envelope.len() <= custos_link::MAX_ENVELOPE);
        }
        if i % 16 == 15 {
            reassembler.forget_complete();
        }
    }
});

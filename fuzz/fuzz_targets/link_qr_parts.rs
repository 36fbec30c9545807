//! The QR channel's part decoder (BC-UR multipart, fountain codes, CBOR, CRC-32): the text
//! of each code a camera read, one per line, into one receiver.
#![no_main]

use custos_link::qr::FrameReceiver;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut receiver = FrameReceiver::new();
    for part in text.lines() {
        if let Ok(Some(envelope)) = receiver.receive(part) {
            assert!(envelope.len() <= custos_link::MAX_ENVELOPE);
            receiver = FrameReceiver::new();
        }
    }
});

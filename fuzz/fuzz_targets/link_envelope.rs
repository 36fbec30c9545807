//! The link envelope decoder (every transport: TCP, serial, QR, spool files): limits,
//! version and shape; an accepted envelope encodes back to one that decodes the same.
#![no_main]

use custos_link::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        if let Ok(bytes) = envelope.encode() {
            assert_eq!(Envelope::decode(&bytes).ok(), Some(envelope));
        }
    }
});

//! The serial line's frame decoder (COBS, CRC-32, kind and chunk checks) on the bytes
//! between two zeros, as a damaged or hostile line delivers them.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for encoded in data.split(|&b| b == 0) {
        custos_link::serial::fuzz_frame(encoded);
    }
});

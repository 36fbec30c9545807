//! The TEE socket's frame reader (host ↔ TEE core): header checks, the size limit before
//! any allocation, and a frame read back as it was written.
#![no_main]

use custos_wire::frame::{read_frame, write_frame, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    // Every frame in the input, until the first refusal.
    while let Ok((kind, payload)) = read_frame(&mut input, MAX_REQUEST) {
        let mut again = Vec::new();
        write_frame(&mut again, kind, &payload).expect("writes to memory");
        let (kind2, payload2) = read_frame(&mut again.as_slice(), MAX_REQUEST).expect("own frame");
        assert_eq!((kind2 as u8, payload2), (kind as u8, payload));
    }
});

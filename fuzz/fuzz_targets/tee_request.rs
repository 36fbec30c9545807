//! The TEE core's request decoder: whatever it accepts encodes back to a request that
//! decodes to the same value.
#![no_main]

use custos_wire::protocol::{decode_request, encode_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let bytes = encode_request(&request);
        assert_eq!(decode_request(&bytes).as_ref(), Ok(&request));
    }
});

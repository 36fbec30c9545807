//! The decoder of a TEE's signed answer, as the bridge, the relay and the cloud server
//! read it: the signed envelope, then the outcome inside.
#![no_main]

use custos_wire::client::decode_outcome;
use custos_wire::protocol::Outcome;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_outcome(data);
    // The outcome body alone (what a signed envelope carries).
    if let Ok(outcome) = postcard::from_bytes::<Outcome>(data) {
        let bytes = postcard::to_allocvec(&outcome).expect("outcomes encode");
        assert_eq!(postcard::from_bytes::<Outcome>(&bytes).ok(), Some(outcome));
    }
});

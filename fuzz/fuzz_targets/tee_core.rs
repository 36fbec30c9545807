//! A TEE core as the node server drives it: any bytes as one request frame payload, handled
//! by a freshly opened core on an in-memory store (not provisioned, so most requests end in
//! a refusal, which must be an encoded answer, never a panic).
#![no_main]

use std::collections::BTreeMap;

use custos_tee_core::platform::{Platform, PlatformError, RecordId};
use custos_tee_core::TeeCore;
use custos_wire::protocol::{Attestation, SignedResponse};
use libfuzzer_sys::fuzz_target;
use zeroize::Zeroizing;

/// Records in memory; "random" bytes from a counter, so that a crash replays.
#[derive(Default)]
struct Memory {
    staged: BTreeMap<String, Vec<u8>>,
    counter: u64,
    next: u8,
}

impl Platform for Memory {
    fn random(&mut self, buf: &mut [u8]) -> Result<(), PlatformError> {
        for b in buf {
            self.next = self.next.wrapping_mul(31).wrapping_add(7);
            *b = self.next;
        }
        Ok(())
    }
    fn now_unix(&self) -> u64 {
        1_900_000_000
    }
    fn seal(&mut self, id: &RecordId, plaintext: &[u8]) -> Result<(), PlatformError> {
        self.staged.insert(id.as_str().into(), plaintext.to_vec());
        Ok(())
    }
    fn commit(&mut self) -> Result<(), PlatformError> {
        Ok(())
    }
    fn unseal(&mut self, id: &RecordId) -> Result<Option<Zeroizing<Vec<u8>>>, PlatformError> {
        Ok(self.staged.get(id.as_str()).cloned().map(Zeroizing::new))
    }
    fn list(&mut self, prefix: &str) -> Result<Vec<RecordId>, PlatformError> {
        self.staged
            .keys()
            .filter(|k| k.starts_with(prefix))
            .map(|k| RecordId::new(k.clone()))
            .collect()
    }
    fn remove(&mut self, id: &RecordId) -> Result<(), PlatformError> {
        self.staged.remove(id.as_str());
        Ok(())
    }
    fn attest(&mut self, _: &[u8]) -> Result<Attestation, PlatformError> {
        Err(PlatformError::Unsupported("attestation"))
    }
    fn counter_increment(&mut self) -> Result<u64, PlatformError> {
        self.counter += 1;
        Ok(self.counter)
    }
}

fuzz_target!(|data: &[u8]| {
    let mut core = TeeCore::open(Memory::default(), "fuzz").expect("an empty store opens");
    let answer = core.handle_bytes(data);
    // Every input, however malformed, gets a signed answer the node server can decode.
    postcard::from_bytes::<SignedResponse>(&answer).expect("the answer decodes");
});

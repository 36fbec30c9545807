//! The link's TCP framing (length-prefixed frames) read from a hostile peer's bytes.
#![no_main]

use custos_link::tcp::read_frame;
use custos_link::MAX_ENVELOPE;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    runtime().block_on(async {
        let mut input = data;
        // Bounded by the input: each frame read consumes at least its header.
        while let Ok(Some(frame)) = read_frame(&mut input, MAX_ENVELOPE).await {
            assert!(frame.len() <= MAX_ENVELOPE);
        }
    });
});

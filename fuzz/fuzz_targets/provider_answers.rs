//! Any bytes as a provider's answer, through every decoder the HTTP client applies to one:
//! each returns Ok or a decode error, never panics.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    let _ = snapshot_scheduler::client::decode_every_answer(body);
});

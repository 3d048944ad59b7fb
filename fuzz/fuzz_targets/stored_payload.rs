//! Fuzzes the stored-payload decoders (`payload::decode_event`, `decode_history`,
//! `decode_published`): whatever bytes sit in Redis (another version, corruption, a hostile
//! writer), decoding returns an error instead of panicking or allocating without bound.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatfleet::payload::decode_event(data);
    let _ = chatfleet::payload::decode_history(data);
    let _ = chatfleet::payload::decode_published(data);
});

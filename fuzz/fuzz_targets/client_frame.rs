//! Fuzzes the client-frame decoder (`protocol::decode_client`): any text a client can send in a
//! WebSocket text frame must decode or fail with an error, never panic or hang. Frames that do
//! decode must survive a round trip through the encoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The gateway only decodes valid UTF-8 (tungstenite checks it); other bytes are refused before.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(msg) = chatfleet::protocol::decode_client(text) {
        let again = chatfleet::protocol::decode_client(&chatfleet::protocol::encode(&msg)).expect("re-decodes");
        assert_eq!(again, msg);
    }
});

//! Fuzzes the interpretation of client text frames (SPEC §5, "Client → server").
#![no_main]

use libfuzzer_sys::fuzz_target;
use wschat::protocol::{parse_client_frame, ClientFrame};

fuzz_target!(|data: &[u8]| {
    // The server only ever sees valid UTF-8 here; tungstenite rejects the rest with 1007.
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_client_frame(text) {
        ClientFrame::Say(said) => {
            // Anything that is not a JSON object with a string `type` is posted verbatim.
            if !text.trim_start().starts_with('{') {
                assert_eq!(said, text);
            }
        }
        ClientFrame::BadRequest(reason) => assert!(!reason.is_empty()),
    }
});

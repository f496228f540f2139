//! Any text handed to the manifest loader (orchctl apply -f, validate):
//! decoding, defaulting and validation must answer with objects or errors,
//! never panic, hang or blow up.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(documents) = orch_core::manifest::load_str(text, "fuzz") {
            for document in documents {
                // What the API stores and sends back must serialize.
                let _ = document.object.to_json();
            }
        }
    }
});

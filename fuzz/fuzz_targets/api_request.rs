//! Any bytes sent to the API as a create/update request: the protobuf
//! envelope, then the object inside it decoded, defaulted and validated as
//! the API server's admission does. Must never panic.
#![no_main]

use prost::Message as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(request) = orch_core::api::proto::ObjectRequest::decode(data) else {
        return;
    };
    let Some(kind) = orch_core::api::kind_of_resource(&request.resource) else {
        return;
    };
    let Ok(text) = std::str::from_utf8(&request.object) else {
        return;
    };
    if let Ok(documents) = orch_core::manifest::load_str(text, "request") {
        for document in documents {
            let _ = document.object.kind() == kind;
            let _ = document.object.to_json();
        }
    }
});

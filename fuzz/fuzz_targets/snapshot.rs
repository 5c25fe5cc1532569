//! The snapshot loader: JSON from a file or the control plane, parsed and compiled for a
//! pod. No panic, whatever the document.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::policy::snapshot::{Compiled, Pod};
use portcullis_wire::Snapshot;

fuzz_target!(|data: &[u8]| {
    let Ok(snapshot) = serde_json::from_slice::<Snapshot>(data) else {
        return;
    };
    let pod = Pod {
        namespace: "shop".into(),
        labels: [("app".to_string(), "api".to_string())].into(),
    };
    let _ = Compiled::build(&snapshot, &pod, None, 16);
});

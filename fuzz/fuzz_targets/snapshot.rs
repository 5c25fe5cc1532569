//! The snapshot loader as the sidecar runs it on what the control plane (or a file) sends:
//! the document parsed as it streams (users and keys straight into their compact forms,
//! through reused buffers), then compiled for a pod and installed. No panic, whatever the
//! document; a document the wire type reads is read by the streaming loader too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_proxy::policy::received::Received;
use portcullis_proxy::policy::snapshot::{Current, Pod};
use portcullis_wire::Snapshot;

fuzz_target!(|data: &[u8]| {
    let streamed = serde_json::from_reader::<_, Received>(data);
    if let Ok(whole) = serde_json::from_slice::<Snapshot>(data) {
        // The streaming loader accepts what the reference type accepts, but for the one
        // member only it reads (`api_key_count`, which must be a count).
        let Ok(received) = streamed else {
            assert!(data.windows(13).any(|w| w == b"api_key_count"), "refused: {streamed:?}");
            return;
        };
        assert_eq!(received.snapshot.revision, whole.revision);
        assert!(received.keys.len() <= whole.api_keys.len());
        assert!(received.users.len() == whole.users.len());
    }
    let Ok(received) = serde_json::from_reader::<_, Received>(data) else {
        return;
    };
    let pod = Pod {
        namespace: "shop".into(),
        labels: [("app".to_string(), "api".to_string())].into(),
    };
    let _ = Current::default().install_received(received, &pod, 16);
});

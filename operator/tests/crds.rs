//! `crds/` must be exactly what the Rust types generate: editing a type without
//! running `cargo run -p portcullis-operator --bin crdgen` fails here.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

#[test]
fn crds_directory_matches_the_types() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let expected = portcullis_operator::crd::rendered().expect("render CRDs");
    assert_eq!(expected.len(), 7);
    let mut stale = Vec::new();
    for (file, yaml) in &expected {
        if std::fs::read_to_string(dir.join(file)).ok().as_deref() != Some(yaml.as_str()) {
            stale.push(file.clone());
        }
    }
    let on_disk = std::fs::read_dir(&dir).expect("crds/ exists").count();
    assert!(
        stale.is_empty() && on_disk == expected.len(),
        "crds/ is out of date ({stale:?}, {on_disk} files): run `cargo run -p portcullis-operator --bin crdgen`"
    );
}

//! `TEST_POSTGRES_URL` → cfg `portcullis_test_postgres`, so that the PostgreSQL runs
//! show as ignored (not silently passed) when it is unset, as in the operator's suite.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(portcullis_test_postgres)");
    println!("cargo:rerun-if-env-changed=TEST_POSTGRES_URL");
    if std::env::var("TEST_POSTGRES_URL").is_ok_and(|v| !v.is_empty()) {
        println!("cargo:rustc-cfg=portcullis_test_postgres");
    }
}

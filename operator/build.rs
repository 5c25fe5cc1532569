//! Turns the test database variables into cfg flags, so that the PostgreSQL and MariaDB
//! runs of the store suite show up as "ignored" (not silently passed) when the
//! variables are unset, and run (and fail if unreachable) when they are set.

fn main() {
    println!("cargo:rustc-check-cfg=cfg(portcullis_test_postgres)");
    println!("cargo:rustc-check-cfg=cfg(portcullis_test_mysql)");
    for (var, cfg) in [
        ("TEST_POSTGRES_URL", "portcullis_test_postgres"),
        ("TEST_MYSQL_URL", "portcullis_test_mysql"),
    ] {
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

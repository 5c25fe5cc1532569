//! Turns the test database variables into cfg flags, so that the PostgreSQL, MariaDB
//! and Galera runs of the store suite (and the fault tests on private servers) show up
//! as "ignored" (not silently passed) when the variables are unset, and run (and fail
//! if unreachable) when they are set. `TEST_TLS_POSTGRES_BIN` (PostgreSQL's bin
//! directory) runs the database TLS test, which starts a private server of its own.

fn main() {
    let flags = [
        ("TEST_POSTGRES_URL", "portcullis_test_postgres"),
        ("TEST_MYSQL_URL", "portcullis_test_mysql"),
        ("TEST_GALERA_URLS", "portcullis_test_galera"),
        ("TEST_FAULT_POSTGRES_URL", "portcullis_test_fault_postgres"),
        ("TEST_FAULT_MYSQL_URL", "portcullis_test_fault_mysql"),
        ("TEST_TLS_POSTGRES_BIN", "portcullis_test_tls_postgres"),
    ];
    for (_, cfg) in flags {
        println!("cargo:rustc-check-cfg=cfg({cfg})");
    }
    for (var, cfg) in flags {
        println!("cargo:rerun-if-env-changed={var}");
        if std::env::var(var).is_ok_and(|v| !v.is_empty()) {
            println!("cargo:rustc-cfg={cfg}");
        }
    }
}

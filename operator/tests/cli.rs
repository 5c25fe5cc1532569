//! The operator binary's start-up: bad database configuration ends with one clear line
//! and a non-zero exit, never a panic; good configuration migrates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

use std::process::{Command, Output};

fn operator(env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis-operator"));
    cmd.arg("migrate");
    for var in [
        "DATABASE_URL",
        "DB_TYPE",
        "DB_HOST",
        "DB_PORT",
        "DB_NAME",
        "DB_USER",
        "DB_PASS",
        "DB_POOL_SIZE",
        "RUST_LOG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("RUST_LOG", "warn").envs(env.iter().copied());
    cmd.output().expect("run portcullis-operator")
}

/// Asserts a failed start with exit `code` whose last stderr line is one `error:` line
/// containing `needle`.
fn assert_one_line_error(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "exactly one error line in: {stderr}");
    assert!(errors[0].contains(needle), "{:?} lacks {needle:?}", errors[0]);
    assert_eq!(stderr.lines().last(), Some(errors[0]), "the error is the last word");
}

#[test]
fn unknown_db_type_is_one_line_and_exit_2() {
    let out = operator(&[("DB_TYPE", "oracle")]);
    assert_one_line_error(&out, 2, "unknown DB_TYPE \"oracle\"");
}

#[test]
fn malformed_url_is_one_line_and_exit_2() {
    assert_one_line_error(
        &operator(&[("DATABASE_URL", "postgres//oops")]),
        2,
        "malformed DATABASE_URL",
    );
    assert_one_line_error(
        &operator(&[("DATABASE_URL", "redis://localhost/0")]),
        2,
        "unsupported scheme",
    );
}

#[test]
fn no_configuration_is_refused_rather_than_guessed() {
    assert_one_line_error(&operator(&[]), 2, "no database configured");
}

#[test]
fn unreachable_database_is_waited_for_then_reported() {
    // Port 9 (discard) on loopback is closed here: connection refused at once.
    let out = operator(&[
        ("DATABASE_URL", "postgres://portcullis:s3cret@127.0.0.1:9/portcullis"),
        ("DB_WAIT_SECONDS", "1"),
    ]);
    assert_one_line_error(&out, 1, "still unreachable");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("waiting for the database"),
        "says what it waits for: {stderr}"
    );
    assert!(!stderr.contains("s3cret"), "password never printed: {stderr}");
}

#[test]
fn unopenable_sqlite_file_is_one_line() {
    let out = operator(&[("DATABASE_URL", "sqlite:///nonexistent-dir/portcullis.db")]);
    assert_one_line_error(&out, 1, "unable to open database file");
}

#[test]
fn sqlite_migrates_and_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/p.db", dir.path().display());
    for _ in 0..2 {
        let out = operator(&[("DATABASE_URL", &url)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains("up to date at revision 0"));
    }
}

#[cfg_attr(not(portcullis_test_mysql), ignore = "set TEST_MYSQL_URL to run on MariaDB/MySQL")]
#[test]
fn wrong_mysql_password_is_one_line() {
    let mut url = url::Url::parse(&std::env::var("TEST_MYSQL_URL").unwrap()).unwrap();
    url.set_password(Some("definitely-wrong")).unwrap();
    let out = operator(&[("DATABASE_URL", url.as_str())]);
    assert_one_line_error(&out, 1, "Access denied");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("definitely-wrong"),
        "password never printed"
    );
}

#[cfg_attr(not(portcullis_test_postgres), ignore = "set TEST_POSTGRES_URL to run on PostgreSQL")]
#[test]
fn unknown_postgres_role_and_database_are_one_line() {
    let base = url::Url::parse(&std::env::var("TEST_POSTGRES_URL").unwrap()).unwrap();
    let mut bad_user = base.clone();
    bad_user.set_username("no_such_role").unwrap();
    assert_one_line_error(&operator(&[("DATABASE_URL", bad_user.as_str())]), 1, "no_such_role");
    let mut bad_db = base.clone();
    bad_db.set_path("no_such_database");
    assert_one_line_error(&operator(&[("DATABASE_URL", bad_db.as_str())]), 1, "does not exist");
}

#[test]
fn db_parts_are_used_when_there_is_no_url() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("parts.db");
    let out = operator(&[("DB_TYPE", "sqlite"), ("DB_NAME", path.to_str().unwrap())]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(path.exists());
}

fn local_once(manifests: &std::path::Path, state: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portcullis-operator"))
        .args(["local", "--once", "--manifests"])
        .arg(manifests)
        .arg("--state-dir")
        .arg(state)
        .env_remove("DATABASE_URL")
        .env_remove("DB_TYPE")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run portcullis-operator local")
}

#[test]
fn local_mode_applies_the_examples_and_keeps_keys_across_restarts() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let state = tempfile::tempdir().unwrap();
    let out = local_once(&examples, state.path());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for object in [
        "auditor",
        "alice",
        "bob",
        "platform",
        "shop/edge-syslog",
        "shop/bob-cli",
        "shop/sample-api",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(object))
            .unwrap_or_else(|| panic!("{object} in {stdout}"));
        assert!(line.contains(" True ") && line.contains("Reconciled"), "{line}");
    }
    let key_file = state.path().join("secrets/shop.yaml");
    let first = std::fs::read_to_string(&key_file).unwrap();
    assert!(first.contains("# bob-cli-apikey\n") && first.contains("api-key"));
    let admin = state.path().join("secrets/portcullis-system.yaml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&admin).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert!(stdout.contains("bootstrap: user admin@localhost.local created"));
    let admin_yaml = std::fs::read_to_string(&admin).unwrap();
    let password_b64 = admin_yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("password: "))
        .expect("password saved");
    assert!(!stdout.contains(password_b64), "the password is not printed");

    // A restart reuses the database and the saved Secrets: the same key, no new admin.
    let again = local_once(&examples, state.path());
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(&key_file).unwrap(),
        first,
        "API key stable across restarts"
    );
    assert!(!String::from_utf8_lossy(&again.stdout).contains("bootstrap: user"));
}

#[test]
fn local_mode_reports_malformed_manifests_per_file_and_applies_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("broken.yaml"),
        "apiVersion: portcullis.io/v1alpha1\nkind: Role\nmetadata: [oops\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("roles.yaml"),
        "apiVersion: portcullis.io/v1alpha1\nkind: Role\nmetadata: {name: good}\nspec: {scopes: [read]}\n---\n\
         apiVersion: portcullis.io/v1alpha1\nkind: Role\nmetadata: {name: bad}\nspec: {scopes: [\"not a scope\"]}\n",
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let out = local_once(dir.path(), state.path());
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("refused: broken.yaml: invalid YAML"), "{stderr}");
    assert!(
        stderr.contains("refused: roles.yaml: Role bad: spec.scopes[0]"),
        "{stderr}"
    );
    let good = stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("good"))
        .expect("good applied");
    assert!(good.contains(" True "), "{good}");
    assert!(!stdout.lines().any(|l| l.split_whitespace().nth(1) == Some("bad")));
}

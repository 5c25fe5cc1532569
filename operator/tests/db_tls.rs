//! The store over TLS: a private PostgreSQL with `ssl=on` and a certificate made here,
//! whose `pg_hba.conf` admits TCP clients only over TLS (`hostssl`). The operator's
//! configuration (`DATABASE_URL` with `sslmode`, `DATABASE_CA_FILE`) connects and
//! migrates with full verification; a plain connection is refused, and so are a server
//! certificate from another CA and (with `verify-full`) a host name it does not carry.
//!
//! Run with `TEST_TLS_POSTGRES_BIN=/usr/lib/postgresql/<version>/bin`; as root, the
//! server runs as `postgres` (like `scripts/faultdb.sh`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use portcullis_operator::store::{DbConfig, Store};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use sqlx::Connection;

/// A PostgreSQL of this test's own, stopped (and its files removed) when dropped.
struct PrivatePostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_root: bool,
}

fn run(as_root: bool, program: &Path, args: &[&str]) -> std::process::Output {
    let output = if as_root {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(args)
            .output()
    } else {
        Command::new(program).args(args).output()
    }
    .unwrap();
    assert!(
        output.status.success(),
        "{} {args:?}: {}{}",
        program.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

impl PrivatePostgres {
    /// Starts a server whose certificate (for `localhost` only) is signed by `ca`.
    fn start(ca: &CertifiedIssuer<'static, KeyPair>) -> PrivatePostgres {
        let bin = PathBuf::from(std::env::var("TEST_TLS_POSTGRES_BIN").expect("TEST_TLS_POSTGRES_BIN"));
        let as_root = String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
            .unwrap()
            .trim()
            == "0";
        let dir = tempfile::Builder::new().prefix("portcullis-tlspg").tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, ca).unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("server.crt"), cert.pem()).unwrap();
        std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
        std::fs::set_permissions(path("server.key"), std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        if as_root {
            let status = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
        }
        let data = path("data");
        let data_s = data.to_str().unwrap();
        run(
            as_root,
            &bin.join("initdb"),
            &["-D", data_s, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        // TCP only over TLS; the socket (for pg_ctl) stays open.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )
        .unwrap();
        let options = format!(
            "-p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on -c ssl_cert_file={cert} -c ssl_key_file={key}",
            dir = dir.path().display(),
            cert = path("server.crt").display(),
            key = path("server.key").display(),
        );
        let log = path("pg.log");
        run(
            as_root,
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_s,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        PrivatePostgres {
            dir,
            bin,
            port,
            as_root,
        }
    }

    fn url(&self, host: &str, query: &str) -> String {
        format!("postgres://postgres@{host}:{}/postgres{query}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = if self.as_root {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join("pg_ctl"))
                .args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"])
                .output()
        } else {
            Command::new(self.bin.join("pg_ctl"))
                .args(["-D", data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"])
                .output()
        };
    }
}

fn config(url: &str, ca_file: Option<&Path>) -> DbConfig {
    let ca_file = ca_file.map(|p| p.display().to_string());
    DbConfig::from_vars(|name| match name {
        "DATABASE_URL" => Some(url.to_string()),
        "DATABASE_CA_FILE" => ca_file.clone(),
        "DB_WAIT_SECONDS" => Some("3".into()),
        _ => None,
    })
    .unwrap()
}

#[cfg_attr(
    not(portcullis_test_tls_postgres),
    ignore = "set TEST_TLS_POSTGRES_BIN (PostgreSQL's bin directory) to run"
)]
#[tokio::test]
async fn the_store_speaks_tls_to_postgresql_and_verifies_the_server() {
    let ours = ca("portcullis test database CA");
    let server = PrivatePostgres::start(&ours);
    let ca_file = server.dir.path().join("ca.crt");
    std::fs::write(&ca_file, ours.pem()).unwrap();

    // DATABASE_CA_FILE alone means verify-full: the operator connects and migrates.
    let verified = config(&server.url("localhost", ""), Some(&ca_file));
    assert!(
        verified.url().contains("sslmode=verify-full"),
        "{}",
        verified.redacted_url()
    );
    let store = Store::open(&verified).await.unwrap();
    assert!(store.revision().await.unwrap() >= 0);
    store.close().await;
    // ... and the session is encrypted, as the server sees it.
    let mut conn = sqlx::AnyConnection::connect(verified.url()).await.unwrap();
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(ssl, "the session is TLS");
    conn.close().await.unwrap();

    // A plain connection is refused by the hostssl-only pg_hba.conf.
    let plain = Store::open(&config(&server.url("localhost", "?sslmode=disable"), None))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        plain.contains("pg_hba.conf") && plain.contains("no encryption"),
        "{plain}"
    );

    // verify-full checks the name: the certificate is for localhost, not 127.0.0.1 ...
    let wrong_name = Store::open(&config(
        &server.url("127.0.0.1", "?sslmode=verify-full"),
        Some(&ca_file),
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(wrong_name.to_lowercase().contains("certificate"), "{wrong_name}");
    // ... which verify-ca does not, while still checking the CA.
    let by_ca = Store::open(&config(&server.url("127.0.0.1", "?sslmode=verify-ca"), Some(&ca_file)))
        .await
        .unwrap();
    by_ca.close().await;

    // A server certificate from another CA is refused.
    let other_ca_file = server.dir.path().join("other-ca.crt");
    std::fs::write(&other_ca_file, ca("someone else's CA").pem()).unwrap();
    let impostor = Store::open(&config(&server.url("localhost", ""), Some(&other_ca_file)))
        .await
        .unwrap_err()
        .to_string();
    assert!(impostor.to_lowercase().contains("certificate"), "{impostor}");

    // sslmode=require encrypts without verifying (libpq's meaning), for servers whose CA is unknown.
    let unverified = Store::open(&config(&server.url("localhost", "?sslmode=require"), None))
        .await
        .unwrap();
    unverified.close().await;
}

//! Database configuration from the environment: `DATABASE_URL`, or `DB_TYPE` and friends,
//! and TLS: the URL's own `sslmode` (PostgreSQL: `require`, `verify-ca`, `verify-full`)
//! or `ssl-mode` (MySQL/MariaDB: `REQUIRED`, `VERIFY_CA`, `VERIFY_IDENTITY`), with the CA
//! from `DATABASE_CA_FILE` (sqlx speaks TLS with rustls; without a CA file the system's
//! roots verify the server).

use std::time::Duration;

use url::Url;

use super::error::ConfigError;

/// The SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
            Backend::Sqlite => "sqlite",
        }
    }

    fn from_db_type(value: &str) -> Result<Self, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "postgres" | "postgresql" => Ok(Backend::Postgres),
            "mysql" | "mariadb" => Ok(Backend::MySql),
            "sqlite" => Ok(Backend::Sqlite),
            _ => Err(ConfigError::UnknownDbType(value.to_string())),
        }
    }

    fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::MySql),
            "sqlite" => Some(Backend::Sqlite),
            _ => None,
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Backend::Postgres => 5432,
            Backend::MySql => 3306,
            Backend::Sqlite => 0,
        }
    }
}

/// Where the database is and how to use it. `Debug` and [`DbConfig::redacted_url`] never
/// show the password.
#[derive(Clone)]
pub struct DbConfig {
    pub backend: Backend,
    url: String,
    pub pool_size: u32,
    /// How long start-up waits for an unreachable database before giving up.
    pub wait: Duration,
    /// How long an operation waits for a pooled connection before reporting the
    /// database unavailable.
    pub acquire_timeout: Duration,
}

impl std::fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbConfig")
            .field("backend", &self.backend)
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("wait", &self.wait)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

impl DbConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Builds a configuration from variables looked up by `get` (the environment, or a
    /// map in tests). `DATABASE_URL` wins; `DB_TYPE`, when also set, must agree with it.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let db_type = get("DB_TYPE").map(|t| Backend::from_db_type(&t)).transpose()?;
        let (backend, url) = match get("DATABASE_URL") {
            Some(raw) => {
                let (backend, url) = parse_url(&raw)?;
                if let Some(declared) = db_type.filter(|t| *t != backend) {
                    return Err(ConfigError::Conflict(format!(
                        "DATABASE_URL is a {} URL but DB_TYPE says {}",
                        backend.as_str(),
                        declared.as_str()
                    )));
                }
                (backend, url)
            }
            None => {
                let backend = db_type.ok_or(ConfigError::Missing)?;
                (backend, url_from_parts(backend, &get)?)
            }
        };
        let url = match get("DATABASE_CA_FILE") {
            Some(ca) => with_ca_file(backend, &url, &ca)?,
            None => url,
        };
        let pool_size = match get("DB_POOL_SIZE") {
            Some(v) => v
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| ConfigError::Invalid {
                    var: "DB_POOL_SIZE",
                    reason: format!("{v:?} is not a positive integer"),
                })?,
            None => default_pool_size(),
        };
        let wait = match get("DB_WAIT_SECONDS") {
            Some(v) => Duration::from_secs(v.trim().parse::<u64>().map_err(|_| ConfigError::Invalid {
                var: "DB_WAIT_SECONDS",
                reason: format!("{v:?} is not a number of seconds"),
            })?),
            None => DEFAULT_WAIT,
        };
        Ok(DbConfig {
            backend,
            url,
            pool_size,
            wait,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        })
    }

    /// A configuration for an explicit URL, with default pool size and wait.
    pub fn from_url(raw: &str) -> Result<Self, ConfigError> {
        let (backend, url) = parse_url(raw)?;
        Ok(DbConfig {
            backend,
            url,
            pool_size: default_pool_size(),
            wait: DEFAULT_WAIT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        })
    }

    /// The URL to connect with. Holds the password: never log it, log [`Self::redacted_url`].
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The URL with the password replaced by `***`, fit for logs and error messages.
    pub fn redacted_url(&self) -> String {
        match Url::parse(&self.url) {
            Ok(mut url) if url.password().is_some() => {
                // Cannot fail: a URL with a password has a host.
                let _ = url.set_password(Some("***"));
                url.to_string()
            }
            _ => self.url.clone(),
        }
    }
}

/// Adds the CA file to the URL (`sslrootcert` for PostgreSQL, `ssl-ca` for MySQL) and,
/// when the URL names no TLS mode, full verification (a CA is given to be used).
fn with_ca_file(backend: Backend, raw: &str, ca: &str) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        var: "DATABASE_CA_FILE",
        reason,
    };
    let (ca_key, mode_key, verify_all) = match backend {
        Backend::Postgres => ("sslrootcert", "sslmode", "verify-full"),
        Backend::MySql => ("ssl-ca", "ssl-mode", "VERIFY_IDENTITY"),
        Backend::Sqlite => return Err(invalid("SQLite is a file: it has no TLS".into())),
    };
    std::fs::metadata(ca).map_err(|e| invalid(format!("{ca}: {e}")))?;
    let mut url = Url::parse(raw).map_err(|e| ConfigError::MalformedUrl(e.to_string()))?;
    let has = |key: &str| url.query_pairs().any(|(k, _)| k == key);
    if has(ca_key) {
        return Err(ConfigError::Conflict(format!(
            "DATABASE_CA_FILE and the URL's {ca_key} both name a CA"
        )));
    }
    let add_mode = !has(mode_key);
    let mut query = url.query_pairs_mut();
    query.append_pair(ca_key, ca);
    if add_mode {
        query.append_pair(mode_key, verify_all);
    }
    drop(query);
    Ok(url.to_string())
}

/// `2 × cores + 1`, the classic sizing for a pool whose work is mostly waiting on I/O.
pub fn default_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    u32::try_from(cores * 2 + 1).unwrap_or(u32::MAX)
}

fn parse_url(raw: &str) -> Result<(Backend, String), ConfigError> {
    let raw = raw.trim();
    let malformed = |reason: &str| ConfigError::MalformedUrl(reason.to_string());
    let scheme = raw
        .split_once(':')
        .map(|(s, _)| s.to_ascii_lowercase())
        .ok_or_else(|| malformed("expected <scheme>://…, e.g. postgres://user@host/db or sqlite://portcullis.db"))?;
    let backend = Backend::from_scheme(&scheme).ok_or_else(|| {
        ConfigError::MalformedUrl(format!(
            "unsupported scheme {scheme:?}: use postgres://, mysql://, mariadb:// or sqlite://"
        ))
    })?;
    if backend == Backend::Sqlite {
        return Ok((backend, sqlite_url(raw)));
    }
    let mut url = Url::parse(raw).map_err(|e| malformed(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(malformed("no host"));
    }
    if url.path().trim_start_matches('/').is_empty() {
        return Err(malformed("no database name in the path"));
    }
    if backend == Backend::MySql && url.scheme() == "mariadb" {
        // sqlx speaks the MySQL protocol under the `mysql` scheme only.
        let rest = &url.as_str()["mariadb".len()..];
        url = Url::parse(&format!("mysql{rest}")).map_err(|e| malformed(&e.to_string()))?;
    }
    Ok((backend, url.to_string()))
}

/// SQLite URLs: create the file when it is missing (`mode=rwc`) unless a mode is given.
fn sqlite_url(raw: &str) -> String {
    if raw.contains("mode=") || raw.contains(":memory:") {
        raw.to_string()
    } else if raw.contains('?') {
        format!("{raw}&mode=rwc")
    } else {
        format!("{raw}?mode=rwc")
    }
}

fn url_from_parts(backend: Backend, get: &impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    if backend == Backend::Sqlite {
        let path = get("DB_NAME").unwrap_or_else(|| "portcullis.db".to_string());
        return Ok(sqlite_url(&format!("sqlite://{path}")));
    }
    let host = get("DB_HOST").unwrap_or_else(|| "localhost".to_string());
    let port = match get("DB_PORT") {
        Some(p) => p.trim().parse::<u16>().map_err(|_| ConfigError::Invalid {
            var: "DB_PORT",
            reason: format!("{p:?} is not a port number"),
        })?,
        None => backend.default_port(),
    };
    let name = get("DB_NAME").unwrap_or_else(|| "portcullis".to_string());
    let user = get("DB_USER").unwrap_or_else(|| "portcullis".to_string());
    let mut url = Url::parse(&format!("{}://placeholder/", backend.as_str()))
        .map_err(|e| ConfigError::MalformedUrl(e.to_string()))?;
    url.set_host(Some(&host)).map_err(|e| ConfigError::Invalid {
        var: "DB_HOST",
        reason: format!("{host:?}: {e}"),
    })?;
    // These setters only fail on URLs that cannot have credentials or ports; ours can.
    let _ = url.set_port(Some(port));
    let _ = url.set_username(&user);
    if let Some(pass) = get("DB_PASS") {
        let _ = url.set_password(Some(&pass));
    }
    url.path_segments_mut()
        .map_err(|()| ConfigError::MalformedUrl("cannot hold a database name".into()))?
        .clear()
        .push(&name);
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<DbConfig, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        DbConfig::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn database_url_wins_and_mariadb_speaks_mysql() {
        let c = cfg(&[("DATABASE_URL", "mariadb://root@127.0.0.1:3306/test")]).unwrap();
        assert_eq!(c.backend, Backend::MySql);
        assert_eq!(c.url(), "mysql://root@127.0.0.1:3306/test");
        assert_eq!(c.pool_size, default_pool_size());
        assert!(c.pool_size >= 3);
    }

    #[test]
    fn parts_are_percent_encoded_and_password_is_redacted() {
        let c = cfg(&[
            ("DB_TYPE", "postgres"),
            ("DB_HOST", "db.internal"),
            ("DB_USER", "porter"),
            ("DB_PASS", "p@ss/w:rd#1"),
            ("DB_NAME", "portcullis"),
            ("DB_POOL_SIZE", "7"),
        ])
        .unwrap();
        assert_eq!(
            c.url(),
            "postgres://porter:p%40ss%2Fw%3Ard%231@db.internal:5432/portcullis"
        );
        assert_eq!(c.redacted_url(), "postgres://porter:***@db.internal:5432/portcullis");
        assert!(!format!("{c:?}").contains("p%40ss"));
        assert_eq!(c.pool_size, 7);
    }

    #[test]
    fn sqlite_from_parts_creates_the_file() {
        let c = cfg(&[("DB_TYPE", "sqlite"), ("DB_NAME", "/tmp/p.db")]).unwrap();
        assert_eq!(c.backend, Backend::Sqlite);
        assert_eq!(c.url(), "sqlite:///tmp/p.db?mode=rwc");
    }

    #[test]
    fn a_ca_file_goes_into_the_url_with_full_verification_unless_a_mode_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let ca = ca.to_str().unwrap();
        let c = cfg(&[("DATABASE_URL", "postgres://u@db:5432/p"), ("DATABASE_CA_FILE", ca)]).unwrap();
        let expected = format!(
            "postgres://u@db:5432/p?sslrootcert={}&sslmode=verify-full",
            ca.replace('/', "%2F")
        );
        assert_eq!(c.url(), expected);
        let c = cfg(&[
            ("DATABASE_URL", "postgres://u@db/p?sslmode=verify-ca"),
            ("DATABASE_CA_FILE", ca),
        ])
        .unwrap();
        assert!(
            c.url().contains("sslmode=verify-ca") && !c.url().contains("verify-full"),
            "{}",
            c.url()
        );
        let c = cfg(&[("DATABASE_URL", "mariadb://root@db/p"), ("DATABASE_CA_FILE", ca)]).unwrap();
        assert!(c.url().starts_with("mysql://root@db/p?ssl-ca="), "{}", c.url());
        assert!(c.url().ends_with("&ssl-mode=VERIFY_IDENTITY"), "{}", c.url());
        let err = |vars: &[(&str, &str)]| cfg(vars).unwrap_err().to_string();
        assert!(err(&[("DATABASE_URL", "sqlite://x.db"), ("DATABASE_CA_FILE", ca)]).contains("no TLS"));
        assert!(
            err(&[
                ("DATABASE_URL", "postgres://u@db/p"),
                ("DATABASE_CA_FILE", "/nonexistent/ca.pem")
            ])
            .contains("DATABASE_CA_FILE")
        );
        assert!(
            err(&[
                ("DATABASE_URL", "postgres://u@db/p?sslrootcert=/a.pem"),
                ("DATABASE_CA_FILE", ca)
            ])
            .contains("both name a CA")
        );
    }

    #[test]
    fn bad_configuration_is_a_clear_error() {
        let err = |vars: &[(&str, &str)]| cfg(vars).unwrap_err().to_string();
        assert!(err(&[("DB_TYPE", "oracle")]).contains("unknown DB_TYPE \"oracle\""));
        assert!(err(&[]).contains("DATABASE_URL"));
        assert!(err(&[("DATABASE_URL", "mongodb://x/y")]).contains("unsupported scheme"));
        assert!(err(&[("DATABASE_URL", "postgres://")]).contains("malformed"));
        assert!(err(&[("DATABASE_URL", "postgres://host")]).contains("no database name"));
        assert!(err(&[("DATABASE_URL", "nonsense")]).contains("malformed"));
        assert!(err(&[("DATABASE_URL", "sqlite://x.db"), ("DB_TYPE", "postgres")]).contains("DB_TYPE says postgres"));
        assert!(err(&[("DB_TYPE", "mysql"), ("DB_PORT", "http")]).contains("DB_PORT"));
        assert!(err(&[("DB_TYPE", "sqlite"), ("DB_POOL_SIZE", "0")]).contains("DB_POOL_SIZE"));
        for e in [err(&[("DB_TYPE", "oracle")]), err(&[("DATABASE_URL", "mongodb://x/y")])] {
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }
}

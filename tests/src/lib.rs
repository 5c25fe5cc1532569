//! The end-to-end harness: the control plane (`portcullis-operator local`) and sidecars
//! (`portcullis-proxy`) as real processes on loopback, an upstream app and a JWKS server
//! in the test process (real sockets), and a small HTTP/1.1 client.
//!
//! The binaries are the workspace's own, found next to the test executable (see
//! Cargo.toml for how they get built).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// Why the harness could not do what a test asked.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HarnessError {}

pub type Result<T> = std::result::Result<T, HarnessError>;

fn fail(message: impl Into<String>) -> HarnessError {
    HarnessError(message.into())
}

/// A workspace binary, next to the running test executable (target/<profile>/).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| fail(e.to_string()))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(fail(format!(
            "{} not built: run `cargo build -p portcullis-operator -p portcullis-proxy --bins` (cargo test --workspace builds it)",
            path.display()
        )))
    }
}

/// A loopback port free right now.
pub fn free_port() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| fail(e.to_string()))?;
    listener.local_addr().map_err(|e| fail(e.to_string()))
}

/// Polls `check` every 20 ms until it holds or `within` passes; the time it took.
pub async fn until<F, Fut>(within: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return Some(started.elapsed());
        }
        if started.elapsed() >= within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request (`Connection: close`), answered in full.
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Result<Answer> {
    let mut stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| fail(format!("connect {addr}: timed out")))?
        .map_err(|e| fail(format!("connect {addr}: {e}")))?;
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| fail(format!("write {addr}: {e}")))?;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(90), stream.read_to_end(&mut raw))
        .await
        .map_err(|_| fail(format!("read {addr}: timed out")))?
        .map_err(|e| fail(format!("read {addr}: {e}")))?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| fail(format!("{addr}: no HTTP head in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| fail(format!("{addr}: bad status line")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Ok(Answer { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..line_end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = line_end + 2;
        let end = (start + size).min(data.len());
        out.extend_from_slice(&data[start..end]);
        data = data.get(end + 2..).unwrap_or_default();
    }
    out
}

/// A child process, killed when dropped; its output goes to a log file.
pub struct Process {
    child: Child,
    pub log: PathBuf,
}

impl Process {
    fn spawn(program: &Path, args: &[String], envs: &[(String, String)], log: PathBuf) -> Result<Process> {
        let out = std::fs::File::create(&log).map_err(|e| fail(format!("{}: {e}", log.display())))?;
        let err = out.try_clone().map_err(|e| fail(e.to_string()))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .map_err(|e| fail(format!("{}: {e}", program.display())))?;
        Ok(Process { child, log })
    }

    /// Stops the process (SIGKILL) and waits for it.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// The operating system's id of the process.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// The process's output so far, for failure messages.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The control plane in local mode.
pub struct ControlPlane {
    pub process: Process,
    pub api: SocketAddr,
    pub state: PathBuf,
    pub manifests: PathBuf,
    pub database_url: String,
}

impl ControlPlane {
    /// Starts `portcullis-operator local` on `manifests` with `state` and, when given,
    /// another database than the SQLite file in `state`; waits until the API serves
    /// `namespace`'s snapshot.
    pub async fn start(
        manifests: &Path,
        state: &Path,
        database_url: Option<&str>,
        api: SocketAddr,
    ) -> Result<ControlPlane> {
        ControlPlane::start_logging(manifests, state, database_url, api, "info").await
    }

    /// [`ControlPlane::start`] with more arguments (`--api-tls-cert …`).
    pub async fn start_with(
        manifests: &Path,
        state: &Path,
        database_url: Option<&str>,
        api: SocketAddr,
        extra: &[&str],
    ) -> Result<ControlPlane> {
        ControlPlane::launch(manifests, state, database_url, api, "info", extra)
    }

    /// [`ControlPlane::start`] with its log filter (`RUST_LOG`), e.g. `debug`.
    pub async fn start_logging(
        manifests: &Path,
        state: &Path,
        database_url: Option<&str>,
        api: SocketAddr,
        log_filter: &str,
    ) -> Result<ControlPlane> {
        ControlPlane::launch(manifests, state, database_url, api, log_filter, &[])
    }

    fn launch(
        manifests: &Path,
        state: &Path,
        database_url: Option<&str>,
        api: SocketAddr,
        log_filter: &str,
        extra: &[&str],
    ) -> Result<ControlPlane> {
        let binary = binary("portcullis-operator")?;
        std::fs::create_dir_all(state).map_err(|e| fail(e.to_string()))?;
        let mut args = vec![
            "local".to_string(),
            "--manifests".into(),
            manifests.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--api-addr".into(),
            api.to_string(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let database_url = database_url
            .map(str::to_string)
            .unwrap_or_else(|| format!("sqlite://{}/portcullis.db", state.display()));
        let envs = vec![
            ("DATABASE_URL".to_string(), database_url.clone()),
            ("RUST_LOG".to_string(), log_filter.to_string()),
        ];
        let log = state.join(format!("operator-{}.log", api.port()));
        let process = Process::spawn(&binary, &args, &envs, log)?;
        let plane = ControlPlane {
            process,
            api,
            state: state.to_path_buf(),
            manifests: manifests.to_path_buf(),
            database_url,
        };
        Ok(plane)
    }

    /// Waits until the API serves `namespace`'s snapshot to its token.
    pub async fn ready(&self, namespace: &str) -> Result<()> {
        let ok = until(Duration::from_secs(60), || async move {
            let Ok(token) = self.token(namespace) else { return false };
            let path = format!("/api/v1/snapshots/{namespace}?revision=-1");
            http(
                self.api,
                "GET",
                &path,
                &[("Authorization", format!("Bearer {token}").as_str())],
                "",
            )
            .await
            .is_ok_and(|a| a.status == 200)
        })
        .await;
        ok.map(|_| ())
            .ok_or_else(|| fail(format!("control plane not ready:\n{}", self.process.output())))
    }

    /// The API token of `namespace` (local mode's token file).
    pub fn token(&self, namespace: &str) -> Result<String> {
        let path = self.token_path(namespace);
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        Ok(text.trim().to_string())
    }

    pub fn token_path(&self, namespace: &str) -> PathBuf {
        self.state.join("tokens").join(namespace)
    }

    /// The plain API key local mode wrote for `secret` in `namespace`'s Secrets file.
    pub fn api_key(&self, namespace: &str, secret: &str) -> Result<String> {
        use base64::Engine;
        let path = self.state.join("secrets").join(format!("{namespace}.yaml"));
        let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        let mut in_secret = false;
        for line in text.lines() {
            if line.starts_with("# ") {
                in_secret = line == format!("# {secret}");
            }
            if in_secret && let Some(value) = line.trim().strip_prefix("api-key:") {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .map_err(|e| fail(e.to_string()))?;
                return String::from_utf8(bytes).map_err(|e| fail(e.to_string()));
            }
        }
        Err(fail(format!("no api-key of {secret} in {}", path.display())))
    }

    /// A store on the control plane's database, to write as another writer would.
    pub async fn store(&self) -> Result<portcullis_operator::store::Store> {
        let config =
            portcullis_operator::store::DbConfig::from_url(&self.database_url).map_err(|e| fail(e.to_string()))?;
        portcullis_operator::store::Store::connect(&config)
            .await
            .map_err(|e| fail(e.to_string()))
    }
}

/// A sidecar long-polling the control plane.
pub struct Sidecar {
    pub process: Process,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Sidecar {
    /// Starts `portcullis-proxy` for pods `app=sample-api` of `namespace`, in front of `upstream`.
    pub async fn start(plane: &ControlPlane, namespace: &str, upstream: SocketAddr, dir: &Path) -> Result<Sidecar> {
        Sidecar::start_with(plane, namespace, upstream, dir, &[]).await
    }

    /// [`Sidecar::start`] with more arguments (`--max-staleness 3`, `--log debug`, …),
    /// polling `plane` over plain HTTP; waits until it is ready.
    pub async fn start_with(
        plane: &ControlPlane,
        namespace: &str,
        upstream: SocketAddr,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Sidecar> {
        let url = format!("http://{}", plane.api);
        let sidecar = Sidecar::spawn(&url, &plane.token_path(namespace), namespace, upstream, dir, extra)?;
        sidecar.ready().await?;
        Ok(sidecar)
    }

    /// Starts `portcullis-proxy` polling the control plane at `url` (`http://` or
    /// `https://`) with `token_file`, without waiting for it to be ready. Logs at `info`
    /// unless `extra` says `--log`.
    pub fn spawn(
        url: &str,
        token_file: &Path,
        namespace: &str,
        upstream: SocketAddr,
        dir: &Path,
        extra: &[&str],
    ) -> Result<Sidecar> {
        let binary = binary("portcullis-proxy")?;
        let listen = free_port()?;
        let admin = free_port()?;
        let mut args = vec![
            "--listen".to_string(),
            listen.to_string(),
            "--admin-listen".into(),
            admin.to_string(),
            "--upstream".into(),
            format!("http://{upstream}"),
            "--control-plane".into(),
            url.into(),
            "--control-plane-token-file".into(),
            token_file.display().to_string(),
            "--namespace".into(),
            namespace.into(),
            "--pod-label".into(),
            "app=sample-api".into(),
        ];
        if !extra.contains(&"--log") {
            args.extend(["--log".to_string(), "info".into()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let log = dir.join(format!("proxy-{}.log", listen.port()));
        let process = Process::spawn(&binary, &args, &[], log)?;
        Ok(Sidecar { process, listen, admin })
    }

    /// Waits until the sidecar's `/readyz` says it holds a snapshot.
    pub async fn ready(&self) -> Result<()> {
        let admin = self.admin;
        let ready = until(Duration::from_secs(30), || async move {
            http(admin, "GET", "/readyz", &[], "")
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await;
        match ready {
            Some(_) => Ok(()),
            None => Err(fail(format!("sidecar not ready:\n{}", self.process.output()))),
        }
    }

    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<Answer> {
        http(self.listen, "GET", path, headers, "").await
    }

    /// A metric's value from the admin port (first sample of that name).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let answer = http(self.admin, "GET", "/metrics", &[], "").await.ok()?;
        answer
            .text()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// The upstream app: answers every request 200 with a small JSON body.
pub async fn upstream() -> Result<SocketAddr> {
    serve(|_path| (200, vec![], "{\"app\":\"sample-api\"}".to_string())).await
}

/// A JWKS server whose document (and `Cache-Control`) the test changes at will.
#[derive(Clone, Default)]
pub struct Jwks {
    pub document: Arc<Mutex<String>>,
}

impl Jwks {
    pub fn set(&self, document: String) {
        match self.document.lock() {
            Ok(mut d) => *d = document,
            Err(poisoned) => *poisoned.into_inner() = document,
        }
    }

    pub async fn serve(&self) -> Result<SocketAddr> {
        let document = self.document.clone();
        serve(move |_path| {
            let body = match document.lock() {
                Ok(d) => d.clone(),
                Err(poisoned) => poisoned.into_inner().clone(),
            };
            (200, vec![("cache-control", "max-age=5")], body)
        })
        .await
    }
}

type Reply = (u16, Vec<(&'static str, &'static str)>, String);

/// A hyper HTTP/1.1 server on a loopback port answering with `reply(path)`.
async fn serve<F>(reply: F) -> Result<SocketAddr>
where
    F: Fn(&str) -> Reply + Send + Sync + 'static,
{
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| fail(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let reply = Arc::new(reply);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let reply = reply.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (status, headers, body) = reply(request.uri().path());
                    async move {
                        let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                        response.headers_mut().insert(
                            hyper::header::CONTENT_TYPE,
                            hyper::header::HeaderValue::from_static("application/json"),
                        );
                        for (name, value) in headers {
                            response
                                .headers_mut()
                                .insert(name, hyper::header::HeaderValue::from_static(value));
                        }
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Peak resident memory (VmHWM) of process `pid`, in MiB (Linux).
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// CPU seconds (user + system) process `pid` has used (Linux, 100 ticks a second).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Copies the repository's examples/ (the README's manifests) into `dir`.
pub fn copy_examples(dir: &Path) -> Result<()> {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    for entry in std::fs::read_dir(&examples).map_err(|e| fail(format!("{}: {e}", examples.display())))? {
        let entry = entry.map_err(|e| fail(e.to_string()))?;
        std::fs::copy(entry.path(), dir.join(entry.file_name())).map_err(|e| fail(e.to_string()))?;
    }
    Ok(())
}

/// Makes a fresh PostgreSQL database `<base>_<name>` beside `base_url`'s; its URL.
pub async fn fresh_postgres(base_url: &str, name: &str) -> Result<String> {
    use sqlx::Connection;
    let (prefix, base) = base_url
        .rsplit_once('/')
        .ok_or_else(|| fail(format!("{base_url}: no database name")))?;
    let base = base.split('?').next().unwrap_or(base);
    let db = format!("{base}_{name}");
    let mut conn = sqlx::PgConnection::connect(base_url)
        .await
        .map_err(|e| fail(format!("{base_url}: {e}")))?;
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    Ok(format!("{prefix}/{db}"))
}

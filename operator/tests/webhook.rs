//! The injection webhook over real HTTPS: AdmissionReviews in, JSON patches out, applied
//! to the pod and read back as a Pod; the serving certificate bootstrapped through the
//! in-memory Kubernetes API, rotated, and reloaded from disk by a running server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test: a panic is the failure report (clippy.toml allows these in #[test] functions only, not in helpers)"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use portcullis_operator::local;
use portcullis_operator::metrics::Metrics;
use portcullis_operator::webhook::bootstrap::{self, TlsBootstrap};
use portcullis_operator::webhook::tls::ReloadingCert;
use portcullis_operator::webhook::{Injector, SidecarDefaults, server};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OPERATOR_NS: &str = "portcullis-system";

// ---------------------------------------------------------------------------------------
// Helpers: certificates, a server, a client that speaks HTTPS.

struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        params.distinguished_name.push(DnType::CommonName, name);
        Pki {
            ca: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    /// A serving pair for `localhost`, as PEM (certificate, key).
    fn serving(&self) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        (params.signed_by(&key, &self.ca).unwrap().pem(), key.serialize_pem())
    }

    fn root(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }
}

fn write_pair(dir: &Path, (cert, key): &(String, String)) {
    // As the bootstrap and the kubelet do: whole files replaced by a rename.
    for (name, content) in [("tls.key", key), ("tls.crt", cert)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// The webhook's server on a free port, certificate from `dir`, reloaded every 50 ms.
async fn serve(dir: &Path, injector: Injector, metrics: Arc<Metrics>) -> (SocketAddr, Arc<ReloadingCert>) {
    let cert = ReloadingCert::new(dir.join("tls.crt"), dir.join("tls.key"));
    let _ = cert.reload();
    let expiry = metrics.clone();
    tokio::spawn(
        cert.clone()
            .watch(Duration::from_millis(50), move |t| expiry.set_webhook_cert_expiry(t)),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = cert.server_config().unwrap();
    tokio::spawn(server::serve(
        listener,
        config,
        Arc::new(injector),
        metrics,
        std::future::pending(),
    ));
    (addr, cert)
}

/// Connects with TLS, verifying the server as `name` against `roots`; returns the
/// stream and the certificate the server showed.
async fn connect(
    addr: SocketAddr,
    roots: &[CertificateDer<'static>],
    name: &str,
) -> std::io::Result<(
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
)> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store.add(root.clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = connector
        .connect(ServerName::try_from(name.to_string()).unwrap(), tcp)
        .await?;
    let shown = stream.get_ref().1.peer_certificates().unwrap()[0].clone().into_owned();
    Ok((stream, shown))
}

/// POSTs `body` over HTTPS; returns (status, body).
async fn post(addr: SocketAddr, root: &CertificateDer<'static>, path: &str, body: &Value) -> (u16, Value) {
    let (mut stream, _) = connect(addr, std::slice::from_ref(root), "localhost").await.unwrap();
    let body = serde_json::to_vec(body).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.to_string())),
    )
}

fn review(namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0b9a7c52-6f1e-4e8e-9a0a-3f1f1f1f1f1f",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
        }
    })
}

fn app_pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": "shop-api-7d9f-", "labels": {"app": "shop-api", "tier": "web"}, "annotations": annotations},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "shop/api:1.2",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                "livenessProbe": {"tcpSocket": {"port": 8080}},
                "resources": {"requests": {"cpu": "100m"}},
            }],
            "volumes": [{"name": "config", "configMap": {"name": "shop-api"}}],
        }
    })
}

/// The response's patch applied to `pod`, as JSON and as a Pod.
fn apply(pod: &Value, response: &Value) -> (Value, Pod) {
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert_eq!(response["response"]["patchType"], "JSONPatch", "{response}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(
            response["response"]["patch"]
                .as_str()
                .unwrap_or_else(|| panic!("{response}")),
        )
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    let parsed: Pod = serde_json::from_value(patched.clone()).expect("the patched pod is a valid Pod");
    (patched, parsed)
}

fn env(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn injector() -> Injector {
    let defaults = SidecarDefaults {
        image: "registry.example/portcullis-proxy:0.1.0".into(),
        control_plane_ca_config_map: Some("portcullis-api-ca".into()),
        ..SidecarDefaults::default()
    };
    Injector::new(defaults, OPERATOR_NS).unwrap()
}

struct Webhook {
    addr: SocketAddr,
    root: CertificateDer<'static>,
    metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

async fn webhook() -> Webhook {
    let pki = Pki::new("test-ca");
    let dir = tempfile::tempdir().unwrap();
    write_pair(dir.path(), &pki.serving());
    let metrics = Arc::new(Metrics::new());
    let (addr, _) = serve(dir.path(), injector(), metrics.clone()).await;
    Webhook {
        addr,
        root: pki.root(),
        metrics,
        _dir: dir,
    }
}

impl Webhook {
    async fn admit(&self, path: &str, namespace: &str, pod: &Value) -> Value {
        let (status, body) = post(self.addr, &self.root, path, &review(namespace, pod)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["kind"], "AdmissionReview");
        assert_eq!(body["response"]["uid"], "0b9a7c52-6f1e-4e8e-9a0a-3f1f1f1f1f1f");
        body
    }
}

fn assert_untouched(response: &Value) {
    assert_eq!(response["response"]["allowed"], true, "{response}");
    assert!(response["response"].get("patch").is_none(), "no patch: {response}");
}

// ---------------------------------------------------------------------------------------
// Injection.

#[tokio::test]
async fn an_annotated_pod_gets_a_native_sidecar_that_takes_its_traffic() {
    let hook = webhook().await;
    let pod = app_pod(json!({"portcullis.io/inject": "enabled", "portcullis.io/log-level": "debug"}));
    let response = hook.admit(server::PATH_POD, "shop", &pod).await;
    let (_, patched) = apply(&pod, &response);

    let annotations = patched.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["portcullis.io/injected"], "true");
    assert_eq!(
        annotations["portcullis.io/inject"], "enabled",
        "the pod's own annotations stay"
    );
    let spec = patched.spec.unwrap();
    let init = spec
        .init_containers
        .as_ref()
        .expect("a native sidecar is an init container");
    let sidecar = &init[0];
    assert_eq!(sidecar.name, "portcullis-proxy");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example/portcullis-proxy:0.1.0")
    );
    assert_eq!(spec.containers.len(), 1, "the app alone in containers");

    let security = sidecar.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(
        security.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert_eq!(security.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

    let ports: Vec<(Option<&str>, i32)> = sidecar
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(ports, [(Some("pc-proxy"), 15080), (Some("pc-admin"), 9090)]);
    for probe in [
        &sidecar.liveness_probe,
        &sidecar.readiness_probe,
        &sidecar.startup_probe,
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("pc-admin".into())
        );
    }
    assert_eq!(
        env(sidecar, "PORTCULLIS_UPSTREAM").as_deref(),
        Some("http://127.0.0.1:8080")
    );
    assert_eq!(env(sidecar, "PORTCULLIS_LISTEN").as_deref(), Some("0.0.0.0:15080"));
    assert_eq!(env(sidecar, "PORTCULLIS_ADMIN_LISTEN").as_deref(), Some("0.0.0.0:9090"));
    assert_eq!(env(sidecar, "PORTCULLIS_LOG").as_deref(), Some("debug"));
    assert_eq!(
        env(sidecar, "PORTCULLIS_POD_LABELS").as_deref(),
        Some("app=shop-api,tier=web")
    );
    assert_eq!(
        env(sidecar, "PORTCULLIS_CONTROL_PLANE").as_deref(),
        Some("https://portcullis-api.portcullis-system.svc:8443")
    );
    let resources = sidecar.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "64Mi");
    assert!(
        resources.limits.as_ref().unwrap().get("cpu").is_none(),
        "no CPU limit on a proxy"
    );

    // The projected token for the control plane, and the control plane's CA.
    let volumes = spec.volumes.as_ref().unwrap();
    assert_eq!(volumes[0].name, "config", "the pod's own volumes stay first");
    let token = volumes.iter().find(|v| v.name == "portcullis-token").unwrap();
    let source = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(source.audience.as_deref(), Some("portcullis"));
    assert_eq!(source.expiration_seconds, Some(3600));
    let ca = volumes
        .iter()
        .find(|v| v.name == "portcullis-control-plane-ca")
        .unwrap();
    assert_eq!(ca.config_map.as_ref().unwrap().name, "portcullis-api-ca");
    let mounts: Vec<&str> = sidecar
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(mounts, ["portcullis-token", "portcullis-control-plane-ca"]);
    let token_file = env(sidecar, "PORTCULLIS_CONTROL_PLANE_TOKEN_FILE").unwrap();
    assert!(token_file.starts_with(&sidecar.volume_mounts.as_ref().unwrap()[0].mount_path));

    // The app: its port moved to the sidecar, its probes sent through it.
    let app = &spec.containers[0];
    assert!(app.ports.as_ref().unwrap().is_empty(), "{:?}", app.ports);
    let readiness = app.readiness_probe.as_ref().unwrap().http_get.as_ref().unwrap();
    assert_eq!(
        readiness.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15080)
    );
    let liveness = app.liveness_probe.as_ref().unwrap().tcp_socket.as_ref().unwrap();
    assert_eq!(
        liveness.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15080)
    );
    assert!(
        hook.metrics
            .render()
            .contains(r#"portcullis_operator_webhook_requests_total{result="injected"} 1"#)
    );
}

#[tokio::test]
async fn the_regular_container_style_appends_the_sidecar_to_the_containers() {
    let hook = webhook().await;
    let pod = app_pod(json!({
        "portcullis.io/inject": "enabled",
        "portcullis.io/native-sidecar": "false",
        "portcullis.io/app-port": "8080",
        "portcullis.io/sidecar-cpu": "250m",
        "portcullis.io/sidecar-memory": "128Mi",
        "portcullis.io/sidecar-image": "mirror.example/proxy@sha256:abc",
    }));
    let response = hook.admit(server::PATH_POD, "shop", &pod).await;
    let (_, patched) = apply(&pod, &response);
    let spec = patched.spec.unwrap();
    assert!(spec.init_containers.is_none(), "no init container in this style");
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "portcullis-proxy"]);
    let sidecar = &spec.containers[1];
    assert_eq!(sidecar.restart_policy, None);
    assert_eq!(sidecar.startup_probe, None);
    assert_eq!(sidecar.image.as_deref(), Some("mirror.example/proxy@sha256:abc"));
    let requests = sidecar.resources.as_ref().unwrap().requests.clone().unwrap();
    assert_eq!(
        (requests["cpu"].0.as_str(), requests["memory"].0.as_str()),
        ("250m", "128Mi")
    );
}

#[tokio::test]
async fn a_native_sidecar_goes_before_the_pods_own_init_containers() {
    let hook = webhook().await;
    let mut pod = app_pod(json!({"portcullis.io/inject": "enabled"}));
    pod["spec"]["initContainers"] = json!([{"name": "migrate", "image": "shop/migrate:1"}]);
    let response = hook.admit(server::PATH_POD, "shop", &pod).await;
    let (_, patched) = apply(&pod, &response);
    let names: Vec<String> = patched
        .spec
        .unwrap()
        .init_containers
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["portcullis-proxy", "migrate"]);
}

#[tokio::test]
async fn tls_and_client_certificates_come_from_the_named_secret() {
    let hook = webhook().await;
    let pod = app_pod(json!({
        "portcullis.io/inject": "enabled",
        "portcullis.io/tls": "on",
        "portcullis.io/tls-secret": "shop-api-tls",
        "portcullis.io/client-cert": "require",
        "portcullis.io/control-plane": "https://pc.example:8443",
    }));
    let response = hook.admit(server::PATH_POD, "shop", &pod).await;
    let (_, patched) = apply(&pod, &response);
    let spec = patched.spec.unwrap();
    let sidecar = &spec.init_containers.as_ref().unwrap()[0];
    assert_eq!(env(sidecar, "PORTCULLIS_TLS_LISTEN").as_deref(), Some("0.0.0.0:15080"));
    assert_eq!(env(sidecar, "PORTCULLIS_LISTEN").as_deref(), Some("127.0.0.1:15081"));
    assert_eq!(env(sidecar, "PORTCULLIS_CLIENT_AUTH").as_deref(), Some("required"));
    assert_eq!(
        env(sidecar, "PORTCULLIS_CONTROL_PLANE").as_deref(),
        Some("https://pc.example:8443")
    );
    let tls = spec
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "portcullis-tls")
        .unwrap();
    assert_eq!(tls.secret.unwrap().secret_name.as_deref(), Some("shop-api-tls"));
    let probe = spec.containers[0]
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(
        probe.scheme.as_deref(),
        Some("HTTPS"),
        "the app's probe goes through the TLS listener"
    );
}

#[tokio::test]
async fn an_injected_pod_is_never_injected_again() {
    let hook = webhook().await;
    let pod = app_pod(json!({"portcullis.io/inject": "enabled"}));
    let (patched, _) = apply(&pod, &hook.admit(server::PATH_POD, "shop", &pod).await);
    assert_untouched(&hook.admit(server::PATH_POD, "shop", &patched).await);
    assert_untouched(&hook.admit(server::PATH_NAMESPACE, "shop", &patched).await);
    // A sidecar added by hand (no marker) counts as injected too.
    let mut by_hand = app_pod(json!({"portcullis.io/inject": "enabled"}));
    by_hand["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "portcullis-proxy", "image": "x"}));
    assert_untouched(&hook.admit(server::PATH_POD, "shop", &by_hand).await);
}

#[tokio::test]
async fn pods_without_the_annotation_are_left_alone_unless_their_namespace_opted_in() {
    let hook = webhook().await;
    let plain = app_pod(json!({}));
    assert_untouched(&hook.admit(server::PATH_POD, "shop", &plain).await);
    let mut bare = plain.clone();
    bare["metadata"].as_object_mut().unwrap().remove("annotations");
    assert_untouched(&hook.admit(server::PATH_POD, "shop", &bare).await);

    // A namespace labelled portcullis.io/inject=enabled: every pod, unless it opts out.
    let (_, patched) = apply(&bare, &hook.admit(server::PATH_NAMESPACE, "shop", &bare).await);
    assert_eq!(patched.metadata.annotations.unwrap()["portcullis.io/injected"], "true");
    let opted_out = app_pod(json!({"portcullis.io/inject": "disabled"}));
    assert_untouched(&hook.admit(server::PATH_NAMESPACE, "shop", &opted_out).await);

    // System namespaces and the operator's own, whatever the pod says.
    let annotated = app_pod(json!({"portcullis.io/inject": "enabled"}));
    for ns in ["kube-system", "kube-public", OPERATOR_NS] {
        assert_untouched(&hook.admit(server::PATH_POD, ns, &annotated).await);
        assert_untouched(&hook.admit(server::PATH_NAMESPACE, ns, &annotated).await);
    }
    assert!(
        hook.metrics
            .render()
            .contains(r#"portcullis_operator_webhook_requests_total{result="skipped"} 9"#),
        "{}",
        hook.metrics.render()
    );
}

#[tokio::test]
async fn a_malformed_annotation_is_refused_with_the_annotation_and_what_it_accepts() {
    let hook = webhook().await;
    let cases = [
        (
            json!({"portcullis.io/inject": "yes"}),
            "portcullis.io/inject",
            "enabled or disabled",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/log-level": "loud"}),
            "portcullis.io/log-level",
            "trace, debug, info, warn or error",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/app-port": "http"}),
            "portcullis.io/app-port",
            "1-65535",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/app-port": "9090"}),
            "portcullis.io/app-port",
            "admin",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/sidecar-memory": "lots"}),
            "portcullis.io/sidecar-memory",
            "64Mi",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/tls": "yes"}),
            "portcullis.io/tls",
            "off or on",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/tls": "on"}),
            "portcullis.io/tls-secret",
            "required",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/client-cert": "always"}),
            "portcullis.io/client-cert",
            "off, optional or require",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/native-sidecar": "maybe"}),
            "portcullis.io/native-sidecar",
            "true or false",
        ),
        (
            json!({"portcullis.io/inject": "enabled", "portcullis.io/control-plane": "http://plain:80"}),
            "portcullis.io/control-plane",
            "https://",
        ),
    ];
    for (annotations, annotation, accepted) in cases {
        let pod = app_pod(annotations);
        let response = hook.admit(server::PATH_POD, "shop", &pod).await;
        assert_eq!(response["response"]["allowed"], false, "{response}");
        assert!(response["response"].get("patch").is_none());
        let message = response["response"]["status"]["message"].as_str().unwrap();
        assert!(message.contains(annotation), "{message}");
        assert!(message.contains(accepted), "{message}");
    }
    // Several declared ports and no app-port: which one is the app's is not guessed.
    let mut two_ports = app_pod(json!({"portcullis.io/inject": "enabled"}));
    two_ports["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8080}, {"containerPort": 8081}]);
    let response = hook.admit(server::PATH_POD, "shop", &two_ports).await;
    let message = response["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("portcullis.io/app-port: required"), "{message}");
}

#[tokio::test]
async fn what_is_not_an_admission_review_is_a_400() {
    let hook = webhook().await;
    let (status, body) = post(hook.addr, &hook.root, server::PATH_POD, &json!({"hello": 1})).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = post(hook.addr, &hook.root, "/elsewhere", &json!({})).await;
    assert_eq!(status, 404);
    assert!(
        hook.metrics
            .render()
            .contains(r#"portcullis_operator_webhook_requests_total{result="error"} 1"#)
    );
}

// ---------------------------------------------------------------------------------------
// The serving certificate: reloaded from disk, bootstrapped, rotated.

/// Waits (up to 10 s) until the server shows `expected`.
async fn until_served(addr: SocketAddr, roots: &[CertificateDer<'static>], name: &str, expected: &CertificateDer<'_>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((_, shown)) = connect(addr, roots, name).await
            && shown.as_ref() == expected.as_ref()
        {
            return;
        }
        assert!(Instant::now() < deadline, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

#[tokio::test]
async fn a_rotated_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let first_ca = Pki::new("first");
    let first = first_ca.serving();
    write_pair(dir.path(), &first);
    let metrics = Arc::new(Metrics::new());
    let (addr, cert) = serve(dir.path(), injector(), metrics.clone()).await;
    let (_, shown) = connect(addr, &[first_ca.root()], "localhost").await.unwrap();
    assert_eq!(shown, der(&first.0));
    let first_expiry = cert.not_after().unwrap();

    // cert-manager (or the bootstrap) rotates: a new key, even a new CA.
    let second_ca = Pki::new("second");
    let second = second_ca.serving();
    write_pair(dir.path(), &second);
    until_served(addr, &[second_ca.root()], "localhost", &der(&second.0)).await;
    assert!(
        connect(addr, &[first_ca.root()], "localhost").await.is_err(),
        "the old CA no longer verifies what is served"
    );
    let expiry = cert.not_after().unwrap();
    assert!(metrics.render().contains(&format!(
        "portcullis_operator_webhook_cert_expiry_timestamp_seconds {expiry}"
    )));
    assert!(expiry >= first_expiry);

    // A broken write (key of another certificate) keeps the certificate in force.
    let (_, other_key) = second_ca.serving();
    std::fs::write(dir.path().join("tls.key"), other_key).unwrap();
    assert!(cert.reload().is_err());
    let (_, shown) = connect(addr, &[second_ca.root()], "localhost").await.unwrap();
    assert_eq!(shown, der(&second.0));
}

async fn webhook_config(client: &Client) -> Api<MutatingWebhookConfiguration> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let config: MutatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": "portcullis-sidecar-injector"},
        "webhooks": [
            {"name": "pods.inject.portcullis.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"service": {"name": "portcullis-webhook", "namespace": OPERATOR_NS, "path": "/inject"}}},
            {"name": "namespaces.inject.portcullis.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
             "clientConfig": {"service": {"name": "portcullis-webhook", "namespace": OPERATOR_NS, "path": "/inject/namespace"}}},
        ]
    }))
    .unwrap();
    api.create(&PostParams::default(), &config).await.unwrap();
    api
}

fn ca_bundles(config: &MutatingWebhookConfiguration) -> Vec<Vec<CertificateDer<'static>>> {
    config
        .webhooks
        .iter()
        .flatten()
        .map(|w| {
            let bundle = w
                .client_config
                .ca_bundle
                .as_ref()
                .map(|b| b.0.clone())
                .unwrap_or_default();
            CertificateDer::pem_slice_iter(&bundle)
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
        .collect()
}

fn tls_bootstrap(dir: &Path) -> TlsBootstrap {
    TlsBootstrap::new(
        OPERATOR_NS,
        "portcullis-webhook-tls",
        "portcullis-sidecar-injector",
        "portcullis-webhook",
        dir.to_path_buf(),
    )
}

const SERVICE_NAME: &str = "portcullis-webhook.portcullis-system.svc";

#[tokio::test]
async fn the_bootstrap_makes_a_ca_and_serving_certificate_that_the_api_server_would_trust() {
    let client = local::memory_api();
    let configs = webhook_config(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = tls_bootstrap(dir.path());
    let now = jiff::Timestamp::now().as_second();
    let outcome = bootstrap::reconcile(&client, &cfg, now).await.unwrap();
    assert!(
        outcome.created && outcome.files_written && outcome.ca_bundle_patched,
        "{outcome:?}"
    );

    let secret = Api::<Secret>::namespaced(client.clone(), OPERATOR_NS)
        .get("portcullis-webhook-tls")
        .await
        .unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    assert_eq!(
        secret.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "portcullis-operator"
    );
    let data = secret.data.unwrap();
    for key in ["ca.crt", "ca.key", "tls.crt", "tls.key"] {
        assert!(data.contains_key(key), "{key}");
    }
    assert_eq!(std::fs::read(dir.path().join("tls.crt")).unwrap(), data["tls.crt"].0);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(dir.path().join("tls.key")).unwrap().permissions());
    assert_eq!(mode & 0o077, 0, "the key is readable by the operator alone");

    // Both webhooks carry the CA; a server on the files is trusted by it under the Service's name.
    let bundles = ca_bundles(&configs.get("portcullis-sidecar-injector").await.unwrap());
    assert_eq!(bundles.len(), 2);
    assert_eq!(bundles[0], bundles[1]);
    let (addr, _) = serve(dir.path(), injector(), Arc::new(Metrics::new())).await;
    let (_, shown) = connect(addr, &bundles[0], SERVICE_NAME).await.unwrap();
    assert_eq!(shown.as_ref(), der_of(&data["tls.crt"].0).as_slice());
    assert!(
        connect(addr, &bundles[0], "elsewhere.example").await.is_err(),
        "the certificate names the Service only"
    );

    // Nothing to do the second time; an emptied caBundle (a Helm upgrade) is set again.
    let again = bootstrap::reconcile(&client, &cfg, now).await.unwrap();
    assert_eq!(
        again,
        bootstrap::Outcome {
            serving_not_after: outcome.serving_not_after,
            ..bootstrap::Outcome::default()
        }
    );
    let emptied = json!([{"op": "remove", "path": "/webhooks/1/clientConfig/caBundle"}]);
    configs
        .patch(
            "portcullis-sidecar-injector",
            &PatchParams::default(),
            &Patch::<()>::Json(serde_json::from_value(emptied).unwrap()),
        )
        .await
        .unwrap();
    assert!(
        bootstrap::reconcile(&client, &cfg, now)
            .await
            .unwrap()
            .ca_bundle_patched
    );
    assert_eq!(
        ca_bundles(&configs.get("portcullis-sidecar-injector").await.unwrap())[1],
        bundles[0]
    );
}

fn der_of(pem: &[u8]) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem).unwrap().as_ref().to_vec()
}

#[tokio::test]
async fn certificates_rotate_at_two_thirds_of_their_life_and_the_server_follows() {
    let client = local::memory_api();
    let configs = webhook_config(&client).await;
    let dir = tempfile::tempdir().unwrap();
    // Short lives, so that the rotated certificates are valid by the real clock too
    // (they start five minutes early for clock skew).
    let cfg = TlsBootstrap {
        serving_validity: Duration::from_secs(90),
        ca_validity: Duration::from_secs(180),
        ..tls_bootstrap(dir.path())
    };
    let t = jiff::Timestamp::now().as_second();
    bootstrap::reconcile(&client, &cfg, t).await.unwrap();
    let (addr, cert) = serve(dir.path(), injector(), Arc::new(Metrics::new())).await;
    let first = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    let first_bundle = ca_bundles(&configs.get("portcullis-sidecar-injector").await.unwrap())[0].clone();
    assert_eq!(first_bundle.len(), 1);

    // Before two thirds of 90 s: nothing. After: a new serving certificate, same CA.
    let early = bootstrap::reconcile(&client, &cfg, t + 59).await.unwrap();
    assert!(
        !early.serving_rotated && !early.ca_rotated && !early.files_written,
        "{early:?}"
    );
    let rotated = bootstrap::reconcile(&client, &cfg, t + 61).await.unwrap();
    assert!(
        rotated.serving_rotated && !rotated.ca_rotated && rotated.files_written,
        "{rotated:?}"
    );
    assert!(!rotated.ca_bundle_patched, "same CA, same bundle");
    assert!(rotated.serving_not_after > early.serving_not_after);
    let second = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    assert_ne!(first, second);
    let second_key = std::fs::read_to_string(dir.path().join("tls.key")).unwrap();
    until_served(addr, &first_bundle, SERVICE_NAME, &der(&second)).await;
    assert_eq!(cert.not_after(), Some(rotated.serving_not_after));

    // Past two thirds of the CA's 180 s: a new CA, the old one kept in the bundle while it
    // is valid, a serving certificate of the new CA, trusted through the new bundle.
    let ca_rotated = bootstrap::reconcile(&client, &cfg, t + 121).await.unwrap();
    assert!(ca_rotated.ca_rotated && ca_rotated.ca_bundle_patched, "{ca_rotated:?}");
    let bundle = ca_bundles(&configs.get("portcullis-sidecar-injector").await.unwrap())[0].clone();
    assert_eq!(bundle.len(), 2, "new CA and the previous one");
    assert_eq!(bundle[1], first_bundle[0]);
    let third = std::fs::read_to_string(dir.path().join("tls.crt")).unwrap();
    until_served(addr, &bundle, SERVICE_NAME, &der(&third)).await;
    assert!(
        connect(addr, &first_bundle, SERVICE_NAME).await.is_err(),
        "served by the new CA"
    );
    // A replica still serving the old certificate is trusted by the new bundle.
    let old_dir = tempfile::tempdir().unwrap();
    write_pair(old_dir.path(), &(second.clone(), second_key));
    let (old_addr, _) = serve(old_dir.path(), injector(), Arc::new(Metrics::new())).await;
    let (_, shown) = connect(old_addr, &bundle, SERVICE_NAME).await.unwrap();
    assert_eq!(shown, der(&second));

    // When the old CA has expired, it leaves the bundle.
    let later = bootstrap::reconcile(&client, &cfg, t + 181).await.unwrap();
    assert!(later.ca_bundle_patched, "{later:?}");
    assert_eq!(
        ca_bundles(&configs.get("portcullis-sidecar-injector").await.unwrap())[0].len(),
        1
    );
}

#[tokio::test]
async fn replicas_bootstrapping_at_once_end_up_serving_the_same_certificate() {
    let client = local::memory_api();
    webhook_config(&client).await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (cfg_a, cfg_b) = (tls_bootstrap(a.path()), tls_bootstrap(b.path()));
    let now = jiff::Timestamp::now().as_second();
    let (ra, rb) = tokio::join!(
        bootstrap::reconcile(&client, &cfg_a, now),
        bootstrap::reconcile(&client, &cfg_b, now)
    );
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert!(
        ra.created != rb.created,
        "one created the Secret, the other read it: {ra:?} {rb:?}"
    );
    let read = |dir: &Path| std::fs::read(dir.join("tls.crt")).unwrap();
    assert_eq!(
        read(a.path()),
        read(b.path()),
        "the loser serves the winner's certificate"
    );
}

#[tokio::test]
async fn without_the_webhook_configuration_the_files_are_still_written() {
    let client = local::memory_api();
    let dir = tempfile::tempdir().unwrap();
    let outcome = bootstrap::reconcile(&client, &tls_bootstrap(dir.path()), jiff::Timestamp::now().as_second())
        .await
        .unwrap();
    assert!(outcome.webhook_config_missing && outcome.files_written, "{outcome:?}");
}

// ---------------------------------------------------------------------------------------
// Readiness: every replica, leader or not.

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    out
}

async fn admin_port(
    webhook: &portcullis_operator::webhook::Webhook,
    metrics: Arc<Metrics>,
) -> (SocketAddr, tempfile::TempDir) {
    use portcullis_operator::admin::{self, AdminState};
    use portcullis_operator::store::{DbConfig, Store};
    let db = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/portcullis.db", db.path().display());
    let store = Store::open(&DbConfig::from_url(&url).unwrap()).await.unwrap();
    let ready = portcullis_operator::health::readiness(store, metrics.clone(), vec![Arc::new(webhook.check())]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(admin::serve(
        listener,
        AdminState { metrics, ready },
        std::future::pending(),
    ));
    (addr, db)
}

fn webhook_args(dir: &Path, cert_manager: bool) -> portcullis_operator::webhook::WebhookArgs {
    portcullis_operator::webhook::WebhookArgs {
        enabled: true,
        webhook_addr: "127.0.0.1:0".parse().unwrap(),
        webhook_tls_dir: dir.to_path_buf(),
        webhook_secret: "portcullis-webhook-tls".into(),
        webhook_config: "portcullis-sidecar-injector".into(),
        webhook_service: "portcullis-webhook".into(),
        webhook_cert_manager: cert_manager,
        sidecar_image: Some("registry.example/portcullis-proxy:0.1.0".into()),
        sidecar_defaults: Some(r#"{"logLevel": "warn"}"#.into()),
        control_plane_url: None,
        control_plane_ca_configmap: None,
    }
}

#[tokio::test]
async fn a_replica_that_does_not_lead_is_ready_once_its_webhook_serves() {
    let client = local::memory_api();
    webhook_config(&client).await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let served = portcullis_operator::webhook::start(
        &webhook_args(dir.path(), false),
        OPERATOR_NS,
        client.clone(),
        metrics.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let (admin, _db) = admin_port(&served, metrics.clone()).await;
    let ready = get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let text = metrics.render();
    assert!(
        text.lines().any(|l| l == "portcullis_operator_leader 0"),
        "not the leader: {text}"
    );
    let expiry = text
        .lines()
        .find_map(|l| l.strip_prefix("portcullis_operator_webhook_cert_expiry_timestamp_seconds "))
        .unwrap();
    assert!(expiry.parse::<i64>().unwrap() > jiff::Timestamp::now().as_second() + 300 * 86_400);

    // The bootstrapped certificate is served and trusted by the caBundle.
    let config = Api::<MutatingWebhookConfiguration>::all(client)
        .get("portcullis-sidecar-injector")
        .await
        .unwrap();
    let pod = app_pod(json!({"portcullis.io/inject": "enabled"}));
    let roots = ca_bundles(&config)[0].clone();
    let (mut stream, _) = connect(served.addr, &roots, SERVICE_NAME).await.unwrap();
    let body = serde_json::to_vec(&review("shop", &pod)).unwrap();
    let head = format!(
        "POST /inject HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    let (_, json_body) = answer.split_once("\r\n\r\n").unwrap();
    let (_, patched) = apply(&pod, &serde_json::from_str(json_body).unwrap());
    let sidecar = &patched.spec.unwrap().init_containers.unwrap()[0];
    assert_eq!(
        env(sidecar, "PORTCULLIS_LOG").as_deref(),
        Some("warn"),
        "SIDECAR_DEFAULTS applied"
    );
}

#[tokio::test]
async fn a_replica_without_a_certificate_is_not_ready_and_says_why() {
    let client = local::memory_api();
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    // cert-manager mode with nothing mounted yet: no bootstrap, no certificate.
    let served = portcullis_operator::webhook::start(
        &webhook_args(dir.path(), true),
        OPERATOR_NS,
        client,
        metrics.clone(),
        std::future::pending(),
    )
    .await
    .unwrap();
    let (admin, _db) = admin_port(&served, metrics).await;
    let ready = get(admin, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    assert!(ready.contains("webhook: no serving certificate loaded yet"), "{ready}");
    assert!(get(admin, "/healthz").await.starts_with("HTTP/1.1 200"));
}

//! Which pods get the sidecar, with what settings, and the JSON patch that adds it.
//!
//! Traffic without iptables or privileges: the app keeps its port but listens on
//! loopback (`127.0.0.1:<app port>`), where nothing outside the pod reaches it; the
//! sidecar listens on all addresses on its own port, named `pc-proxy`, which is what the
//! Service targets, and forwards to the app on loopback. The app's declared container
//! port is removed (a Service that still targets it by name finds no endpoint: closed,
//! never around the sidecar) and the app's HTTP and TCP probes on that port are sent to
//! `pc-proxy` (the kubelet cannot reach loopback), so the paths they probe must be public
//! in the pod's AccessPolicy. A pod that starts without the sidecar (webhook down with
//! `failurePolicy: Ignore`) serves nobody: its app is on loopback and its Service has no
//! `pc-proxy` to reach.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

/// Pod annotation (and namespace label) that asks for the sidecar: `enabled` or `disabled`.
pub const INJECT: &str = "portcullis.io/inject";
/// Set on every pod the webhook changed; such a pod is never changed again.
pub const INJECTED: &str = "portcullis.io/injected";
pub const APP_PORT: &str = "portcullis.io/app-port";
pub const SIDECAR_IMAGE: &str = "portcullis.io/sidecar-image";
pub const SIDECAR_CPU: &str = "portcullis.io/sidecar-cpu";
pub const SIDECAR_MEMORY: &str = "portcullis.io/sidecar-memory";
pub const LOG_LEVEL: &str = "portcullis.io/log-level";
pub const TLS: &str = "portcullis.io/tls";
/// The Secret (`tls.crt`, `tls.key`, `ca.crt`, as cert-manager writes them) of the TLS listener.
pub const TLS_SECRET: &str = "portcullis.io/tls-secret";
pub const CLIENT_CERT: &str = "portcullis.io/client-cert";
pub const CONTROL_PLANE: &str = "portcullis.io/control-plane";
pub const NATIVE_SIDECAR: &str = "portcullis.io/native-sidecar";

/// The injected container's name.
pub const CONTAINER_NAME: &str = "portcullis-proxy";
/// The sidecar's serving port: the one the Service targets.
pub const PROXY_PORT_NAME: &str = "pc-proxy";
/// The sidecar's admin port: probes and Prometheus (the PodMonitor scrapes it).
pub const ADMIN_PORT_NAME: &str = "pc-admin";
/// Audience of the projected service-account token the sidecar shows the control plane.
pub const TOKEN_AUDIENCE: &str = "portcullis";
/// Lifetime of that token; the kubelet renews it at 80 % of it.
pub const TOKEN_SECONDS: i64 = 3600;

const TOKEN_VOLUME: &str = "portcullis-token";
const TOKEN_DIR: &str = "/var/run/secrets/portcullis.io/serviceaccount";
const CA_VOLUME: &str = "portcullis-control-plane-ca";
const CA_DIR: &str = "/var/run/portcullis/control-plane-ca";
const TLS_VOLUME: &str = "portcullis-tls";
const TLS_DIR: &str = "/var/run/portcullis/tls";
/// The distroless `nonroot` user: the image runs as it, and the pod is told so.
const SIDECAR_UID: i64 = 65_532;

const LOG_LEVELS: [&str; 5] = ["trace", "debug", "info", "warn", "error"];

/// Client certificates on the sidecar's TLS listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCert {
    Off,
    Optional,
    Require,
}

impl ClientCert {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "optional" => Some(Self::Optional),
            "require" => Some(Self::Require),
            _ => None,
        }
    }

    /// The sidecar's `--client-auth` value.
    fn flag(self) -> &'static str {
        match self {
            Self::Off => "none",
            Self::Optional => "optional",
            Self::Require => "required",
        }
    }
}

/// What the chart sets for every injected sidecar; annotations override it per pod.
/// `SIDECAR_DEFAULTS` is this as JSON (camelCase keys; an unknown key is an error).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SidecarDefaults {
    pub image: String,
    pub cpu: String,
    pub memory: String,
    pub log_level: String,
    /// `true`: an init container with `restartPolicy: Always` (Kubernetes ≥ 1.29).
    pub native_sidecar: bool,
    /// `off` or `on`.
    pub tls: String,
    /// `off`, `optional` or `require`.
    pub client_cert: String,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// Where sidecars fetch snapshots, e.g. `https://portcullis-api.portcullis-system.svc:8443`.
    pub control_plane: String,
    /// ConfigMap (in the pod's namespace) whose `ca.crt` verifies the control plane.
    pub control_plane_ca_config_map: Option<String>,
}

impl Default for SidecarDefaults {
    fn default() -> Self {
        SidecarDefaults {
            image: "ghcr.io/portcullis-io/portcullis-proxy:latest".into(),
            cpu: "50m".into(),
            memory: "64Mi".into(),
            log_level: "info".into(),
            native_sidecar: true,
            tls: "off".into(),
            client_cert: "off".into(),
            proxy_port: 15080,
            admin_port: 9090,
            control_plane: "https://portcullis-api.portcullis-system.svc:8443".into(),
            control_plane_ca_config_map: None,
        }
    }
}

/// Why the defaults cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("SIDECAR_DEFAULTS: {0}")]
pub struct DefaultsError(String);

/// The injection rules and the sidecar's defaults.
#[derive(Debug, Clone)]
pub struct Injector {
    defaults: SidecarDefaults,
    /// Never touched: kube-system, kube-public and the operator's namespace.
    excluded: Vec<String>,
}

/// What to do with one pod.
#[derive(Debug)]
pub enum Decision {
    /// Admit unchanged, for this reason.
    Skip(&'static str),
    /// Admit with this patch.
    Inject(json_patch::Patch),
    /// Refuse, with a message naming the annotation and what it accepts.
    Refuse(String),
}

/// The settings of one pod's sidecar: the defaults, overridden by its annotations.
struct Settings {
    image: String,
    cpu: String,
    memory: String,
    log_level: String,
    tls: bool,
    tls_secret: Option<String>,
    client_cert: ClientCert,
    control_plane: String,
    native: bool,
    app_port: u16,
}

impl Injector {
    /// Checks the defaults the way annotations are checked.
    pub fn new(defaults: SidecarDefaults, operator_namespace: &str) -> Result<Injector, DefaultsError> {
        let injector = Injector {
            excluded: vec![
                "kube-system".into(),
                "kube-public".into(),
                operator_namespace.to_string(),
            ],
            defaults,
        };
        let d = &injector.defaults;
        let checks = [
            ("image", valid_image(&d.image)),
            ("cpu", valid_quantity(&d.cpu)),
            ("memory", valid_quantity(&d.memory)),
            ("logLevel", LOG_LEVELS.contains(&d.log_level.as_str())),
            ("tls", on_off(&d.tls).is_some()),
            ("clientCert", ClientCert::parse(&d.client_cert).is_some()),
            ("controlPlane", valid_control_plane(&d.control_plane)),
            ("proxyPort", d.proxy_port != 0 && d.proxy_port < u16::MAX),
            (
                "adminPort",
                d.admin_port != 0 && d.admin_port != d.proxy_port && d.admin_port != plain_port(d.proxy_port),
            ),
        ];
        if let Some((field, _)) = checks.iter().find(|(_, ok)| !ok) {
            return Err(DefaultsError(format!("{field} is not valid")));
        }
        Ok(injector)
    }

    pub fn defaults(&self) -> &SidecarDefaults {
        &self.defaults
    }

    /// Decides for a pod being created in `namespace`; `namespace_opted_in` when the
    /// namespace carries the `portcullis.io/inject=enabled` label (the webhook
    /// configuration routes such namespaces to their own path).
    pub fn decide(&self, namespace: &str, pod: &Pod, namespace_opted_in: bool) -> Decision {
        if self.excluded.iter().any(|n| n == namespace) {
            return Decision::Skip("excluded namespace");
        }
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let wanted = match annotations.get(INJECT).map(String::as_str) {
            Some("enabled") => true,
            Some("disabled") => false,
            Some(other) => return Decision::Refuse(refusal(INJECT, other, "enabled or disabled")),
            None => namespace_opted_in,
        };
        if !wanted {
            return Decision::Skip("not opted in");
        }
        if already_injected(pod) {
            return Decision::Skip("already injected");
        }
        let Some(spec) = pod.spec.as_ref() else {
            return Decision::Skip("no pod spec");
        };
        let settings = match self.settings(&annotations, &spec.containers) {
            Ok(s) => s,
            Err(message) => return Decision::Refuse(message),
        };
        match self.patch(pod, &settings) {
            Ok(patch) => Decision::Inject(patch),
            Err(message) => Decision::Refuse(message),
        }
    }

    fn settings(&self, annotations: &BTreeMap<String, String>, containers: &[Container]) -> Result<Settings, String> {
        let d = &self.defaults;
        let text = |key: &str, ok: fn(&str) -> bool, accepted: &str, default: &str| match annotations.get(key) {
            Some(v) if ok(v) => Ok(v.clone()),
            Some(v) => Err(refusal(key, v, accepted)),
            None => Ok(default.to_string()),
        };
        let image = text(
            SIDECAR_IMAGE,
            valid_image,
            "an image reference without spaces",
            &d.image,
        )?;
        let quantity = "a Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi";
        let cpu = text(SIDECAR_CPU, valid_quantity, quantity, &d.cpu)?;
        let memory = text(SIDECAR_MEMORY, valid_quantity, quantity, &d.memory)?;
        let log_level = text(
            LOG_LEVEL,
            |v| LOG_LEVELS.contains(&v),
            "trace, debug, info, warn or error",
            &d.log_level,
        )?;
        let control_plane = text(
            CONTROL_PLANE,
            valid_control_plane,
            "an https:// URL of the control plane",
            &d.control_plane,
        )?;
        let tls = match annotations.get(TLS) {
            Some(v) => on_off(v).ok_or_else(|| refusal(TLS, v, "off or on"))?,
            None => on_off(&d.tls).unwrap_or(false),
        };
        let client_cert = match annotations.get(CLIENT_CERT) {
            Some(v) => ClientCert::parse(v).ok_or_else(|| refusal(CLIENT_CERT, v, "off, optional or require"))?,
            None => ClientCert::parse(&d.client_cert).unwrap_or(ClientCert::Off),
        };
        let native = match annotations.get(NATIVE_SIDECAR).map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            Some(v) => return Err(refusal(NATIVE_SIDECAR, v, "true or false")),
            None => d.native_sidecar,
        };
        let tls_secret = match annotations.get(TLS_SECRET) {
            Some(v) if valid_name(v) => Some(v.clone()),
            Some(v) => return Err(refusal(TLS_SECRET, v, "the name of a Secret of the pod's namespace")),
            None => None,
        };
        if tls && tls_secret.is_none() {
            return Err(format!(
                "annotation {TLS_SECRET}: required with {TLS}: on (the Secret holding tls.crt, tls.key and, for client certificates, ca.crt)"
            ));
        }
        if client_cert != ClientCert::Off && !tls {
            return Err(format!(
                "annotation {CLIENT_CERT}: optional and require need {TLS}: on (client certificates come over TLS)"
            ));
        }
        let app_port = match annotations.get(APP_PORT) {
            Some(v) => v
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| refusal(APP_PORT, v, "the port the app listens on, 1-65535"))?,
            None => {
                let declared: Vec<i32> = containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .map(|p| p.container_port)
                    .collect();
                match declared.as_slice() {
                    [one] => u16::try_from(*one).map_err(|_| refusal(APP_PORT, &one.to_string(), "1-65535"))?,
                    _ => {
                        return Err(format!(
                            "annotation {APP_PORT}: required, the pod declares {} container ports; accepted: the port the app listens on, 1-65535",
                            declared.len()
                        ));
                    }
                }
            }
        };
        let taken = [
            (d.proxy_port, "serving (pc-proxy)"),
            (d.admin_port, "admin (pc-admin)"),
            (plain_port(d.proxy_port), "loopback HTTP"),
        ];
        if let Some((_, what)) = taken.iter().find(|(port, _)| *port == app_port) {
            return Err(format!(
                "annotation {APP_PORT}: {app_port} is the sidecar's {what} port; accepted: any other port, 1-65535"
            ));
        }
        Ok(Settings {
            image,
            cpu,
            memory,
            log_level,
            tls,
            tls_secret,
            client_cert,
            control_plane,
            native,
            app_port,
        })
    }

    /// The JSON patch, written op by op against the pod as the API server holds it.
    fn patch(&self, pod: &Pod, s: &Settings) -> Result<json_patch::Patch, String> {
        let spec = pod.spec.as_ref().ok_or("no pod spec")?;
        let mut ops: Vec<Value> = Vec::new();
        // The marker first: a pod that has it is never changed again.
        if pod.metadata.annotations.is_none() {
            ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {INJECTED: "true"}}));
        } else {
            ops.push(
                json!({"op": "add", "path": format!("/metadata/annotations/{}", escape(INJECTED)), "value": "true"}),
            );
        }
        // The app's port goes to the sidecar (by name too: probes naming it are rewritten).
        for (i, container) in spec.containers.iter().enumerate() {
            let ports = container.ports.as_deref().unwrap_or_default();
            let names: Vec<&str> = ports
                .iter()
                .filter(|p| p.container_port == i32::from(s.app_port))
                .filter_map(|p| p.name.as_deref())
                .collect();
            for (kind, probe) in [
                ("livenessProbe", &container.liveness_probe),
                ("readinessProbe", &container.readiness_probe),
                ("startupProbe", &container.startup_probe),
            ] {
                if let Some(probe) = probe {
                    ops.extend(self.probe_ops(&format!("/spec/containers/{i}/{kind}"), probe, s, &names));
                }
            }
            for (j, _) in ports
                .iter()
                .enumerate()
                .rev()
                .filter(|(_, p)| p.container_port == i32::from(s.app_port))
            {
                ops.push(json!({"op": "remove", "path": format!("/spec/containers/{i}/ports/{j}")}));
            }
        }
        let sidecar = self.container(pod, s);
        match (s.native, spec.init_containers.is_some()) {
            // First of the init containers: those after it, and the app, start once it is up.
            (true, true) => ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": sidecar})),
            (true, false) => ops.push(json!({"op": "add", "path": "/spec/initContainers", "value": [sidecar]})),
            (false, _) => ops.push(json!({"op": "add", "path": "/spec/containers/-", "value": sidecar})),
        }
        let mut volumes = vec![json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"
            }}]}
        })];
        if let Some(map) = &self.defaults.control_plane_ca_config_map {
            volumes.push(json!({"name": CA_VOLUME, "configMap": {"name": map, "optional": true}}));
        }
        if let Some(secret) = &s.tls_secret {
            volumes.push(json!({"name": TLS_VOLUME, "secret": {"secretName": secret}}));
        }
        if spec.volumes.is_none() {
            ops.push(json!({"op": "add", "path": "/spec/volumes", "value": volumes}));
        } else {
            ops.extend(
                volumes
                    .into_iter()
                    .map(|v| json!({"op": "add", "path": "/spec/volumes/-", "value": v})),
            );
        }
        serde_json::from_value(Value::Array(ops)).map_err(|e| format!("internal error building the patch: {e}"))
    }

    /// A probe of the app's port, rewritten to the sidecar's: the app listens on loopback.
    fn probe_ops(&self, path: &str, probe: &Probe, s: &Settings, names: &[&str]) -> Vec<Value> {
        let on_app = |port: &IntOrString| match port {
            IntOrString::Int(p) => *p == i32::from(s.app_port),
            IntOrString::String(name) => names.contains(&name.as_str()),
        };
        let port = i32::from(self.defaults.proxy_port);
        let mut ops = Vec::new();
        if let Some(get) = &probe.http_get
            && on_app(&get.port)
        {
            ops.push(json!({"op": "replace", "path": format!("{path}/httpGet/port"), "value": port}));
            if s.tls {
                ops.push(json!({"op": "add", "path": format!("{path}/httpGet/scheme"), "value": "HTTPS"}));
            }
        }
        if let Some(tcp) = &probe.tcp_socket
            && on_app(&tcp.port)
        {
            ops.push(json!({"op": "replace", "path": format!("{path}/tcpSocket/port"), "value": port}));
        }
        ops
    }

    /// The sidecar container: non-root, read-only, no capabilities, its flags as
    /// `PORTCULLIS_*` variables.
    fn container(&self, pod: &Pod, s: &Settings) -> Value {
        let d = &self.defaults;
        let labels = pod
            .metadata
            .labels
            .iter()
            .flatten()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let serving = format!("0.0.0.0:{}", d.proxy_port);
        let mut env = vec![
            json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
            json!({"name": "PORTCULLIS_UPSTREAM", "value": format!("http://127.0.0.1:{}", s.app_port)}),
            json!({"name": "PORTCULLIS_ADMIN_LISTEN", "value": format!("0.0.0.0:{}", d.admin_port)}),
            json!({"name": "PORTCULLIS_CONTROL_PLANE", "value": s.control_plane}),
            json!({"name": "PORTCULLIS_CONTROL_PLANE_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")}),
            json!({"name": "PORTCULLIS_POD_LABELS", "value": labels}),
            json!({"name": "PORTCULLIS_LOG", "value": s.log_level}),
            // Without a CPU limit the proxy would start a thread per node core: as many
            // as its CPU request covers (one for the usual fraction of a core).
            json!({"name": "PORTCULLIS_WORKERS", "value": cpu_workers(&s.cpu).to_string()}),
        ];
        if d.control_plane_ca_config_map.is_some() {
            env.push(json!({"name": "PORTCULLIS_CONTROL_PLANE_CA", "value": format!("{CA_DIR}/ca.crt")}));
        }
        if s.tls {
            // The plain listener cannot be switched off; it stays on loopback.
            env.push(json!({"name": "PORTCULLIS_LISTEN", "value": format!("127.0.0.1:{}", plain_port(d.proxy_port))}));
            env.push(json!({"name": "PORTCULLIS_TLS_LISTEN", "value": serving}));
            env.push(json!({"name": "PORTCULLIS_TLS_CERT", "value": format!("{TLS_DIR}/tls.crt")}));
            env.push(json!({"name": "PORTCULLIS_TLS_KEY", "value": format!("{TLS_DIR}/tls.key")}));
            if s.client_cert != ClientCert::Off {
                env.push(json!({"name": "PORTCULLIS_CLIENT_AUTH", "value": s.client_cert.flag()}));
                env.push(json!({"name": "PORTCULLIS_CLIENT_CA", "value": format!("{TLS_DIR}/ca.crt")}));
            }
        } else {
            env.push(json!({"name": "PORTCULLIS_LISTEN", "value": serving}));
        }
        let mut mounts = vec![json!({"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true})];
        if d.control_plane_ca_config_map.is_some() {
            mounts.push(json!({"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": true}));
        }
        if s.tls_secret.is_some() {
            mounts.push(json!({"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": true}));
        }
        let probe = |path: &str, period: i32, failures: i32| json!({"httpGet": {"path": path, "port": ADMIN_PORT_NAME}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 2});
        let mut container = json!({
            "name": CONTAINER_NAME,
            "image": s.image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [
                {"name": PROXY_PORT_NAME, "containerPort": d.proxy_port, "protocol": "TCP"},
                {"name": ADMIN_PORT_NAME, "containerPort": d.admin_port, "protocol": "TCP"},
            ],
            "env": env,
            "volumeMounts": mounts,
            "resources": {
                "requests": {"cpu": s.cpu, "memory": s.memory},
                // No CPU limit: throttling a proxy adds latency to every request of the app.
                "limits": {"memory": s.memory},
            },
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": SIDECAR_UID,
                "runAsGroup": SIDECAR_UID,
                "readOnlyRootFilesystem": true,
                "allowPrivilegeEscalation": false,
                "privileged": false,
                "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "livenessProbe": probe("/healthz", 10, 3),
            "readinessProbe": probe("/readyz", 5, 2),
            "terminationMessagePolicy": "FallbackToLogsOnError",
        });
        if s.native {
            container["restartPolicy"] = json!("Always");
            // The app starts once the sidecar listens (a native sidecar's startup probe gates it).
            container["startupProbe"] = probe("/healthz", 1, 30);
        }
        container
    }
}

/// Worker threads for a CPU request: whole cores, rounded up, at least one.
fn cpu_workers(cpu: &str) -> u32 {
    let cores = match cpu.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map(|m| m / 1000.0),
        None => cpu.parse::<f64>(),
    };
    match cores {
        // Bounded: a request of hundreds of cores is a typo, not a sidecar.
        Ok(c) if c.is_finite() && c > 0.0 => (c.ceil() as u32).clamp(1, 16),
        _ => 1,
    }
}

/// The plain listener's loopback port when the serving port is TLS.
fn plain_port(proxy_port: u16) -> u16 {
    proxy_port.wrapping_add(1)
}

fn already_injected(pod: &Pod) -> bool {
    let marked = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECTED))
        .is_some_and(|v| v == "true");
    let present = pod.spec.as_ref().is_some_and(|spec| {
        spec.containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .any(|c| c.name == CONTAINER_NAME)
    });
    marked || present
}

/// The message of a refused pod: the annotation, its value and what it accepts.
fn refusal(annotation: &str, value: &str, accepted: &str) -> String {
    let shown: String = value.chars().take(64).collect();
    format!("annotation {annotation}: {shown:?} is not accepted; accepted: {accepted}")
}

/// RFC 6901: `~` and `/` in a key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" => Some(true),
        "off" => Some(false),
        _ => None,
    }
}

fn valid_image(image: &str) -> bool {
    !image.is_empty() && image.len() <= 512 && !image.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_control_plane(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|u| u.scheme() == "https" && u.host_str().is_some_and(|h| !h.is_empty()))
}

/// A DNS-1123 subdomain (the name of a Secret).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// A Kubernetes quantity: a positive decimal number with an optional SI or binary
/// suffix, or a decimal exponent (`100m`, `0.5`, `64Mi`, `1e3`).
pub fn valid_quantity(q: &str) -> bool {
    let digits_end = q.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(q.len());
    let (number, suffix) = q.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
        .is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    number_ok && suffix_ok && q.len() <= 64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "1", "64Mi", "1Gi", "2k", "1e3", "1.5E+2"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "-1", "1.2.3", "64MB", "lots", "1e", "1 Gi", "."] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn defaults_are_checked_like_annotations() {
        assert!(Injector::new(SidecarDefaults::default(), "portcullis-system").is_ok());
        let bad = SidecarDefaults {
            memory: "lots".into(),
            ..SidecarDefaults::default()
        };
        let err = Injector::new(bad, "p").unwrap_err().to_string();
        assert!(err.contains("memory"), "{err}");
        let json: Result<SidecarDefaults, _> = serde_json::from_str(r#"{"imagee": "x"}"#);
        assert!(json.is_err(), "a typo in SIDECAR_DEFAULTS is an error");
        let json: SidecarDefaults = serde_json::from_str(r#"{"logLevel": "debug", "nativeSidecar": false}"#).unwrap();
        assert_eq!(json.log_level, "debug");
        assert!(!json.native_sidecar);
        assert_eq!(json.proxy_port, 15080, "the rest keeps its default");
    }

    #[test]
    fn workers_follow_the_cpu_request() {
        assert_eq!(cpu_workers("50m"), 1);
        assert_eq!(cpu_workers("1500m"), 2);
        assert_eq!(cpu_workers("2"), 2);
        assert_eq!(cpu_workers("1e3"), 16);
        assert_eq!(cpu_workers("1k"), 1, "unusual suffixes fall back to one");
    }

    #[test]
    fn names_and_escapes() {
        assert_eq!(escape("portcullis.io/injected"), "portcullis.io~1injected");
        assert!(valid_name("api-tls"));
        assert!(!valid_name("Api_TLS"));
        assert!(!valid_name("-x"));
        assert!(valid_control_plane("https://portcullis-api.portcullis-system.svc:8443"));
        assert!(!valid_control_plane("http://portcullis-api:8443"));
    }
}

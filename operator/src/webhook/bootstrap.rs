//! The webhook's TLS, bootstrapped by the operator (unless cert-manager does it): a CA
//! and a serving certificate kept in a Secret, the CA bundle patched into the
//! MutatingWebhookConfiguration, both rotated at two thirds of their lives, and the
//! serving certificate written to the files the server reloads.
//!
//! Every replica runs [`reconcile`] (every replica serves the webhook, leader or not).
//! Replicas agree through the Secret: it is created once (a second create gets 409 and
//! reads the winner's) and replaced with its resourceVersion (a stale replace gets 409
//! and the next pass reads the winner's), so the first writer's certificates are the
//! ones everybody serves. When the CA rotates, the old CA stays in the bundle until it
//! expires, so the API server trusts both the new serving certificate and any replica
//! still serving the old one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use x509_cert::der::{Decode, Tag, Tagged};

use super::tls::{not_after, not_before};
use crate::controller::MANAGER;

/// Keys of the Secret, as cert-manager names them (so the chart mounts either alike).
pub const CA_CRT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CRT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
/// Annotation of the Secret: the DNS names the serving certificate was made for.
const NAMES_ANNOTATION: &str = "portcullis.io/serving-names";
const COMMON_NAME: x509_cert::der::asn1::ObjectIdentifier =
    x509_cert::der::asn1::ObjectIdentifier::new_unwrap("2.5.4.3");
/// Certificates start this much in the past: clocks of the API servers may lag ours.
const CLOCK_SKEW: i64 = 300;

/// Where the certificates live and what they are for.
#[derive(Debug, Clone)]
pub struct TlsBootstrap {
    /// The operator's namespace (the Secret's and the Service's).
    pub namespace: String,
    pub secret: String,
    /// The MutatingWebhookConfiguration whose `caBundle`s are set.
    pub webhook_config: String,
    /// The webhook's Service: the serving certificate's names.
    pub service: String,
    /// Where `tls.crt` and `tls.key` are written for the server.
    pub dir: PathBuf,
    pub ca_validity: Duration,
    pub serving_validity: Duration,
}

impl TlsBootstrap {
    /// Five years for the CA, one for the serving certificate.
    pub fn new(namespace: &str, secret: &str, webhook_config: &str, service: &str, dir: PathBuf) -> Self {
        TlsBootstrap {
            namespace: namespace.to_string(),
            secret: secret.to_string(),
            webhook_config: webhook_config.to_string(),
            service: service.to_string(),
            dir,
            ca_validity: Duration::from_secs(5 * 365 * 86_400),
            serving_validity: Duration::from_secs(365 * 86_400),
        }
    }

    /// The names the API server may call the Service by.
    pub fn names(&self) -> Vec<String> {
        let (svc, ns) = (&self.service, &self.namespace);
        vec![
            svc.clone(),
            format!("{svc}.{ns}"),
            format!("{svc}.{ns}.svc"),
            format!("{svc}.{ns}.svc.cluster.local"),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the Secret kept changing under us; next pass")]
    Contended,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub created: bool,
    pub ca_rotated: bool,
    pub serving_rotated: bool,
    pub files_written: bool,
    pub ca_bundle_patched: bool,
    /// The MutatingWebhookConfiguration does not exist (yet): nothing to patch.
    pub webhook_config_missing: bool,
    /// End of validity of the serving certificate now in the Secret.
    pub serving_not_after: i64,
}

/// The certificates as the Secret holds them (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Material {
    /// The current CA first, then older CAs not yet expired.
    ca_bundle: Vec<String>,
    ca_key: String,
    tls_crt: String,
    tls_key: String,
    names: String,
}

/// One pass at `now` (Unix seconds): make the Secret hold valid certificates, write
/// the serving pair to disk, and patch the CA bundle into the webhook configuration.
pub async fn reconcile(client: &Client, cfg: &TlsBootstrap, now: i64) -> Result<Outcome, BootstrapError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.namespace);
    let mut outcome = Outcome::default();
    let names = cfg.names().join(",");
    let mut material = None;
    for _ in 0..3 {
        let current = secrets.get_opt(&cfg.secret).await?;
        let held = current.as_ref().and_then(read_secret);
        let wanted = match &held {
            None => {
                outcome.created = true;
                fresh(cfg, &names, now, Vec::new())?
            }
            Some(held) => {
                let mut next = held.clone();
                if needs_rotation(held.ca_bundle.first().map(String::as_str), now) {
                    outcome.ca_rotated = true;
                    let older: Vec<String> = held.ca_bundle.iter().filter(|ca| !expired(ca, now)).cloned().collect();
                    next = fresh(cfg, &names, now, older)?;
                } else {
                    next.ca_bundle
                        .retain(|ca| !expired(ca, now) || Some(ca) == held.ca_bundle.first());
                    if held.names != names || needs_rotation(Some(&held.tls_crt), now) {
                        outcome.serving_rotated = true;
                        let (crt, key) = serving(cfg, &held.ca_bundle[0], &held.ca_key, now)?;
                        next.tls_crt = crt;
                        next.tls_key = key;
                        next.names = names.clone();
                    }
                }
                next
            }
        };
        if held.as_ref() == Some(&wanted) {
            material = Some(wanted);
            break;
        }
        let written = match current {
            None => {
                secrets
                    .create(&PostParams::default(), &to_secret(cfg, &wanted, None))
                    .await
            }
            Some(current) => {
                let secret = to_secret(cfg, &wanted, Some(current.metadata));
                secrets.replace(&cfg.secret, &PostParams::default(), &secret).await
            }
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret = %format!("{}/{}", cfg.namespace, cfg.secret),
                    created = outcome.created, ca_rotated = outcome.ca_rotated, serving_rotated = outcome.serving_rotated,
                    "webhook certificates written"
                );
                material = Some(wanted);
                break;
            }
            // Another replica wrote first: read what it wrote.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                outcome = Outcome::default();
                continue;
            }
            Err(err) => return Err(err.into()),
        }
    }
    let material = material.ok_or(BootstrapError::Contended)?;
    outcome.serving_not_after = pem_not_after(&material.tls_crt).unwrap_or(0);
    outcome.files_written = write_files(&cfg.dir, &material)?;
    let bundle = material.ca_bundle.concat();
    match patch_ca_bundle(client, &cfg.webhook_config, bundle.as_bytes()).await? {
        Some(patched) => outcome.ca_bundle_patched = patched,
        None => outcome.webhook_config_missing = true,
    }
    Ok(outcome)
}

/// Runs [`reconcile`] every `period`, forever, logging what goes wrong.
pub async fn run(client: Client, cfg: TlsBootstrap, period: Duration, on_serving: impl Fn(i64) + Send + 'static) {
    let mut missing_logged = false;
    loop {
        let now = jiff::Timestamp::now().as_second();
        match reconcile(&client, &cfg, now).await {
            Ok(outcome) => {
                on_serving(outcome.serving_not_after);
                if outcome.webhook_config_missing && !missing_logged {
                    tracing::warn!(config = %cfg.webhook_config, "MutatingWebhookConfiguration not found; its caBundle will be set when it appears");
                }
                missing_logged = outcome.webhook_config_missing;
                if outcome.ca_bundle_patched {
                    tracing::info!(config = %cfg.webhook_config, "caBundle patched");
                }
            }
            Err(err) => tracing::warn!(error = %err, "webhook TLS bootstrap failed; retrying"),
        }
        tokio::time::sleep(period).await;
    }
}

/// A new CA (followed by `older` in the bundle) and a serving certificate it signs.
fn fresh(cfg: &TlsBootstrap, names: &str, now: i64, older: Vec<String>) -> Result<Material, BootstrapError> {
    let key = KeyPair::generate()?;
    let mut params = ca_params(&format!("portcullis-webhook-ca-{now}"));
    params.not_before = time_at(now - CLOCK_SKEW);
    params.not_after = time_at(now + secs(cfg.ca_validity));
    let ca = params.self_signed(&key)?;
    let (ca_crt, ca_key) = (ca.pem(), key.serialize_pem());
    let (tls_crt, tls_key) = serving(cfg, &ca_crt, &ca_key, now)?;
    let mut ca_bundle = vec![ca_crt];
    ca_bundle.extend(older);
    Ok(Material {
        ca_bundle,
        ca_key,
        tls_crt,
        tls_key,
        names: names.to_string(),
    })
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A serving certificate for the Service's names, signed by the CA.
fn serving(cfg: &TlsBootstrap, ca_crt: &str, ca_key: &str, now: i64) -> Result<(String, String), BootstrapError> {
    let ca_key = KeyPair::from_pem(ca_key)?;
    // The issuer's name is read from the CA certificate: each CA generation has its own.
    let der = CertificateDer::from_pem_slice(ca_crt.as_bytes()).map_err(|_| rcgen::Error::CouldNotParseCertificate)?;
    let common_name = common_name(&der).ok_or(rcgen::Error::CouldNotParseCertificate)?;
    let issuer = Issuer::new(ca_params(&common_name), ca_key);
    let names = cfg.names();
    let mut params = CertificateParams::new(names.clone())?;
    params.distinguished_name.push(DnType::CommonName, names[2].as_str());
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.use_authority_key_identifier_extension = true;
    params.not_before = time_at(now - CLOCK_SKEW);
    params.not_after = time_at(now + secs(cfg.serving_validity));
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 4)
}

fn time_at(unix: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(unix).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Past two thirds of its life, or unreadable.
fn needs_rotation(pem: Option<&str>, now: i64) -> bool {
    let Some(der) = pem.and_then(|p| CertificateDer::from_pem_slice(p.as_bytes()).ok()) else {
        return true;
    };
    match (not_before(&der), not_after(&der)) {
        // Our certificates start CLOCK_SKEW early; their life is counted from creation.
        (Ok(start), Ok(end)) => {
            let start = start + CLOCK_SKEW;
            now >= start + (end - start) * 2 / 3
        }
        _ => true,
    }
}

fn expired(pem: &str, now: i64) -> bool {
    pem_not_after(pem).is_none_or(|end| end <= now)
}

fn pem_not_after(pem: &str) -> Option<i64> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    not_after(&der).ok()
}

fn common_name(der: &[u8]) -> Option<String> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let subject = &cert.tbs_certificate.subject;
    let cn = subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == COMMON_NAME)?;
    match cn.value.tag() {
        Tag::Utf8String | Tag::PrintableString => std::str::from_utf8(cn.value.value()).ok().map(str::to_owned),
        _ => None,
    }
}

/// The certificates of a Secret, when it holds a complete set.
fn read_secret(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let text = |key: &str| String::from_utf8(data.get(key)?.0.clone()).ok();
    let ca_bundle = split_pem(&text(CA_CRT)?);
    let names = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NAMES_ANNOTATION).cloned())
        .unwrap_or_default();
    let material = Material {
        ca_key: text(CA_KEY)?,
        tls_crt: text(TLS_CRT)?,
        tls_key: text(TLS_KEY)?,
        ca_bundle,
        names,
    };
    (!material.ca_bundle.is_empty()).then_some(material)
}

/// The PEM blocks of a bundle, each with its trailing newline.
fn split_pem(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    text.split_inclusive(END)
        .map(str::trim)
        .filter(|block| block.ends_with(END))
        .map(|block| format!("{block}\n"))
        .collect()
}

fn to_secret(cfg: &TlsBootstrap, m: &Material, current: Option<ObjectMeta>) -> Secret {
    let mut metadata = current.unwrap_or_else(|| ObjectMeta {
        name: Some(cfg.secret.clone()),
        namespace: Some(cfg.namespace.clone()),
        ..ObjectMeta::default()
    });
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(NAMES_ANNOTATION.into(), m.names.clone());
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    Secret {
        metadata,
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (CA_CRT.to_string(), bytes(&m.ca_bundle.concat())),
            (CA_KEY.to_string(), bytes(&m.ca_key)),
            (TLS_CRT.to_string(), bytes(&m.tls_crt)),
            (TLS_KEY.to_string(), bytes(&m.tls_key)),
        ])),
        ..Secret::default()
    }
}

/// Writes the serving pair (and the CA bundle, for people) when the files differ; each
/// file is replaced by a rename, so the server never reads half a file.
fn write_files(dir: &Path, m: &Material) -> Result<bool, BootstrapError> {
    let io = |path: &Path, source| BootstrapError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut written = false;
    let bundle = m.ca_bundle.concat();
    // The key before the certificate: a reader that sees the new certificate finds its key.
    for (name, content) in [
        (TLS_KEY, m.tls_key.as_str()),
        (TLS_CRT, m.tls_crt.as_str()),
        (CA_CRT, bundle.as_str()),
    ] {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|old| old == content.as_bytes()) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        write_private(&tmp, content.as_bytes()).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        written = true;
    }
    Ok(written)
}

fn write_private(path: &Path, content: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(content)
}

/// Sets `caBundle` on every webhook of the configuration that lacks it; `None` when
/// the configuration does not exist.
async fn patch_ca_bundle(client: &Client, name: &str, bundle: &[u8]) -> Result<Option<bool>, BootstrapError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(config) = api.get_opt(name).await? else {
        return Ok(None);
    };
    let encoded = base64::engine::general_purpose::STANDARD.encode(bundle);
    let mut ops = Vec::new();
    for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
        if webhook.client_config.ca_bundle.as_ref().map(|b| b.0.as_slice()) == Some(bundle) {
            continue;
        }
        // The test pins the index to the webhook it was read for (a Helm upgrade may reorder).
        ops.push(serde_json::json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook.name}));
        ops.push(
            serde_json::json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}),
        );
    }
    if ops.is_empty() {
        return Ok(Some(false));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await?;
    Ok(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_bundles_split_into_certificates() {
        let a = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nBBBB\n-----END CERTIFICATE-----";
        assert_eq!(split_pem(&format!("{a}{b}\n")), [a.to_string(), format!("{b}\n")]);
        assert!(split_pem("").is_empty());
        assert!(split_pem("garbage").is_empty());
    }
}

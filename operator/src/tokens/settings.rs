//! The token service's settings: flags, each also an environment variable, with safe
//! defaults (production argon2id parameters, 15-minute access tokens, monthly rotation).

use std::net::IpAddr;
use std::path::PathBuf;

use crate::store::MAX_ACCESS_TOKEN_SECS;

/// Flags of the token service (flattened into `run` and `local`).
#[derive(clap::Args, Clone, Debug)]
pub struct TokenArgs {
    /// `iss` of our access tokens and base of the discovery document: the URL clients reach the control plane at.
    #[arg(long, env = "ISSUER_URL", default_value = "http://127.0.0.1:7070")]
    pub issuer_url: String,
    /// Access-token lifetime (`900`, `15m`, `1h`; at most 1h).
    #[arg(long, env = "ACCESS_TOKEN_TTL", default_value = "15m", value_parser = parse_duration)]
    pub access_token_ttl: i64,
    /// Refresh-token (session) lifetime without remember-me.
    #[arg(long, env = "REFRESH_TOKEN_TTL", default_value = "1d", value_parser = parse_duration)]
    pub refresh_token_ttl: i64,
    /// Session lifetime with remember-me.
    #[arg(long, env = "REMEMBER_ME_TTL", default_value = "30d", value_parser = parse_duration)]
    pub remember_me_ttl: i64,
    /// Signing keys are replaced this often (the old key stays published until its tokens expire).
    #[arg(long, env = "SIGNING_KEY_ROTATION", default_value = "30d", value_parser = parse_duration)]
    pub signing_key_rotation: i64,
    /// Secret (in the operator's namespace) holding the signing keys' key-encryption key (cluster mode).
    #[arg(long, env = "SIGNING_KEY_SECRET", default_value = "portcullis-signing-keys")]
    pub signing_key_secret: String,
    /// Link mailed for a password reset; `?token=…` is appended. Default: `<issuer-url>/reset-password`.
    #[arg(long, env = "PASSWORD_RESET_URL")]
    pub password_reset_url: Option<String>,
    /// argon2id memory in KiB for passwords set here (OWASP: 19456).
    #[arg(long, env = "ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    #[arg(long, env = "ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// argon2id lanes.
    #[arg(long, env = "ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Peers whose `X-Forwarded-For` names the client (sidecars, ingress), as addresses or CIDRs; loopback always.
    #[arg(long, env = "AUTH_TRUSTED_PROXIES", value_delimiter = ',')]
    pub auth_trusted_proxies: Vec<String>,
    /// SMTP server for reset mails; without it reset mails are not sent (and the log says so).
    #[arg(long, env = "SMTP_HOST")]
    pub smtp_host: Option<String>,
    /// SMTP port (default 587 with STARTTLS, 465 with TLS).
    #[arg(long, env = "SMTP_PORT")]
    pub smtp_port: Option<u16>,
    #[arg(long, env = "SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    #[arg(long, env = "SMTP_PASSWORD", hide_env_values = true)]
    pub smtp_password: Option<String>,
    /// Sender address of reset mails.
    #[arg(long, env = "SMTP_FROM", default_value = "portcullis@localhost")]
    pub smtp_from: String,
    /// `starttls` (default), `tls` (implicit, port 465) or `none` (only to a loopback server).
    #[arg(long, env = "SMTP_TLS", default_value = "starttls", value_parser = ["starttls", "tls", "none"])]
    pub smtp_tls: String,
    /// Extra CA certificates (PEM) to trust for the SMTP server, beside the system's.
    #[arg(long, env = "SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
}

impl TokenArgs {
    pub fn settings(&self) -> Result<Settings, String> {
        let argon2 = argon2::Params::new(
            self.argon2_memory_kib,
            self.argon2_iterations,
            self.argon2_parallelism,
            None,
        )
        .map_err(|e| format!("argon2 parameters: {e}"))?;
        let issuer = self.issuer_url.trim_end_matches('/').to_string();
        let mut trusted = Vec::new();
        for entry in &self.auth_trusted_proxies {
            trusted.push(
                Network::parse(entry)
                    .ok_or_else(|| format!("AUTH_TRUSTED_PROXIES: {entry:?} is no address or CIDR"))?,
            );
        }
        let smtp = match &self.smtp_host {
            Some(host) if !host.is_empty() => {
                let tls = match self.smtp_tls.as_str() {
                    "tls" => SmtpTls::Implicit,
                    "none" => SmtpTls::None,
                    _ => SmtpTls::StartTls,
                };
                Some(SmtpSettings {
                    host: host.clone(),
                    port: self
                        .smtp_port
                        .unwrap_or(if tls == SmtpTls::Implicit { 465 } else { 587 }),
                    username: self.smtp_username.clone().filter(|u| !u.is_empty()),
                    password: self.smtp_password.clone(),
                    from: self.smtp_from.clone(),
                    tls,
                    ca_file: self.smtp_ca_file.clone(),
                })
            }
            _ => None,
        };
        Ok(Settings {
            reset_url: self
                .password_reset_url
                .clone()
                .unwrap_or_else(|| format!("{issuer}/reset-password")),
            issuer,
            access_ttl: self.access_token_ttl,
            refresh_ttl: self.refresh_token_ttl,
            remember_me_ttl: self.remember_me_ttl,
            key_rotation: self.signing_key_rotation,
            publish_ahead: DEFAULT_PUBLISH_AHEAD,
            argon2,
            throttle: Throttle::default(),
            trusted_proxies: trusted,
            smtp,
        })
    }
}

/// A new key is published this long before it signs, so that every sidecar (long
/// polling, a second behind) and every replica (reloading every 30 s) knows it first.
pub const DEFAULT_PUBLISH_AHEAD: i64 = 60;

/// What the token service runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `iss`, without a trailing slash.
    pub issuer: String,
    /// Seconds.
    pub access_ttl: i64,
    pub refresh_ttl: i64,
    pub remember_me_ttl: i64,
    pub key_rotation: i64,
    pub publish_ahead: i64,
    pub reset_url: String,
    pub argon2: argon2::Params,
    pub throttle: Throttle,
    pub trusted_proxies: Vec<Network>,
    pub smtp: Option<SmtpSettings>,
}

impl Settings {
    /// Defaults for `issuer` (tests, benchmarks).
    pub fn new(issuer: &str) -> Settings {
        Settings {
            issuer: issuer.trim_end_matches('/').to_string(),
            access_ttl: 15 * 60,
            refresh_ttl: 24 * 3600,
            remember_me_ttl: 30 * 24 * 3600,
            key_rotation: 30 * 24 * 3600,
            publish_ahead: DEFAULT_PUBLISH_AHEAD,
            reset_url: format!("{}/reset-password", issuer.trim_end_matches('/')),
            argon2: crate::credentials::default_hash_params(),
            throttle: Throttle::default(),
            trusted_proxies: Vec::new(),
            smtp: None,
        }
    }

    /// Refuses settings that cannot be safe.
    pub fn check(&self) -> Result<(), String> {
        if !(self.issuer.starts_with("https://") || self.issuer.starts_with("http://")) {
            return Err(format!("ISSUER_URL {:?} is no http(s) URL", self.issuer));
        }
        if !(60..=MAX_ACCESS_TOKEN_SECS).contains(&self.access_ttl) {
            return Err(format!(
                "ACCESS_TOKEN_TTL must be between 1m and {MAX_ACCESS_TOKEN_SECS}s"
            ));
        }
        if self.refresh_ttl < self.access_ttl || self.remember_me_ttl < self.refresh_ttl {
            return Err(
                "REFRESH_TOKEN_TTL must be at least ACCESS_TOKEN_TTL, REMEMBER_ME_TTL at least REFRESH_TOKEN_TTL"
                    .into(),
            );
        }
        if self.key_rotation < 3600 {
            return Err("SIGNING_KEY_ROTATION must be at least 1h".into());
        }
        if let Some(smtp) = &self.smtp
            && smtp.tls == SmtpTls::None
            && !is_loopback_host(&smtp.host)
        {
            return Err("SMTP_TLS=none is only allowed to a loopback SMTP server".into());
        }
        Ok(())
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Brute-force rules: after `free` failures within `window` seconds, each failure
/// locks the key for `base · 2^(failures − free)` seconds, at most `max`.
#[derive(Clone, Copy, Debug)]
pub struct Throttle {
    pub account_free: i64,
    pub client_free: i64,
    pub base: i64,
    pub max: i64,
    pub window: i64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            account_free: 5,
            client_free: 20,
            base: 1,
            max: 15 * 60,
            window: 15 * 60,
        }
    }
}

impl Throttle {
    /// Lock duration after the `failures`-th failure (0: not locked).
    pub fn lock_for(&self, free: i64, failures: i64) -> i64 {
        if failures < free {
            return 0;
        }
        let exponent = u32::try_from(failures - free).unwrap_or(u32::MAX).min(30);
        self.base.saturating_mul(1i64 << exponent).min(self.max)
    }
}

/// SMTP settings (`SMTP_*`).
#[derive(Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from: String,
    pub tls: SmtpTls,
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("from", &self.from)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    StartTls,
    Implicit,
    /// Plain text, loopback servers only.
    None,
}

/// An address or a CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.trim().split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.trim().parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// `900`, `900s`, `15m`, `12h`, `30d` → seconds.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is no duration (e.g. 900, 15m, 12h, 30d)"))?;
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: unit must be s, m, h or d")),
    };
    n.checked_mul(factor).ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_networks_and_backoff() {
        assert_eq!(parse_duration("900"), Ok(900));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("30d"), Ok(2_592_000));
        assert!(parse_duration("3w").is_err());
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(Network::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        let t = Throttle::default();
        assert_eq!(t.lock_for(5, 4), 0);
        assert_eq!(t.lock_for(5, 5), 1);
        assert_eq!(t.lock_for(5, 7), 4);
        assert_eq!(t.lock_for(5, 60), 900);
    }
}

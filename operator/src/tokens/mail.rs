//! A small SMTP client for password-reset mails: STARTTLS (port 587) or implicit TLS
//! (port 465) with rustls and the ring provider already in the build, AUTH PLAIN when
//! a username is set, one message per connection. A full mail library would add
//! minutes to every build for a handful of commands.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::settings::{SmtpSettings, SmtpTls};

/// One SMTP conversation must end within this.
const CONVERSATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("SMTP {host}:{port}: {what}")]
    Smtp { host: String, port: u16, what: String },
    #[error("SMTP TLS setup: {0}")]
    Tls(String),
}

/// Sends mail through the configured server.
pub struct Mailer {
    settings: SmtpSettings,
    tls: TlsConnector,
}

impl Mailer {
    pub fn new(settings: SmtpSettings) -> Result<Mailer, MailError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for cert in native.certs {
            // A system certificate rustls cannot use is skipped, as browsers do.
            let _ = roots.add(cert);
        }
        if let Some(path) = &settings.ca_file {
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| MailError::Tls(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| MailError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| MailError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| MailError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Mailer {
            settings,
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    fn error(&self, what: impl Into<String>) -> MailError {
        MailError::Smtp {
            host: self.settings.host.clone(),
            port: self.settings.port,
            what: what.into(),
        }
    }

    /// Sends one plain-text message to `to`.
    pub async fn send(&self, to: &str, subject: &str, text: &str) -> Result<(), MailError> {
        tokio::time::timeout(CONVERSATION_TIMEOUT, self.converse(to, subject, text))
            .await
            .map_err(|_| self.error("timed out"))?
    }

    async fn converse(&self, to: &str, subject: &str, text: &str) -> Result<(), MailError> {
        let s = &self.settings;
        let tcp = TcpStream::connect((s.host.as_str(), s.port))
            .await
            .map_err(|e| self.error(format!("connect: {e}")))?;
        match s.tls {
            SmtpTls::Implicit => {
                let tls = self.handshake(tcp).await?;
                let mut conn = BufReader::new(tls);
                self.expect(&mut conn, 220).await?;
                self.command(&mut conn, "EHLO portcullis", 250).await?;
                self.deliver(&mut conn, to, subject, text).await
            }
            SmtpTls::StartTls => {
                let mut conn = BufReader::new(tcp);
                self.expect(&mut conn, 220).await?;
                let features = self.command(&mut conn, "EHLO portcullis", 250).await?;
                if !features.iter().any(|l| l.eq_ignore_ascii_case("STARTTLS")) {
                    // Never fall back to plain text: the mail carries a reset link.
                    return Err(self.error("the server does not offer STARTTLS"));
                }
                self.command(&mut conn, "STARTTLS", 220).await?;
                let tls = self.handshake(conn.into_inner()).await?;
                let mut conn = BufReader::new(tls);
                self.command(&mut conn, "EHLO portcullis", 250).await?;
                self.deliver(&mut conn, to, subject, text).await
            }
            SmtpTls::None => {
                let mut conn = BufReader::new(tcp);
                self.expect(&mut conn, 220).await?;
                self.command(&mut conn, "EHLO portcullis", 250).await?;
                self.deliver(&mut conn, to, subject, text).await
            }
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<tokio_rustls::client::TlsStream<TcpStream>, MailError> {
        let name =
            ServerName::try_from(self.settings.host.clone()).map_err(|e| self.error(format!("server name: {e}")))?;
        self.tls
            .connect(name, tcp)
            .await
            .map_err(|e| self.error(format!("TLS: {e}")))
    }

    async fn deliver<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut BufReader<S>,
        to: &str,
        subject: &str,
        text: &str,
    ) -> Result<(), MailError> {
        let s = &self.settings;
        if let Some(user) = &s.username {
            let password = s.password.as_deref().unwrap_or_default();
            let token = STANDARD.encode(format!("\0{user}\0{password}"));
            // Sent, never logged: `command` logs nothing.
            self.command(conn, &format!("AUTH PLAIN {token}"), 235).await?;
        }
        for address in [&s.from, &to.to_string()] {
            if address.contains(['\r', '\n', '<', '>']) {
                return Err(self.error("an address holds a line break or angle bracket"));
            }
        }
        self.command(conn, &format!("MAIL FROM:<{}>", s.from), 250).await?;
        self.command(conn, &format!("RCPT TO:<{to}>"), 250).await?;
        self.command(conn, "DATA", 354).await?;
        let mut message = format!(
            "From: <{from}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n",
            from = s.from
        );
        for line in text.split("\r\n") {
            // Dot-stuffing (RFC 5321 4.5.2).
            if line.starts_with('.') {
                message.push('.');
            }
            message.push_str(line);
            message.push_str("\r\n");
        }
        message.push_str(".\r\n");
        conn.get_mut()
            .write_all(message.as_bytes())
            .await
            .map_err(|e| self.error(format!("write: {e}")))?;
        self.expect(conn, 250).await?;
        // The message is accepted; a failed QUIT changes nothing.
        let _ = self.command(conn, "QUIT", 221).await;
        Ok(())
    }

    /// Sends a command and reads the reply; returns the reply's text lines.
    async fn command<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        conn: &mut BufReader<S>,
        line: &str,
        code: u16,
    ) -> Result<Vec<String>, MailError> {
        let verb = line.split(' ').next().unwrap_or_default().to_string();
        conn.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| self.error(format!("{verb}: write: {e}")))?;
        conn.get_mut()
            .flush()
            .await
            .map_err(|e| self.error(format!("{verb}: write: {e}")))?;
        self.reply(conn, code)
            .await
            .map_err(|e| self.error(format!("{verb}: {e}")))
    }

    /// Reads one reply (the greeting, the end of DATA) and checks its code.
    async fn expect<S: AsyncRead + Unpin>(&self, conn: &mut BufReader<S>, code: u16) -> Result<Vec<String>, MailError> {
        self.reply(conn, code).await.map_err(|e| self.error(e))
    }

    /// Reads one (possibly multi-line) reply; the error says what came instead.
    async fn reply<S: AsyncRead + Unpin>(&self, conn: &mut BufReader<S>, code: u16) -> Result<Vec<String>, String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = conn.read_line(&mut line).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 || line.len() > 4096 || lines.len() > 100 {
                return Err("connection closed or reply too long".into());
            }
            let line = line.trim_end();
            let got: u16 = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            if got != code {
                return Err(format!("expected {code}, got {line:?}"));
            }
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line.get(4..).unwrap_or_default().to_string());
            if !more {
                return Ok(lines);
            }
        }
    }
}

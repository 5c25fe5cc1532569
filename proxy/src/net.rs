//! Network plumbing: trusted peers, the client address behind them, and idle connections.

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// An address block, e.g. `10.0.0.0/8` or `::1/128`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_eq(u32::from(net).into(), u32::from(ip).into(), self.prefix, 32),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_eq(u128::from(net), u128::from(ip), self.prefix, 128),
            _ => false,
        }
    }
}

fn mask_eq(a: u128, b: u128, prefix: u8, bits: u32) -> bool {
    let shift = bits - u32::from(prefix);
    shift >= bits || (a >> shift) == (b >> shift)
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) compare as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The peers whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    pub fn new(cidrs: Vec<Cidr>) -> TrustedProxies {
        TrustedProxies(cidrs)
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address: the peer itself, unless the peer is trusted, in which case
    /// `X-Forwarded-For` is read right to left, skipping trusted hops; the first
    /// untrusted (or unparsable, which is then not believed further) hop is the client.
    /// Entries to the left of it were written by the client and prove nothing.
    pub fn client_ip<'a>(&self, peer: IpAddr, forwarded_for: impl Iterator<Item = &'a [u8]>) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let mut client = canonical(peer);
        let hops: Vec<&[u8]> = forwarded_for.collect();
        for header in hops.iter().rev() {
            for hop in header.rsplit(|b| *b == b',') {
                let Some(ip) = std::str::from_utf8(hop)
                    .ok()
                    .and_then(|s| s.trim().parse::<IpAddr>().ok())
                else {
                    return client;
                };
                client = canonical(ip);
                if !self.trusts(client) {
                    return client;
                }
            }
        }
        client
    }
}

/// Wraps a connection so that it fails with `TimedOut` once no byte has moved either
/// way for `idle` (to within a quarter of it). Reads and writes only raise a flag; a timer
/// that ticks four times per `idle` clears it and counts the quiet ticks, so moving bytes
/// costs no clock read.
pub struct IdleTimeout<T> {
    inner: T,
    tick: Duration,
    active: bool,
    quiet_ticks: u32,
    timer: Pin<Box<Sleep>>,
    on_timeout: Option<Box<dyn FnOnce() + Send + Sync>>,
}

const TICKS_PER_IDLE: u32 = 4;

impl<T> IdleTimeout<T> {
    pub fn new(inner: T, idle: Duration, on_timeout: impl FnOnce() + Send + Sync + 'static) -> IdleTimeout<T> {
        let tick = (idle / TICKS_PER_IDLE).max(Duration::from_millis(1));
        IdleTimeout {
            inner,
            tick,
            active: false,
            quiet_ticks: 0,
            timer: Box::pin(tokio::time::sleep_until(Instant::now() + tick)),
            on_timeout: Some(Box::new(on_timeout)),
        }
    }

    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            ready!(self.timer.as_mut().poll(cx));
            if std::mem::take(&mut self.active) {
                self.quiet_ticks = 0;
            } else {
                self.quiet_ticks += 1;
            }
            if self.quiet_ticks >= TICKS_PER_IDLE {
                if let Some(hook) = self.on_timeout.take() {
                    hook();
                }
                return Poll::Ready(io::Error::new(io::ErrorKind::TimedOut, "connection idle"));
            }
            let next = self.timer.deadline() + self.tick;
            self.timer.as_mut().reset(next);
        }
    }

    fn touch<R>(&mut self, result: &Poll<io::Result<R>>) {
        if let Poll::Ready(Ok(_)) = result {
            self.active = true;
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.touch(&result);
        if result.is_pending()
            && let Poll::Ready(err) = this.poll_idle(cx)
        {
            return Poll::Ready(Err(err));
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.touch(&result);
        if result.is_pending()
            && let Poll::Ready(err) = this.poll_idle(cx)
        {
            return Poll::Ready(Err(err));
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.touch(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A connection whose first bytes were read already: they are read again, then the rest.
/// Lets hyper take over a connection that [`crate::front`] started on.
pub struct Rewind<T> {
    read: Bytes,
    inner: T,
}

impl<T> Rewind<T> {
    pub fn new(inner: T, read: Bytes) -> Rewind<T> {
        Rewind { read, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(buf.remaining());
            buf.put_slice(&self.read.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_match() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(net.contains(ip("::ffff:10.1.0.9")), "IPv4-mapped peers are IPv4");
        let host: Cidr = "::1".parse().unwrap();
        assert!(host.contains(ip("::1")) && !host.contains(ip("::2")));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("example.com".parse::<Cidr>().is_err());
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_through_trusted_hops_only() {
        let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let xff = |v: &'static str| std::iter::once(v.as_bytes());
        // An untrusted peer's header is ignored entirely.
        assert_eq!(trusted.client_ip(ip("203.0.113.9"), xff("1.2.3.4")), ip("203.0.113.9"));
        // Trusted ingress appended the real client; the spoofed left entry is not believed.
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), xff("6.6.6.6, 198.51.100.7")),
            ip("198.51.100.7")
        );
        // Several trusted hops are skipped.
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), xff("198.51.100.7, 10.3.3.3")),
            ip("198.51.100.7")
        );
        // Garbage stops the walk at the last address believed.
        assert_eq!(
            trusted.client_ip(ip("10.0.0.2"), xff("198.51.100.7, bogus")),
            ip("10.0.0.2")
        );
        // Several header lines are one list, in order.
        let two = [b"198.51.100.7".as_slice(), b"10.9.9.9".as_slice()];
        assert_eq!(trusted.client_ip(ip("10.0.0.2"), two.into_iter()), ip("198.51.100.7"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.2"), xff("1.1.1.1")),
            ip("10.0.0.2")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_and_a_busy_one_does_not() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, server) = tokio::io::duplex(64);
        let fired = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = fired.clone();
        let mut server = IdleTimeout::new(server, Duration::from_secs(5), move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst)
        });
        let mut client = client;
        let writer = tokio::spawn(async move {
            for _ in 0..4 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                client.write_all(b"x").await.unwrap();
            }
            client
        });
        let mut buf = [0u8; 1];
        for _ in 0..4 {
            server.read_exact(&mut buf).await.unwrap();
        }
        let last_byte = Instant::now();
        let _client = writer.await.unwrap();
        let err = server.read_exact(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Fifteen seconds of traffic did not time out; quiet does, within a quarter of idle.
        let quiet = last_byte.elapsed();
        assert!(
            quiet >= Duration::from_secs(5) && quiet <= Duration::from_millis(6250),
            "{quiet:?}"
        );
        assert!(fired.load(std::sync::atomic::Ordering::SeqCst));
    }
}

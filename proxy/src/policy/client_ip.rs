//! Who the client is behind trusted proxies: address blocks and `X-Forwarded-For`.

use std::net::IpAddr;
use std::str::FromStr;

/// An address block, e.g. `10.0.0.0/8` or `::1/128`; a bare address is a /32 or /128.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a trusted-proxy entry is not an address block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or CIDR")]
    NotAnAddress(String),
    #[error("{0:?}: prefix length must be 0..={1}")]
    Prefix(String, u8),
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| CidrError::NotAnAddress(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| CidrError::Prefix(s.to_string(), max))?,
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
}

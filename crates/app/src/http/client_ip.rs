//! Who the client is, for rate limiting: the TCP peer, or — only when the peer is a configured trusted proxy —
//! the address that proxy saw, from `X-Forwarded-For`.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The client address a request is attributed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client of a request from `peer` with `headers`. With no trusted proxies (the default) the peer is the
/// client: the header is ignored, since anyone can send it. Otherwise the `X-Forwarded-For` chain is walked
/// from the right (the entry appended by the nearest proxy) past every trusted proxy; the first address not
/// trusted is the client. A malformed entry stops the walk at the last trusted hop, so a forged header can
/// never make the client look like someone it is not further than the proxies vouch for.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| is_trusted_proxy(*ip, trusted);
    if !is_trusted(&peer) {
        return canonical(peer);
    }
    let chain = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in chain.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>() else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    canonical(client)
}

/// Whether `peer` is one of the `trusted` proxies, whose forwarding headers are believed.
pub fn is_trusted_proxy(peer: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&canonical(peer)))
}

/// What a client address is limited as: an IPv4 address alone, an IPv6 address by its /64. One IPv6 subscriber
/// usually gets a whole /64 (or more) and can pick a fresh address in it for every request: limiting single IPv6
/// addresses would limit nobody.
pub fn limit_subject(ip: IpAddr) -> String {
    LimitSubject::of(ip).to_string()
}

/// [`limit_subject`] without allocating: the per-IP limiter keys its in-process state by it on every request.
/// Displayed as `limit_subject` writes it (`10.0.0.1`, `2001:db8:1:2::/64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LimitSubject(IpAddr);

impl LimitSubject {
    /// The subject `ip` counts as.
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => LimitSubject(IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !u128::from(u64::MAX)))),
            v4 => LimitSubject(v4),
        }
    }
}

impl fmt::Display for LimitSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`, seen on dual-stack sockets) as the IPv4 address they are.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(raw: &str) -> IpAddr {
        raw.parse().expect("ip")
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().expect("header"));
        headers
    }

    #[test]
    fn without_trusted_proxies_the_header_is_ignored() {
        assert_eq!(client_ip(ip("203.0.113.9"), &forwarded("1.2.3.4"), &[]), ip("203.0.113.9"));
    }

    #[test]
    fn behind_a_trusted_proxy_the_nearest_untrusted_hop_is_the_client() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        // A client forging "1.2.3.4" gets its own address appended by the proxy: that is what counts.
        let headers = forwarded("1.2.3.4, 198.51.100.7, 10.0.0.3");
        assert_eq!(client_ip(ip("10.0.0.2"), &headers, &trusted), ip("198.51.100.7"));
    }

    #[test]
    fn a_malformed_hop_stops_at_the_last_trusted_address() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        assert_eq!(client_ip(ip("10.0.0.2"), &forwarded("garbage"), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.2"), &HeaderMap::new(), &trusted), ip("10.0.0.2"));
    }

    #[test]
    fn ipv6_clients_are_limited_per_64_and_ipv4_per_address() {
        assert_eq!(limit_subject(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(limit_subject(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")), "2001:db8:1:2::/64");
        assert_ne!(limit_subject(ip("2001:db8:1:3::1")), limit_subject(ip("2001:db8:1:2::1")));
        assert_eq!(limit_subject(ip("10.0.0.1")), "10.0.0.1");
        assert_eq!(limit_subject(ip("::ffff:10.0.0.1")), "10.0.0.1");
        assert_eq!(LimitSubject::of(ip("2001:db8:1:2:aaaa::1")), LimitSubject::of(ip("2001:db8:1:2::9")));
        assert_eq!(LimitSubject::of(ip("::ffff:10.0.0.1")), LimitSubject::of(ip("10.0.0.1")));
    }

    #[test]
    fn mapped_ipv4_addresses_are_ipv4() {
        assert_eq!(client_ip(ip("::ffff:192.0.2.1"), &HeaderMap::new(), &[]), ip("192.0.2.1"));
    }
}

//! Who the client is, by address: the connection's peer, or — when the
//! peer is one of the operator's `trusted_proxies` — the address those
//! proxies say they received the request from (`X-Forwarded-For`, read
//! from the right: the first address that is not a trusted proxy). A
//! client cannot make itself someone else by sending the header: only
//! what trusted proxies appended counts.

use std::net::IpAddr;

use actix_web::{HttpRequest, web};
use ipnet::IpNet;

use crate::state::AppState;

/// Most addresses read from `X-Forwarded-For`, from the right (what lies
/// further left was written before the trusted proxies, by whoever).
const MAX_HOPS: usize = 20;

/// The client's address, as text (what the audit log, the rate limits
/// and the access policy see).
pub fn client_ip(req: &HttpRequest) -> Option<String> {
    let peer = req.peer_addr()?.ip();
    let trusted = req
        .app_data::<web::Data<AppState>>()
        .map(|state| state.trusted_proxies.as_slice())
        .unwrap_or_default();
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .collect();
    Some(resolve(peer, &forwarded, trusted).to_string())
}

/// The client behind `peer`, given the `X-Forwarded-For` header values
/// in order and the trusted proxies' ranges.
pub fn resolve(peer: IpAddr, forwarded: &[&str], trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| {
        let ip = ip.to_canonical();
        trusted.iter().any(|net| net.contains(&ip))
    };
    if !is_trusted(&peer) || forwarded.is_empty() {
        return peer;
    }
    let hops: Vec<&str> = forwarded
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    // Only the rightmost hops: a client padding the header with made-up
    // entries must not push the real one out and become the proxy.
    for hop in hops.iter().rev().take(MAX_HOPS) {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            // Not an address (a port, a name, garbage): what lies beyond
            // cannot be trusted; the last proxy's word stops here.
            return client;
        };
        client = ip.to_canonical();
        if !is_trusted(&client) {
            return client;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn only_trusted_proxies_are_believed_and_from_the_right() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = nets(&["10.0.0.0/8"]);
        // No trusted proxies: the header is ignored.
        assert_eq!(resolve(proxy, &["203.0.113.9"], &[]), proxy);
        // An untrusted peer's header is ignored.
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(resolve(stranger, &["203.0.113.9"], &trusted), stranger);
        // The rightmost address no trusted proxy owns is the client; what
        // the client itself wrote further left does not count.
        assert_eq!(
            resolve(proxy, &["1.2.3.4, 203.0.113.9, 10.0.0.7"], &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Several header lines are one list.
        assert_eq!(
            resolve(proxy, &["1.2.3.4", "203.0.113.9"], &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Garbage stops the walk at the last good hop.
        assert_eq!(resolve(proxy, &["203.0.113.9, not-an-ip"], &trusted), proxy);
        // A chain padded by the client: the address the proxy appended
        // still counts (never the proxy itself).
        let mut padded = vec!["10.0.0.9"; 40];
        padded.push("203.0.113.9");
        let padded = padded.join(",");
        assert_eq!(
            resolve(proxy, &[padded.as_str()], &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // IPv4 in IPv6 form is judged as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(
            resolve(mapped, &["203.0.113.9"], &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }
}

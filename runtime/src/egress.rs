//! The egress proxy: the only way out of a sandbox.
//!
//! An HTTP proxy (absolute-form requests and `CONNECT`) served from the
//! host side on a socket bound inside the sandbox's network namespace
//! ([`crate::netns`]). It lets through only
//!
//! - the Carapace service endpoints the worker names (gateway, memory,
//!   browser), by exact host and port, and
//! - the sandbox's allow-listed host names (exact, or `*.suffix`), after
//!   resolving them itself and refusing every address that is not public
//!   ([`crate::address::is_public`]: loopback, private, link-local, CGNAT,
//!   metadata...). It connects to the very address it checked, so a name
//!   that resolves differently a moment later (DNS rebinding) changes
//!   nothing.
//!
//! Every connection allowed or refused is counted and logged with the
//! sandbox id.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::address::is_public;

/// Largest request head the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Connections at once per sandbox.
const MAX_CONNECTIONS: usize = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Name lookups in flight across all sandboxes.
static LOOKUPS: Semaphore = Semaphore::const_new(32);
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a proxied connection lives.
const MAX_CONNECTION: Duration = Duration::from_secs(3600);

/// The addresses of this host's interfaces.
fn own_addresses() -> Vec<IpAddr> {
    let Ok(interfaces) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter_map(|i| i.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// At most this much of a host name goes into a log line.
fn shown(host: &str) -> &str {
    let mut end = host.len().min(100);
    while !host.is_char_boundary(end) {
        end -= 1;
    }
    &host[..end]
}

/// What one sandbox may reach.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Host names (lower case), exact or `*.suffix`.
    pub allow_hosts: Vec<String>,
    /// Carapace endpoints reachable whatever their address: `(host, port)`
    /// as the sandbox names them, and where to connect.
    pub services: Vec<(String, u16, SocketAddr)>,
}

/// Connections allowed and refused, for one sandbox.
#[derive(Debug, Default)]
pub struct Counters {
    pub allowed: AtomicU64,
    pub refused: AtomicU64,
}

/// Why a destination is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
    NotPublic(IpAddr),
    Unresolvable,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotAllowed => {
                f.write_str("the host is not on the sandbox's egress allow list")
            }
            Refusal::NotPublic(ip) => write!(
                f,
                "the host resolves to {ip}, which is not a public address"
            ),
            Refusal::Unresolvable => f.write_str("the host name does not resolve"),
        }
    }
}

impl Policy {
    fn host_allowed(&self, host: &str) -> bool {
        self.allow_hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => {
                    host.len() > suffix.len() + 1
                        && host.ends_with(suffix)
                        && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
                }
                None => pattern == host,
            })
    }

    /// Where `host:port` may be reached, or why not.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<SocketAddr, Refusal> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some((_, _, addr)) = self
            .services
            .iter()
            .find(|(h, p, _)| *h == host && *p == port)
        {
            return Ok(*addr);
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            // Literal addresses pass only if listed literally, and only if public.
            if !self.host_allowed(bare) {
                return Err(Refusal::NotAllowed);
            }
            return if is_public(ip) && !own_addresses().contains(&ip) {
                Ok(SocketAddr::new(ip, port))
            } else {
                Err(Refusal::NotPublic(ip))
            };
        }
        if !self.host_allowed(&host) {
            return Err(Refusal::NotAllowed);
        }
        // Lookups run on the blocking pool: bounded in number and time, so
        // a name server that never answers cannot starve the worker.
        let Ok(_permit) = LOOKUPS.acquire().await else {
            return Err(Refusal::Unresolvable);
        };
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let addrs: Vec<SocketAddr> = match tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            Ok(Ok(addrs)) => addrs.collect(),
            _ => return Err(Refusal::Unresolvable),
        };
        // One non-public answer refuses the name outright: a name that
        // mixes public and private answers is an attack, not a mistake. The
        // worker's own addresses are refused too: a connection to them
        // would come from the host to itself.
        let own = own_addresses();
        if let Some(bad) = addrs
            .iter()
            .find(|a| !is_public(a.ip()) || own.contains(&a.ip()))
        {
            return Err(Refusal::NotPublic(bad.ip()));
        }
        addrs.first().copied().ok_or(Refusal::Unresolvable)
    }
}

/// A destination the policy refused, told to whoever listens (the worker
/// reports it to the control plane, which audits it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The sandbox that asked.
    pub sandbox: String,
    /// The host it asked for (as asked, at most 255 bytes).
    pub host: String,
    pub port: u16,
    /// Why it was refused.
    pub reason: String,
}

/// Serves the proxy on `listener` until the task is aborted; aborting it
/// also ends every connection it opened. Refusals are also sent on
/// `refusals` (dropped when nobody listens or the listeners lag).
pub async fn serve(
    listener: TcpListener,
    policy: Arc<Policy>,
    counters: Arc<Counters>,
    sandbox: String,
    refusals: tokio::sync::broadcast::Sender<Refused>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // The connections belong to this task: when it is aborted (the sandbox
    // is deleted), dropping the set aborts them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(client);
            continue;
        };
        let (policy, counters, sandbox) = (policy.clone(), counters.clone(), sandbox.clone());
        let refusals = refusals.clone();
        connections.spawn(async move {
            let _ = tokio::time::timeout(
                MAX_CONNECTION,
                handle(client, &policy, &counters, &sandbox, &refusals),
            )
            .await;
            drop(permit);
        });
    }
}

async fn read_head(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = client.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

async fn respond(client: &mut TcpStream, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = client.write_all(msg.as_bytes()).await;
}

/// Splits `host[:port]` (IPv6 in brackets) with a default port.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => Some((host.to_owned(), port.parse().ok()?)),
        None => Some((authority.to_owned(), default_port)),
    }
}

async fn handle(
    mut client: TcpStream,
    policy: &Policy,
    counters: &Counters,
    sandbox: &str,
    refusals: &tokio::sync::broadcast::Sender<Refused>,
) {
    let Ok(Some(head)) = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await else {
        respond(
            &mut client,
            "400 Bad Request",
            "request head missing or too large\n",
        )
        .await;
        return;
    };
    let end = head
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(head.len())
        + 4;
    let (head_bytes, early_body) = head.split_at(end.min(head.len()));
    let Ok(head_text) = std::str::from_utf8(head_bytes) else {
        respond(
            &mut client,
            "400 Bad Request",
            "request head is not UTF-8\n",
        )
        .await;
        return;
    };
    let mut lines = head_text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        respond(&mut client, "400 Bad Request", "malformed request line\n").await;
        return;
    };
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let (authority, path) = if connect {
        (target, "")
    } else if let Some(rest) = target.strip_prefix("http://") {
        match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        }
    } else {
        respond(
            &mut client,
            "400 Bad Request",
            "only absolute http:// URLs and CONNECT are proxied\n",
        )
        .await;
        return;
    };
    let Some((host, port)) = split_authority(authority, 80) else {
        respond(&mut client, "400 Bad Request", "malformed host\n").await;
        return;
    };
    let destination = match policy.resolve(&host, port).await {
        Ok(addr) => addr,
        Err(refusal) => {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(sandbox, host = shown(&host), port, reason = %refusal, "egress refused");
            let _ = refusals.send(Refused {
                sandbox: sandbox.to_owned(),
                host: shown(&host).chars().take(255).collect(),
                port,
                reason: refusal.to_string(),
            });
            respond(
                &mut client,
                "403 Forbidden",
                &format!("egress to {host}:{port} refused: {refusal}\n"),
            )
            .await;
            return;
        }
    };
    let upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(destination)).await {
            Ok(Ok(s)) => s,
            _ => {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    sandbox,
                    host = shown(&host),
                    port,
                    "egress connection failed"
                );
                respond(
                    &mut client,
                    "502 Bad Gateway",
                    &format!("cannot connect to {host}:{port}\n"),
                )
                .await;
                return;
            }
        };
    counters.allowed.fetch_add(1, Ordering::Relaxed);
    tracing::info!(sandbox, host = shown(&host), port, %destination, "egress allowed");
    let mut upstream = upstream;
    if connect {
        if client
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
        if !early_body.is_empty() && upstream.write_all(early_body).await.is_err() {
            return;
        }
    } else {
        // Origin-form request line; hop-by-hop proxy headers dropped; one
        // request per connection, so every request is checked.
        let mut out = format!("{method} {path} {version}\r\n");
        for line in lines.filter(|l| !l.is_empty()) {
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        if upstream.write_all(out.as_bytes()).await.is_err()
            || upstream.write_all(early_body).await.is_err()
        {
            return;
        }
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str]) -> Policy {
        Policy {
            allow_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            services: vec![],
        }
    }

    #[tokio::test]
    async fn only_listed_public_destinations_pass() {
        let p = policy(&[
            "example.com",
            "*.example.org",
            "8.8.8.8",
            "10.0.0.1",
            "localhost",
        ]);
        assert_eq!(p.resolve("evil.com", 80).await, Err(Refusal::NotAllowed));
        assert_eq!(p.resolve("example.org", 80).await, Err(Refusal::NotAllowed));
        assert_eq!(
            p.resolve("badexample.org", 80).await,
            Err(Refusal::NotAllowed)
        );
        assert!(p.resolve("8.8.8.8", 53).await.is_ok());
        assert!(matches!(
            p.resolve("10.0.0.1", 80).await,
            Err(Refusal::NotPublic(_))
        ));
        assert!(matches!(
            p.resolve("169.254.169.254", 80).await,
            Err(Refusal::NotAllowed)
        ));
        // Allow-listed, but resolving to loopback: refused after resolution.
        assert!(matches!(
            p.resolve("localhost", 80).await,
            Err(Refusal::NotPublic(_))
        ));
        assert!(matches!(
            p.resolve("LOCALHOST.", 80).await,
            Err(Refusal::NotPublic(_))
        ));
    }

    #[tokio::test]
    async fn services_are_reached_by_exact_host_and_port() {
        let addr: SocketAddr = ([127, 0, 0, 1], 9).into();
        let p = Policy {
            allow_hosts: vec![],
            services: vec![("carapace.internal".into(), 80, addr)],
        };
        assert_eq!(p.resolve("carapace.internal", 80).await, Ok(addr));
        assert_eq!(
            p.resolve("carapace.internal", 81).await,
            Err(Refusal::NotAllowed)
        );
    }

    #[test]
    fn authorities_split() {
        assert_eq!(split_authority("a.b:443", 80), Some(("a.b".into(), 443)));
        assert_eq!(split_authority("a.b", 80), Some(("a.b".into(), 80)));
        assert_eq!(
            split_authority("[::1]:8080", 80),
            Some(("::1".into(), 8080))
        );
        assert_eq!(split_authority("a.b:x", 80), None);
        assert_eq!(split_authority("[::1]x", 80), None);
    }
}

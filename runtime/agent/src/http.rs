//! A minimal HTTP/1.1 client for the agent's tool loop, std only: plain
//! `http://` requests sent through the sandbox's egress proxy (the only
//! way out of a sandbox), the answer read whole, bounded in size and time.
//! The built-in agent speaks no TLS; `https://` is refused here.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// An answer: status and body (chunked encoding undone).
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The egress proxy's address, from `http_proxy` (`http://HOST:PORT`).
fn proxy() -> Result<String, String> {
    let raw = std::env::var("http_proxy")
        .or_else(|_| std::env::var("HTTP_PROXY"))
        .map_err(|_| "no egress proxy is configured (http_proxy)".to_owned())?;
    Ok(raw
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned())
}

/// The host of an `http://` URL, checked to be plain and printable.
fn host_of(url: &str) -> Result<&str, String> {
    if url.starts_with("https://") {
        return Err(
            "https is not supported by the built-in agent's HTTP client; use http://".into(),
        );
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs can be fetched")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.contains('@') || !host.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the URL has no valid host".into());
    }
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("the URL contains spaces or control characters".into());
    }
    Ok(host)
}

/// Sends one request through the proxy and reads the answer, at most
/// `max_body` bytes of it (more is an error), within `timeout`.
pub fn request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
    max_body: usize,
) -> Result<Response, String> {
    let host = host_of(url)?;
    for (name, value) in headers {
        if value.bytes().any(|b| b == b'\r' || b == b'\n') || name.contains(':') {
            return Err("a header contains a line break".into());
        }
    }
    let deadline = Instant::now() + timeout;
    let mut stream =
        TcpStream::connect(proxy()?).map_err(|e| format!("cannot reach the egress proxy: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut head = format!("{method} {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream
        .set_write_timeout(Some(timeout))
        .and_then(|()| stream.write_all(&out))
        .map_err(|e| format!("sending the request failed: {e}"))?;
    let limit = max_body + 64 * 1024;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the request timed out".into());
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if raw.len() > limit {
                    return Err(format!("the answer is larger than {max_body} bytes"));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err("the request timed out".into());
            }
            Err(e) => return Err(format!("reading the answer failed: {e}")),
        }
    }
    parse_response(&raw, max_body)
}

/// Splits a whole answer into status and body.
fn parse_response(raw: &[u8], max_body: usize) -> Result<Response, String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete head")?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the answer has no status")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = &raw[end + 4..];
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    if body.len() > max_body {
        return Err(format!("the answer is larger than {max_body} bytes"));
    }
    Ok(Response { status, body })
}

/// Undoes chunked transfer encoding.
fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("a chunk size line is cut off")?;
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "a chunk size is invalid")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if size.checked_add(2).is_none_or(|end| data.len() < end) {
            return Err("a chunk is cut off".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::{host_of, parse_response};

    #[test]
    fn answers_are_read_plain_and_chunked() {
        let plain = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 10).unwrap();
        assert_eq!(
            (plain.status, plain.body.as_slice()),
            (200, b"hi".as_slice())
        );
        let chunked = parse_response(
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n",
            10,
        )
        .unwrap();
        assert_eq!(
            (chunked.status, chunked.body.as_slice()),
            (403, b"abcde".as_slice())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n0123456789ab", 10).is_err());
        assert!(parse_response(b"garbage", 10).is_err());
        // A chunk size at the top of the range neither overflows nor panics.
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
                10
            )
            .is_err()
        );
        assert!(
            parse_response(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nff\r\nab",
                10
            )
            .is_err()
        );
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_fetched() {
        assert_eq!(host_of("http://example.com/a?b").unwrap(), "example.com");
        assert!(host_of("https://example.com/").is_err());
        assert!(host_of("ftp://example.com/").is_err());
        assert!(host_of("http://user@evil/").is_err());
        assert!(host_of("http://a/b c").is_err());
        assert!(host_of("http:///x").is_err());
    }
}

//! A minimal HTTP/1.1 load generator shared by the benchmarks: keep-alive
//! connections on one thread, closed loop (as fast as the server answers)
//! or open loop (requests due at a fixed rate; latency counts from when
//! each was due, so queueing in the server is not hidden).

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections of the closed-loop phase.
pub const CLOSED_LOOP_CONNECTIONS: usize = 64;
/// Connections of the open-loop phase.
pub const OPEN_LOOP_CONNECTIONS: usize = 50;

/// One keep-alive connection: sends a request, reads one full response.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    pub async fn round_trip(&mut self, request: &[u8]) {
        self.stream.write_all(request).await.unwrap();
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "server closed the connection after {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
            if response_length(&self.buf).is_some_and(|total| self.buf.len() >= total) {
                assert!(
                    self.buf.starts_with(b"HTTP/1.1 200"),
                    "non-200 response: {}",
                    String::from_utf8_lossy(&self.buf)
                );
                return;
            }
        }
    }
}

/// Length of the first response in `buf`, once its headers are complete.
fn response_length(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    Some(end + length)
}

/// Runs `CLOSED_LOOP_CONNECTIONS` connections flat out for `phase`;
/// returns requests per second and every latency in milliseconds.
pub async fn closed_loop(request: &[u8], port: u16, phase: Duration) -> (f64, Vec<f64>) {
    let deadline = Instant::now() + phase;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLOSED_LOOP_CONNECTIONS {
        let request = request.to_vec();
        tasks.spawn(async move {
            let mut conn = Conn::open(port).await;
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let sent = Instant::now();
                conn.round_trip(&request).await;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        });
    }
    let started = Instant::now();
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    let rps = all.len() as f64 / started.elapsed().as_secs_f64().max(phase.as_secs_f64());
    (rps, all)
}

/// Offers `rate` requests per second over `OPEN_LOOP_CONNECTIONS`
/// connections for `phase`; returns the achieved rate and latencies (ms).
pub async fn open_loop(request: &[u8], port: u16, phase: Duration, rate: f64) -> (f64, Vec<f64>) {
    let interval = Duration::from_secs_f64(OPEN_LOOP_CONNECTIONS as f64 / rate);
    let start = Instant::now() + Duration::from_millis(100);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..OPEN_LOOP_CONNECTIONS {
        let request = request.to_vec();
        // Stagger connections evenly across one interval.
        let offset = interval.mul_f64(c as f64 / OPEN_LOOP_CONNECTIONS as f64);
        tasks.spawn(async move {
            let mut conn = Conn::open(port).await;
            let mut latencies = Vec::new();
            let mut due = start + offset;
            while due < start + phase {
                tokio::time::sleep_until(due.into()).await;
                conn.round_trip(&request).await;
                latencies.push(due.elapsed().as_secs_f64() * 1000.0);
                due += interval;
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(latencies) = tasks.join_next().await {
        all.extend(latencies.unwrap());
    }
    (all.len() as f64 / phase.as_secs_f64(), all)
}

/// The `p` quantile (0..=1) of `values`, sorting them.
pub fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or(f64::NAN)
}

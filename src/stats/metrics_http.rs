//! The `/metrics` HTTP endpoint on `prometheus_listen`: a deliberately small HTTP/1.1
//! responder (read the request head, answer, close) so the pooler needs no web stack.
//!
//! It runs in its own task, apart from the client listeners: shutdown aborts the accept
//! loops for clients but not this one, so Prometheus keeps scraping a draining pooler until
//! the process exits — the window in which external PgBouncer exporters go blind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::control::App;

/// A scrape request is one short line plus a few headers.
const MAX_REQUEST: usize = 8 * 1024;
/// Whole-request deadline: a client that trickles bytes cannot hold a slot longer.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed unanswered rather than queued.
const MAX_CONNECTIONS: usize = 32;
/// Drains the recorder's histogram samples even when nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Starts the endpoint when `prometheus_listen` is set: binds now (an error is logged and
/// the pooler runs on without it), installs the recorder, and spawns the serving and
/// upkeep tasks. Must run inside the tokio runtime.
pub fn start(app: &Arc<App>) {
    let text = app.config.load().general.prometheus_listen.clone();
    if text.is_empty() {
        return;
    }
    let listener = match bind(&text) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("prometheus_listen {text}: {e}; metrics endpoint disabled");
            return;
        }
    };
    super::prometheus::install();
    match listener.local_addr() {
        Ok(a) => tracing::info!("metrics on http://{a}/metrics"),
        Err(_) => tracing::info!("metrics on http://{text}/metrics"),
    }
    tokio::spawn(serve(app.clone(), listener));
    tokio::spawn(async {
        let mut tick = tokio::time::interval(UPKEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            super::prometheus::run_upkeep();
        }
    });
}

fn bind(text: &str) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr: SocketAddr = text
        .parse()
        .map_err(|_| std::io::Error::other("expected ip:port"))?;
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    // This side closes every connection, so its TIME_WAIT sockets sit on the port; without
    // SO_REUSEADDR a quick restart could not bind it again.
    sock.set_reuse_address(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(64)?;
    TcpListener::from_std(sock.into())
}

async fn serve(app: Arc<App>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("metrics accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let app = app.clone();
        tokio::spawn(async move {
            respond(&app, stream).await;
            drop(permit);
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    BadRequest,
    TooLarge,
}

/// Classifies a request from its bytes so far; `None` = the head is not complete yet.
pub fn parse_request(buf: &[u8]) -> Option<Request> {
    let Some(end) = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n")) else {
        return (buf.len() >= MAX_REQUEST).then_some(Request::TooLarge);
    };
    let head = &buf[..end];
    let line_end = find(head, b"\n").unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Some(Request::BadRequest);
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Request::BadRequest);
    };
    if !version.starts_with("HTTP/1.") {
        return Some(Request::BadRequest);
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return Some(Request::NotFound);
    }
    Some(match method {
        "GET" => Request::Metrics { head_only: false },
        "HEAD" => Request::Metrics { head_only: true },
        _ => Request::MethodNotAllowed,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn read_request(stream: &mut TcpStream) -> Request {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            if let Some(r) = parse_request(&buf) {
                return r;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Request::BadRequest,
                Ok(n) => {
                    let room = MAX_REQUEST.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, read)
        .await
        .unwrap_or(Request::BadRequest)
}

async fn respond(app: &App, mut stream: TcpStream) {
    let req = read_request(&mut stream).await;
    let (status, content_type, body, head_only) = match req {
        Request::Metrics { head_only } => (
            "200 OK",
            CONTENT_TYPE,
            super::prometheus::render(app),
            head_only,
        ),
        Request::NotFound => (
            "404 Not Found",
            "text/plain",
            "not found; metrics are at /metrics\n".to_string(),
            false,
        ),
        Request::MethodNotAllowed => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET and HEAD\n".to_string(),
            false,
        ),
        Request::TooLarge => (
            "431 Request Header Fields Too Large",
            "text/plain",
            "request too large\n".to_string(),
            false,
        ),
        Request::BadRequest => (
            "400 Bad Request",
            "text/plain",
            "bad request\n".to_string(),
            false,
        ),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&body);
    }
    let write = async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        assert_eq!(parse_request(b"GET /metrics HTTP/1.1\r\nHost: x"), None);
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Request::Metrics { head_only: false })
        );
        assert_eq!(
            parse_request(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(Request::Metrics { head_only: true })
        );
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\n\r\n"),
            Some(Request::NotFound)
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Request::MethodNotAllowed)
        );
        assert_eq!(parse_request(b"GARBAGE\r\n\r\n"), Some(Request::BadRequest));
        assert_eq!(
            parse_request(b"GET /metrics SPDY/9\r\n\r\n"),
            Some(Request::BadRequest)
        );
        assert_eq!(
            parse_request(&[0xff, b' ', b'\r', b'\n', b'\r', b'\n']),
            Some(Request::BadRequest)
        );
        assert_eq!(
            parse_request(&vec![b'a'; MAX_REQUEST]),
            Some(Request::TooLarge)
        );
    }
}

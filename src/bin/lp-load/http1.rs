//! The HTTP/1.1 keep-alive connection each subscriber and publisher owns (as a
//! browser tab holding a long-poll does): one request at a time.
//!
//! Two clients behind one type (`--client`): lp-load's own, which does no more
//! per request than writing the request line and reading the status, a few
//! headers and the body (`Content-Length` or chunked) on the caller's task; and
//! hyper's `client::conn::http1`, whose connection runs on a task of its own.
//! The generator shares two cores with the server it measures, so what it
//! spends per request is taken from the server: with hyper's client lp-load
//! spent 1.22–1.61× the CPU per delivery of its own (six alternated rounds at
//! full speed, `lp-load compare --plan clients`; benches/README.md), so its own
//! stays the default and hyper's stays to measure that again.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::cli::ClientKind;

/// Where requests go: the socket address and the `Host` header.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub host: String,
    /// The path of the base URL, always ending with '/'.
    pub path: String,
}

impl Endpoint {
    /// `http://host:port/path` (plain HTTP only: the generator talks to 127.0.0.1).
    pub fn parse(base: &str) -> Result<Endpoint, String> {
        let url = url::Url::parse(base).map_err(|e| format!("{base}: {e}"))?;
        if url.scheme() != "http" {
            return Err(format!("{base}: only http:// is supported"));
        }
        let host = url.host_str().ok_or_else(|| format!("{base}: no host"))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{base}: {e}"))?
            .next()
            .ok_or_else(|| format!("{base}: no address"))?;
        let mut path = url.path().to_owned();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(Endpoint {
            addr,
            host: format!("{host}:{port}"),
            path,
        })
    }
}

/// Request header lines in the form the connection's client sends them
/// (made by [`Conn::headers`], once per set, not per request).
pub enum Headers {
    /// Full lines, each ending in "\r\n".
    Lines(String),
    Map(HeaderMap),
}

pub struct Response {
    pub status: u16,
    head: Head,
    pub body: Bytes,
}

enum Head {
    /// The response head as read, status line included.
    Raw(Vec<u8>),
    Map(HeaderMap),
}

impl Response {
    /// A header's value (first occurrence, name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.head {
            Head::Raw(head) => {
                let head = std::str::from_utf8(head).ok()?;
                head.split("\r\n").skip(1).find_map(|line| {
                    let (k, v) = line.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
                })
            }
            Head::Map(map) => map.get(name)?.to_str().ok(),
        }
    }
}

/// One keep-alive connection, reopened after an error or a `Connection: close`.
pub struct Conn {
    ep: Arc<Endpoint>,
    /// Limits how many connections are being opened at once (thousands of
    /// subscribers starting together would overflow the listen backlog).
    gate: Arc<Semaphore>,
    client: Client,
}

enum Client {
    Handwritten {
        stream: Option<TcpStream>,
        rbuf: Vec<u8>,
        wbuf: Vec<u8>,
    },
    Hyper(Option<http1::SendRequest<Full<Bytes>>>),
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl Conn {
    pub fn new(ep: Arc<Endpoint>, gate: Arc<Semaphore>, kind: ClientKind) -> Conn {
        let client = match kind {
            ClientKind::Handwritten => Client::Handwritten {
                stream: None,
                rbuf: Vec::with_capacity(4096),
                wbuf: Vec::with_capacity(1024),
            },
            ClientKind::Hyper => Client::Hyper(None),
        };
        Conn { ep, gate, client }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// `(name, value)` pairs as this connection's client sends them.
    pub fn headers(&self, pairs: &[(&str, &str)]) -> Headers {
        match self.client {
            Client::Handwritten { .. } => {
                Headers::Lines(pairs.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect())
            }
            Client::Hyper(_) => Headers::Map(
                pairs
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((
                            HeaderName::from_bytes(k.as_bytes()).ok()?,
                            HeaderValue::from_str(v).ok()?,
                        ))
                    })
                    .collect(),
            ),
        }
    }

    /// Sends one request and reads its answer. `target` is the request target
    /// (path and query).
    pub async fn send(
        &mut self,
        method: Method,
        target: &str,
        headers: &Headers,
        body: Bytes,
    ) -> io::Result<Response> {
        match &mut self.client {
            Client::Handwritten { stream, rbuf, wbuf } => {
                let r = exchange(
                    &self.ep, &self.gate, stream, rbuf, wbuf, &method, target, headers, &body,
                )
                .await;
                if r.is_err() {
                    *stream = None;
                    rbuf.clear();
                }
                r
            }
            Client::Hyper(sender) => {
                let r = hyper_exchange(&self.ep, &self.gate, sender, method, target, headers, body)
                    .await;
                if r.is_err() {
                    *sender = None;
                }
                r
            }
        }
    }
}

async fn open(ep: &Endpoint, gate: &Semaphore) -> io::Result<TcpStream> {
    let _permit = gate.acquire().await.map_err(io::Error::other)?;
    let s = TcpStream::connect(ep.addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// hyper's HTTP/1 client on one connection: its connection future runs on a
/// task of its own, and requests reach it through `SendRequest`.
async fn hyper_exchange(
    ep: &Endpoint,
    gate: &Semaphore,
    sender: &mut Option<http1::SendRequest<Full<Bytes>>>,
    method: Method,
    target: &str,
    headers: &Headers,
    body: Bytes,
) -> io::Result<Response> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        let stream = open(ep, gate).await?;
        let (s, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        *sender = Some(s);
    }
    let Some(s) = sender.as_mut() else {
        return Err(bad("not connected"));
    };
    s.ready().await.map_err(io::Error::other)?;
    let mut request = http::Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, ep.host.as_str())
        .body(Full::new(body))
        .map_err(io::Error::other)?;
    match headers {
        Headers::Map(map) => request
            .headers_mut()
            .extend(map.iter().map(|(k, v)| (k.clone(), v.clone()))),
        Headers::Lines(_) => return Err(bad("headers made for another client")),
    }
    let response = s.send_request(request).await.map_err(io::Error::other)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
    Ok(Response {
        status: parts.status.as_u16(),
        head: Head::Map(parts.headers),
        body,
    })
}

/// lp-load's own HTTP/1 client: the request written and the answer read by
/// the caller's task, on buffers kept with the connection.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    ep: &Endpoint,
    gate: &Semaphore,
    slot: &mut Option<TcpStream>,
    rbuf: &mut Vec<u8>,
    wbuf: &mut Vec<u8>,
    method: &Method,
    target: &str,
    headers: &Headers,
    body: &[u8],
) -> io::Result<Response> {
    if slot.is_none() {
        *slot = Some(open(ep, gate).await?);
        rbuf.clear();
    }
    let Headers::Lines(headers) = headers else {
        return Err(bad("headers made for another client"));
    };
    let method = method.as_str();
    wbuf.clear();
    wbuf.extend_from_slice(method.as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(target.as_bytes());
    wbuf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    wbuf.extend_from_slice(ep.host.as_bytes());
    wbuf.extend_from_slice(b"\r\n");
    wbuf.extend_from_slice(headers.as_bytes());
    if !body.is_empty() || method == "POST" || method == "PUT" {
        wbuf.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    wbuf.extend_from_slice(b"\r\n");
    wbuf.extend_from_slice(body);
    let Some(stream) = slot.as_mut() else {
        return Err(bad("not connected"));
    };
    stream.write_all(wbuf).await?;

    // The head.
    let head_end = loop {
        if let Some(i) = HEAD_END.find(rbuf) {
            break i + 4;
        }
        if rbuf.len() > 64 * 1024 {
            return Err(bad("response head too large"));
        }
        read_more(stream, rbuf).await?;
    };
    let head: Vec<u8> = rbuf.drain(..head_end).collect();
    let text = std::str::from_utf8(&head).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let (mut length, mut chunked, mut close) = (None::<usize>, false, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse().map_err(|_| bad("bad content-length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }

    // The body.
    let no_body = method == "HEAD" || status == 204 || status == 304 || status < 200;
    let body: Vec<u8> = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked(stream, rbuf).await?
    } else if let Some(n) = length {
        while rbuf.len() < n {
            read_more(stream, rbuf).await?;
        }
        rbuf.drain(..n).collect()
    } else {
        // Delimited by the end of the connection.
        close = true;
        loop {
            match stream.read_buf(rbuf).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        std::mem::take(rbuf)
    };
    if close {
        *slot = None;
        rbuf.clear();
    }
    Ok(Response {
        status,
        head: Head::Raw(head),
        body: Bytes::from(body),
    })
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.reserve(8192);
    match stream.read_buf(buf).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(()),
    }
}

/// The end of a response head, searched for in every response: built once
/// (`memmem::find` builds a searcher on every call).
static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = memchr::memmem::find(buf, b"\r\n") {
                break i;
            }
            read_more(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).map_err(|_| bad("chunk size"))?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| bad("chunk size"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (usually none) end with an empty line.
            loop {
                let end = loop {
                    if let Some(i) = memchr::memmem::find(buf, b"\r\n") {
                        break i;
                    }
                    read_more(stream, buf).await?;
                };
                buf.drain(..end + 2);
                if end == 0 {
                    return Ok(body);
                }
            }
        }
        while buf.len() < size + 2 {
            read_more(stream, buf).await?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that writes the next of `answers` for each request it reads.
    async fn serve(answers: &'static [&'static [u8]]) -> Arc<Endpoint> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            for answer in answers {
                let mut request = Vec::new();
                while HEAD_END.find(&request).is_none() {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                s.write_all(answer).await.unwrap();
            }
        });
        Arc::new(Endpoint::parse(&format!("http://{addr}/")).unwrap())
    }

    #[tokio::test]
    async fn both_clients_read_sized_and_chunked_bodies_on_one_connection() {
        for kind in [ClientKind::Handwritten, ClientKind::Hyper] {
            let ep = serve(&[
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nEtag: 7\r\n\r\nhello",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            ])
            .await;
            let mut c = Conn::new(ep, Arc::new(Semaphore::new(1)), kind);
            let none = c.headers(&[]);
            let r = c.send(Method::GET, "/", &none, Bytes::new()).await.unwrap();
            assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]), "{kind:?}");
            assert_eq!(r.header("etag"), Some("7"), "{kind:?}");
            let r = c.send(Method::GET, "/", &none, Bytes::new()).await.unwrap();
            assert_eq!(&r.body[..], b"abcde", "{kind:?}");
        }
    }

    #[tokio::test]
    async fn both_clients_send_the_headers_and_body_given() {
        for kind in [ClientKind::Handwritten, ClientKind::Hyper] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let ep =
                Arc::new(Endpoint::parse(&format!("http://{}/", l.local_addr().unwrap())).unwrap());
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                let mut got = Vec::new();
                let mut buf = vec![0u8; 4096];
                while !got.ends_with(b"{}") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n")
                    .await
                    .unwrap();
                String::from_utf8(got).unwrap().to_ascii_lowercase()
            });
            let mut c = Conn::new(ep, Arc::new(Semaphore::new(1)), kind);
            let headers = c.headers(&[
                ("Authorization", "Bearer t"),
                ("Content-Type", "application/json"),
            ]);
            let r = c
                .send(
                    Method::POST,
                    "/api/v1/events/k",
                    &headers,
                    Bytes::from_static(b"{}"),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 202, "{kind:?}");
            let request = server.await.unwrap();
            assert!(
                request.starts_with("post /api/v1/events/k http/1.1\r\n"),
                "{kind:?}: {request}"
            );
            for line in [
                "authorization: bearer t\r\n",
                "content-type: application/json\r\n",
                "content-length: 2\r\n",
            ] {
                assert!(
                    request.contains(line),
                    "{kind:?}: {line:?} not in {request}"
                );
            }
        }
    }
}

//! A minimal HTTP/1.1 keep-alive client: one connection, one request at a time.
//!
//! Each subscriber and each publisher owns one connection, as a browser tab
//! holding a long-poll does. The generator shares two cores with the server it
//! measures, so it does no more per request than writing the request line and
//! reading the status, a few headers and the body (`Content-Length` or chunked).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

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

pub struct Response {
    pub status: u16,
    head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (first occurrence, name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let head = std::str::from_utf8(&self.head).ok()?;
        head.split("\r\n").skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One keep-alive connection, reopened after an error or a `Connection: close`.
pub struct Conn {
    ep: Arc<Endpoint>,
    stream: Option<TcpStream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Limits how many connections are being opened at once (thousands of
    /// subscribers starting together would overflow the listen backlog).
    gate: Arc<Semaphore>,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

impl Conn {
    pub fn new(ep: Arc<Endpoint>, gate: Arc<Semaphore>) -> Conn {
        Conn {
            ep,
            stream: None,
            rbuf: Vec::with_capacity(4096),
            wbuf: Vec::with_capacity(1024),
            gate,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// Sends one request and reads its answer. `target` is the request target
    /// (path and query); `headers` are full lines, each ending in "\r\n".
    pub async fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> io::Result<Response> {
        let r = self.exchange(method, target, headers, body).await;
        if r.is_err() {
            self.stream = None;
            self.rbuf.clear();
        }
        r
    }

    /// Opens the connection now (so that a held poll's socket exists).
    pub async fn connect(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            let _permit = self.gate.acquire().await.map_err(io::Error::other)?;
            let s = TcpStream::connect(self.ep.addr).await?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.rbuf.clear();
        }
        Ok(())
    }

    async fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &str,
        body: &[u8],
    ) -> io::Result<Response> {
        self.connect().await?;
        self.wbuf.clear();
        self.wbuf.extend_from_slice(method.as_bytes());
        self.wbuf.push(b' ');
        self.wbuf.extend_from_slice(target.as_bytes());
        self.wbuf.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        self.wbuf.extend_from_slice(self.ep.host.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        self.wbuf.extend_from_slice(headers.as_bytes());
        if !body.is_empty() || method == "POST" || method == "PUT" {
            self.wbuf
                .extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        self.wbuf.extend_from_slice(b"\r\n");
        self.wbuf.extend_from_slice(body);
        let Some(stream) = self.stream.as_mut() else {
            return Err(bad("not connected"));
        };
        stream.write_all(&self.wbuf).await?;

        // The head.
        let head_end = loop {
            if let Some(i) = HEAD_END.find(&self.rbuf) {
                break i + 4;
            }
            if self.rbuf.len() > 64 * 1024 {
                return Err(bad("response head too large"));
            }
            read_more(stream, &mut self.rbuf).await?;
        };
        let head: Vec<u8> = self.rbuf.drain(..head_end).collect();
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
        let body = if no_body {
            Vec::new()
        } else if chunked {
            read_chunked(stream, &mut self.rbuf).await?
        } else if let Some(n) = length {
            while self.rbuf.len() < n {
                read_more(stream, &mut self.rbuf).await?;
            }
            self.rbuf.drain(..n).collect()
        } else {
            // Delimited by the end of the connection.
            close = true;
            loop {
                match stream.read_buf(&mut self.rbuf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
            std::mem::take(&mut self.rbuf)
        };
        if close {
            self.stream = None;
            self.rbuf.clear();
        }
        Ok(Response { status, head, body })
    }
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

    async fn serve_once(answer: &'static [u8]) -> Arc<Endpoint> {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = s.read(&mut buf).await.unwrap();
                if n == 0 {
                    return;
                }
                s.write_all(answer).await.unwrap();
            }
        });
        Arc::new(Endpoint::parse(&format!("http://{addr}/")).unwrap())
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies_on_one_connection() {
        let ep = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nEtag: 7\r\n\r\nhello\
              HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let mut c = Conn::new(ep, Arc::new(Semaphore::new(1)));
        let r = c.send("GET", "/", "", b"").await.unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
        assert_eq!(r.header("etag"), Some("7"));
        let r = c.send("GET", "/", "", b"").await.unwrap();
        assert_eq!(&r.body[..], b"abcde");
    }
}

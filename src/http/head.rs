//! Owns the request head as hyper hands it over: its size limits (414, 431),
//! checked before anything routes it, and moving its header values out of
//! hyper's connection buffer.
//!
//! hyper parses a request head into slices of its per-connection read buffer
//! (8 KB): the URI and every header value point into it. While anything holds
//! such a slice the buffer stays pinned, and hyper, which reads on during a
//! long-poll to notice a client that goes away, allocates a second one: 8 KB
//! more per held poll. Layers keep some header values for the whole request
//! (tower-http's request-id propagation keeps the caller's `x-request-id`, CORS
//! the `Origin` it echoes), so the header values are copied into one small
//! allocation of their own as the request enters the service. The URI is not:
//! the poll stack's HTTP edge (`http::rescue`) parses the query into owned
//! values, once (a second parse cost 1–2% of the CPU of a poll), and drops the
//! request before anything below it is called, so nothing holds the URI during
//! a wait.
//!
//! Must not: change what the request says — same URI, same headers in the same
//! order, same sensitivity flags.

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, StatusCode};

use crate::config::ConnectionLimits;

/// The answer for a head over the limits: 414 for a URI over
/// `--max-uri-bytes`, 431 for a head over `--max-header-bytes`. hyper's
/// read-buffer cap bounds a head only loosely (a reused connection's buffer may
/// already be larger), so the limits are checked here exactly.
pub fn over_limits<B>(req: &Request<B>, limits: &ConnectionLimits) -> Option<StatusCode> {
    let uri_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Some(StatusCode::URI_TOO_LONG);
    }
    let head_len: usize = uri_len
        + req
            .headers()
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    (head_len > limits.max_header_bytes).then_some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
}

/// The request with its header values copied into one allocation (the URI
/// stays as it is: see the module docs).
pub fn detach_header_values<B>(req: Request<B>) -> Request<B> {
    let (mut parts, body) = req.into_parts();
    let values_len: usize = parts.headers.values().map(HeaderValue::len).sum();
    let mut buf = BytesMut::with_capacity(values_len);
    for value in parts.headers.values() {
        buf.extend_from_slice(value.as_bytes());
    }
    let buf: Bytes = buf.freeze();
    let mut at = 0;
    for value in parts.headers.values_mut() {
        let end = at + value.len();
        // The bytes were a valid header value a moment ago; should the check
        // still refuse them, the original value stays.
        if let Ok(mut copy) = HeaderValue::from_maybe_shared(buf.slice(at..end)) {
            copy.set_sensitive(value.is_sensitive());
            *value = copy;
        }
        at = end;
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Uri;

    /// A request whose URI and header values are slices of `wire`, as hyper
    /// builds them.
    fn request_over(wire: &Bytes) -> Request<()> {
        let text = std::str::from_utf8(wire).expect("ascii");
        let at = |s: &str| text.find(s).expect("present");
        let uri = "/?uuid=longpoll.subscribe.k1&sequence=3";
        let mut req = Request::new(());
        *req.uri_mut() =
            Uri::from_maybe_shared(wire.slice(at(uri)..at(uri) + uri.len())).expect("uri");
        for (name, value) in [("host", "gw.example"), ("cookie", "s=secret")] {
            let v = HeaderValue::from_maybe_shared(wire.slice(at(value)..at(value) + value.len()))
                .expect("value");
            req.headers_mut().append(name, v);
        }
        req.headers_mut()
            .get_mut("cookie")
            .expect("cookie")
            .set_sensitive(true);
        req
    }

    fn wire() -> Bytes {
        Bytes::from(
            b"GET /?uuid=longpoll.subscribe.k1&sequence=3 HTTP/1.1\r\n\
              host: gw.example\r\ncookie: s=secret\r\n\r\n"
                .to_vec(),
        )
    }

    #[test]
    fn detached_header_values_no_longer_hold_the_connection_buffer() {
        let wire = wire();
        let req = request_over(&wire);
        assert!(!wire.is_unique(), "the head starts as slices of the buffer");
        let (parts, ()) = detach_header_values(req).into_parts();
        // What a poll keeps while it waits: header values a layer took, not the URI.
        let kept = parts.headers.clone();
        drop(parts);
        assert!(wire.is_unique(), "nothing but the buffer's owner holds it");
        assert_eq!(kept["host"], "gw.example");
    }

    #[test]
    fn the_detached_request_says_the_same_thing() {
        let wire = wire();
        let before = request_over(&wire);
        let after = detach_header_values(request_over(&wire));
        assert_eq!(after.uri(), before.uri());
        assert_eq!(
            after.uri().query(),
            Some("uuid=longpoll.subscribe.k1&sequence=3")
        );
        let pairs = |r: &Request<()>| {
            r.headers()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(&after), pairs(&before));
        assert!(after.headers()["cookie"].is_sensitive());
    }

    #[test]
    fn a_long_uri_is_414_and_a_large_head_431() {
        let limits = ConnectionLimits {
            max_uri_bytes: 32,
            max_header_bytes: 64,
            ..crate::config::Settings::default().limits
        };
        let get = |uri: &str| Request::get(uri).body(()).expect("request");
        assert_eq!(over_limits(&get("/?uuid=k&sequence=1"), &limits), None);
        assert_eq!(
            over_limits(&get(&format!("/?uuid={}", "k".repeat(40))), &limits),
            Some(StatusCode::URI_TOO_LONG)
        );
        let mut big = get("/?uuid=k&sequence=1");
        big.headers_mut().insert(
            "x-padding",
            HeaderValue::from_static("pppppppppppppppppppppppppppppppppppppppp"),
        );
        assert_eq!(
            over_limits(&big, &limits),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
    }

    #[test]
    fn an_absolute_form_uri_is_kept_whole() {
        let req = Request::get("http://gw.example:8080/?uuid=k&sequence=1")
            .body(())
            .expect("request");
        let after = detach_header_values(req);
        assert_eq!(after.uri().host(), Some("gw.example"));
        assert_eq!(after.uri().port_u16(), Some(8080));
        assert_eq!(after.uri().query(), Some("uuid=k&sequence=1"));
    }
}

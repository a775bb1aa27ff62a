//! Static assets embedded in the binary: the browser client and the demo page.
//!
//! | path | what | caching |
//! |---|---|---|
//! | `/longpoll.js` | the client as a classic script (global `LongPoll`) | `no-cache` + `ETag`, `If-None-Match` → 304 |
//! | `/longpoll.mjs` | the same client as an ES module (`export { LongPoll }`) | as above |
//! | `/longpoll.{etag}.js`, `/longpoll.{etag}.mjs` | the same bytes under a content-addressed name | `public, max-age=31536000, immutable` |
//! | `/demo`, `/demo.css`, `/demo.js` | the demo page | `no-cache` + `ETag` |
//!
//! The module is the classic script with an export appended, so the two can
//! never drift apart. The ETag is the first 16 hex digits of the SHA-256 of the
//! served bytes, computed once; it is also the versioned name's `{etag}`, so a
//! page can find the immutable URL from a `HEAD /longpoll.js`. Only the current
//! version's names are routes: an old name falls through to the poll stack.
//! The scripts carry `Access-Control-Allow-Origin: *` (public, no credentials)
//! so that a page on another origin can `import` the module.

use std::sync::LazyLock;

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http::header::{
    ACCESS_CONTROL_ALLOW_ORIGIN, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG,
    HeaderMap, HeaderValue, IF_NONE_MATCH, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS,
};
use sha2::{Digest, Sha256};

const CLIENT_JS: &str = include_str!("../../assets/longpoll.js");
/// The module form: the same source (its top-level `var LongPoll` is module-local
/// in a module) plus the exports.
const CLIENT_MJS: &str = concat!(
    include_str!("../../assets/longpoll.js"),
    "\nexport { LongPoll };\nexport default LongPoll;\n"
);
const DEMO_HTML: &str = include_str!("../../assets/demo.html");
const DEMO_CSS: &str = include_str!("../../assets/demo.css");
const DEMO_JS: &str = include_str!("../../assets/demo.js");

const JAVASCRIPT: &str = "text/javascript; charset=utf-8";
const REVALIDATE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// The demo loads nothing from elsewhere; polls may go to a `--public-url` host.
const DEMO_CSP: &str = "default-src 'self'; connect-src 'self' http: https:; img-src 'self' data:; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file with its headers, built once.
pub struct Asset {
    body: Bytes,
    content_type: &'static str,
    /// 16 hex digits of the body's SHA-256 (no quotes).
    hash: String,
    etag: HeaderValue,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        let hash = content_hash(body.as_bytes());
        let etag = HeaderValue::from_str(&format!("\"{hash}\""))
            .unwrap_or(HeaderValue::from_static("\"0\""));
        Asset {
            body: Bytes::from_static(body.as_bytes()),
            content_type,
            hash,
            etag,
        }
    }

    /// The content hash used in the ETag and the versioned name.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

/// Every asset, hashed on first use.
pub struct Assets {
    pub js: Asset,
    pub mjs: Asset,
    pub demo_html: Asset,
    pub demo_css: Asset,
    pub demo_js: Asset,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| Assets {
    js: Asset::new(CLIENT_JS, JAVASCRIPT),
    mjs: Asset::new(CLIENT_MJS, JAVASCRIPT),
    demo_html: Asset::new(DEMO_HTML, "text/html; charset=utf-8"),
    demo_css: Asset::new(DEMO_CSS, "text/css; charset=utf-8"),
    demo_js: Asset::new(DEMO_JS, JAVASCRIPT),
});

/// The embedded assets (e.g. to log the versioned client URLs at start-up).
pub fn assets() -> &'static Assets {
    &ASSETS
}

/// The immutable paths of the client: (`/longpoll.{hash}.js`, `/longpoll.{hash}.mjs`).
pub fn versioned_paths() -> (String, String) {
    let a = assets();
    (
        format!("/longpoll.{}.js", a.js.hash),
        format!("/longpoll.{}.mjs", a.mjs.hash),
    )
}

/// How a response may be cached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Caching {
    /// Plain names: always revalidate (cheap, thanks to the ETag).
    Revalidate,
    /// Content-addressed names: never changes.
    Immutable,
}

/// Routes for the assets.
pub fn routes() -> Router {
    let a = assets();
    let (js_versioned, mjs_versioned) = versioned_paths();
    Router::new()
        .route(
            "/longpoll.js",
            get(|h: HeaderMap| serve_script(&a.js, Caching::Revalidate, h)),
        )
        .route(
            "/longpoll.mjs",
            get(|h: HeaderMap| serve_script(&a.mjs, Caching::Revalidate, h)),
        )
        .route(
            &js_versioned,
            get(|h: HeaderMap| serve_script(&a.js, Caching::Immutable, h)),
        )
        .route(
            &mjs_versioned,
            get(|h: HeaderMap| serve_script(&a.mjs, Caching::Immutable, h)),
        )
        .route("/demo", get(|h: HeaderMap| serve_demo(&a.demo_html, h)))
        .route("/demo.css", get(|h: HeaderMap| serve_demo(&a.demo_css, h)))
        .route("/demo.js", get(|h: HeaderMap| serve_demo(&a.demo_js, h)))
}

async fn serve_script(asset: &'static Asset, caching: Caching, headers: HeaderMap) -> Response {
    let mut r = respond(asset, caching, &headers);
    r.headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    r
}

async fn serve_demo(asset: &'static Asset, headers: HeaderMap) -> Response {
    let mut r = respond(asset, Caching::Revalidate, &headers);
    let h = r.headers_mut();
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(DEMO_CSP));
    // The demo link may carry ?token=: keep it out of Referer headers.
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    r
}

/// 304 when `If-None-Match` names the asset's ETag, else 200 with the body.
fn respond(asset: &Asset, caching: Caching, request: &HeaderMap) -> Response {
    let fresh = request
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| etag_matches(v, &asset.etag));
    let mut r = if fresh {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        r
    } else {
        let mut r = Response::new(Body::from(asset.body.clone()));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        r
    };
    let h = r.headers_mut();
    h.insert(ETAG, asset.etag.clone());
    h.insert(
        CACHE_CONTROL,
        HeaderValue::from_static(cache_control(caching)),
    );
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn cache_control(caching: Caching) -> &'static str {
    match caching {
        Caching::Revalidate => REVALIDATE,
        Caching::Immutable => IMMUTABLE,
    }
}

/// `If-None-Match` uses the weak comparison (RFC 9110 §13.1.2): `*`, or any
/// listed tag equal to ours once `W/` is ignored.
fn etag_matches(if_none_match: &str, etag: &HeaderValue) -> bool {
    let ours = etag.as_bytes();
    if_none_match
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == ours)
}

/// 16 hex digits of SHA-256: plenty to tell versions apart, short enough for a URL.
fn content_hash(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use http::Request;
    use tower::ServiceExt;

    async fn get(path: &str, if_none_match: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(tag) = if_none_match {
            req = req.header(IF_NONE_MATCH, tag);
        }
        routes()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    fn header(r: &Response, name: http::header::HeaderName) -> &str {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn client_is_served_as_javascript_with_an_etag() {
        let r = get("/longpoll.js", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, CONTENT_TYPE), JAVASCRIPT);
        assert_eq!(header(&r, CACHE_CONTROL), "no-cache");
        assert_eq!(header(&r, ETAG), format!("\"{}\"", assets().js.hash()));
        let body = to_bytes(r.into_body(), usize::MAX).await.unwrap();
        assert_eq!(body, CLIENT_JS.as_bytes());
    }

    #[tokio::test]
    async fn matching_if_none_match_is_answered_304_without_a_body() {
        let etag = format!("\"{}\"", assets().mjs.hash());
        for tag in [
            etag.clone(),
            format!("W/{etag}"),
            format!("\"x\", {etag}"),
            "*".into(),
        ] {
            let r = get("/longpoll.mjs", Some(&tag)).await;
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{tag}");
            assert_eq!(header(&r, ETAG), etag);
            let body = to_bytes(r.into_body(), usize::MAX).await.unwrap();
            assert!(body.is_empty());
        }
        let r = get("/longpoll.mjs", Some("\"stale\"")).await;
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn versioned_names_are_immutable() {
        let (js, mjs) = versioned_paths();
        for path in [js, mjs] {
            let r = get(&path, None).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            assert_eq!(header(&r, CACHE_CONTROL), IMMUTABLE);
            assert_eq!(header(&r, CONTENT_TYPE), JAVASCRIPT);
            assert_eq!(header(&r, ACCESS_CONTROL_ALLOW_ORIGIN), "*");
        }
    }

    #[tokio::test]
    async fn an_unknown_version_is_not_an_asset_route() {
        let r = get("/longpoll.0000000000000000.js", None).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn module_is_the_script_plus_its_exports() {
        assert!(CLIENT_JS.contains("var LongPoll = "));
        assert!(!CLIENT_JS.lines().any(|l| l.starts_with("export")));
        let tail = CLIENT_MJS.strip_prefix(CLIENT_JS).unwrap();
        assert!(tail.contains("export { LongPoll }"));
        assert_ne!(assets().js.hash(), assets().mjs.hash());
    }

    #[tokio::test]
    async fn demo_page_loads_only_from_its_own_origin() {
        let r = get("/demo", None).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(header(&r, CONTENT_TYPE).starts_with("text/html"));
        assert!(header(&r, CONTENT_SECURITY_POLICY).starts_with("default-src 'self'"));
        for (path, kind) in [("/demo.css", "text/css"), ("/demo.js", "text/javascript")] {
            let r = get(path, None).await;
            assert!(header(&r, CONTENT_TYPE).starts_with(kind), "{path}");
        }
    }

    #[test]
    fn content_hash_is_16_hex_digits() {
        let h = content_hash(b"");
        assert_eq!(h, "e3b0c44298fc1c14");
    }
}

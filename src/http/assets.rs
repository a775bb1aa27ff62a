//! Static assets embedded in the binary: the browser client and the demo page.

use axum::Router;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};

const LONGPOLL_JS: &str = include_str!("../../assets/longpoll.js");
const DEMO_HTML: &str = include_str!("../../assets/demo.html");

/// Routes for the assets.
pub fn routes() -> Router {
    Router::new()
        .route("/longpoll.js", get(longpoll_js))
        .route("/demo", get(demo))
}

async fn longpoll_js() -> Response {
    let mut r = LONGPOLL_JS.into_response();
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

async fn demo() -> Html<&'static str> {
    Html(DEMO_HTML)
}

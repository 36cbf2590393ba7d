//! The operator console's files and the headers every answer carries. The console is three
//! files built from `console/` at the repository root and embedded here at compile time
//! (`cargo build` never runs Node): `GET /` is its page, `GET /assets/app.js` and
//! `GET /assets/app.css` its script and style; nothing else under `/assets/` exists. Client
//! routing uses the URL's hash, so no other HTML path is served.
//!
//! [`security_headers`] wraps the whole router, the API and the agent endpoints too: a strict
//! Content-Security-Policy (this server's own script and style only, no inline code, no other
//! origin, no framing), `nosniff`, no referrer, and HSTS when the server serves TLS. This
//! module never reads a credential.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, AppState, Shared};

const INDEX_HTML: &[u8] = include_bytes!("../../console/index.html");
const APP_JS: &[u8] = include_bytes!("../../console/app.js");
const APP_CSS: &[u8] = include_bytes!("../../console/app.css");

/// The Content-Security-Policy of every answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";
/// HSTS, sent only when the server serves TLS.
pub const HSTS: &str = "max-age=31536000";

/// `/`, `/assets/app.js`, `/assets/app.css`, and a 404 for anything else under `/assets/`.
pub(super) fn routes() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { file(INDEX_HTML, "text/html; charset=utf-8") }),
        )
        .route(
            "/assets/app.js",
            get(|| async { file(APP_JS, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/assets/app.css",
            get(|| async { file(APP_CSS, "text/css; charset=utf-8") }),
        )
        .route(
            "/assets/{*rest}",
            get(|| async { ApiError::not_found("no such asset") }),
        )
}

/// One embedded file: revalidated on each use, so a new server's console is picked up at once.
fn file(bytes: &'static [u8], content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        bytes,
    )
        .into_response()
}

/// Puts the security headers on every answer, whatever produced it.
pub(super) async fn security_headers(State(s): Shared, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if s.tls {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    response
}

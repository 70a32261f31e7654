//! The SPIKE REST API listener.
//!
//! SPIKE semantics for a replica that does not hold the root key: every
//! `POST` route answers 503 `{"err":"state_not_ready"}`, anything else 400
//! `{"err":"api_bad_request"}`. Until the replicated store is in place this
//! replica never obtains the root key, so that is every answer it gives.

use axum::Router;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// SPIKE's no-cache headers, sent with every answer.
const NO_CACHE_HEADERS: [(header::HeaderName, &str); 3] = [
    (
        header::CACHE_CONTROL,
        "no-store, no-cache, must-revalidate, private",
    ),
    (header::PRAGMA, "no-cache"),
    (header::EXPIRES, "0"),
];

/// The API router.
pub fn router() -> Router {
    Router::new().fallback(not_ready)
}

async fn not_ready(method: Method) -> Response {
    if method == Method::POST {
        error(StatusCode::SERVICE_UNAVAILABLE, "state_not_ready")
    } else {
        error(StatusCode::BAD_REQUEST, "api_bad_request")
    }
}

fn error(status: StatusCode, code: &'static str) -> Response {
    let mut response = (status, axum::Json(serde_json::json!({ "err": code }))).into_response();
    for (name, value) in NO_CACHE_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

//! The service's errors: [`Error`] for starting and stopping it, [`ApiError`] for a request.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the service could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A setting is wrong (the message names it).
    #[error("configuration: {0}")]
    Config(String),
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A cache, the session store or the rate limiter could not be built or drained.
    #[error("cache: {0}")]
    Cache(#[from] layercache::Error),
    /// The private `redis-server` could not be started.
    #[error("starting a private redis-server: {0}")]
    RedisServer(String),
    /// Listening or serving failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// A request's failure: its status and a message, answered as `{"error": "<message>"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// The database failed: logged with its cause, answered 503 without it.
    pub(crate) fn database(error: &sqlx::Error) -> Self {
        tracing::warn!(%error, "database error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database is unavailable",
        )
    }

    /// A read through the cache failed (its loader, the database, timed out or failed).
    pub(crate) fn cache(error: &layercache::Error) -> Self {
        tracing::warn!(%error, "read through the cache failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the product store is unavailable",
        )
    }

    /// The session store failed.
    pub(crate) fn session(error: &tower_sessions::session::Error) -> Self {
        tracing::warn!(%error, "session store error");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the session store is unavailable",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        // 400 malformed, 413 too large, 415 not JSON, 422 the wrong shape.
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(rejection.status(), rejection.body_text())
    }
}

//! The routes: products, sessions, and the router that puts them together with the rate limiter,
//! the session layer, the body limit and the JSON fallbacks.
//!
//! Every request is validated before it reaches the catalog, so a bad request (malformed JSON,
//! a body over [`BODY_LIMIT`], an id that is not a positive number, a bad query, an unknown
//! route or method) is answered with a 4xx and `{"error": ...}` and never touches the cache.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{Method, Request, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_sessions::cookie::time;
use tower_sessions::{Expiry, Session, SessionManagerLayer};

use crate::catalog::{Failure, Written};
use crate::db::NewProduct;
use crate::error::ApiError;
use crate::service::AppState;

/// The largest request body accepted (64 KiB); larger ones get `413`.
pub const BODY_LIMIT: usize = 64 * 1024;
/// The highest page number of `GET /products` (bounds the database's offset).
pub const MAX_PAGE: u32 = 10_000;
/// The name of the session cookie.
pub const SESSION_COOKIE: &str = "layercache_session";
/// The session key holding the logged-in user's name.
const USER: &str = "user";

/// The whole application: the API routes (rate limited), login and logout, the operational
/// routes, and JSON answers for unknown routes and methods.
pub(crate) fn router(state: AppState) -> Router {
    let sessions = SessionManagerLayer::new(state.sessions.clone())
        .with_name(SESSION_COOKIE)
        .with_secure(state.secure_cookies)
        .with_expiry(Expiry::OnInactivity(session_ttl(&state)))
        // Sliding expiry: the cookie and the record are renewed on every request; the store
        // writes Redis only when less than half the TTL is left.
        .with_always_save(true);

    let me = Router::new().route("/me", get(me)).layer(sessions.clone());
    let mut api = Router::new()
        .route("/products", get(list_products).post(create_product))
        .route(
            "/products/{id}",
            get(get_product).put(update_product).delete(delete_product),
        )
        .merge(me);
    if let Some(limiter) = &state.limiter {
        api = api.layer(limiter.layer(client_key as fn(&Request<Body>) -> Option<String>));
    }
    // Outside the limiter: gives its empty 429 and 503 answers a JSON body.
    let api = api.layer(middleware::map_response(json_refusal));

    let auth = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .layer(sessions);
    let ops = Router::new()
        .route("/health", get(crate::ops::health))
        .route("/cache/stats", get(crate::ops::cache_stats))
        .route("/metrics", get(crate::ops::metrics));

    api.merge(auth)
        .merge(ops)
        .fallback(unknown_route)
        .method_not_allowed_fallback(unknown_method)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

fn session_ttl(state: &AppState) -> time::Duration {
    time::Duration::try_from(state.session_ttl).unwrap_or(time::Duration::days(1))
}

/// The rate limiter's key of a request: its `x-api-key` header, else the client's IP address.
fn client_key(request: &Request<Body>) -> Option<String> {
    let api_key = request
        .headers()
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
        .filter(|key| !key.is_empty() && key.len() <= 128);
    if let Some(key) = api_key {
        return Some(format!("key:{key}"));
    }
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| format!("ip:{}", addr.ip()))
}

/// The limiter answers 429 (over the limit) and 503 (failing closed) with an empty body.
async fn json_refusal(response: Response) -> Response {
    let status = response.status();
    let refused = status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::SERVICE_UNAVAILABLE
            && !response.headers().contains_key(header::CONTENT_TYPE));
    if !refused {
        return response;
    }
    let message = if status == StatusCode::TOO_MANY_REQUESTS {
        "rate limit exceeded"
    } else {
        "the rate limiter is unavailable"
    };
    let (mut parts, _) = response.into_parts();
    let body = json!({ "error": message }).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

async fn unknown_route(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route for {method} {}", uri.path()))
}

async fn unknown_method(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// A product id from the path: a positive number, else 400.
fn product_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(text) = path?;
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::bad_request(format!(
            "product id {text:?} is not a positive number"
        ))),
    }
}

/// Whether `category` is 1 to 40 letters, digits, `-` or `_` (it is part of cache keys and tags).
fn valid_category(category: &str) -> bool {
    (1..=40).contains(&category.len())
        && category
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn validate(body: Result<Json<NewProduct>, JsonRejection>) -> Result<NewProduct, ApiError> {
    let Json(new) = body?;
    let name_len = new.name.chars().count();
    if new.name.trim().is_empty() || name_len > 200 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must be 1 to 200 characters",
        ));
    }
    if !valid_category(&new.category) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "category must be 1 to 40 letters, digits, '-' or '_'",
        ));
    }
    if !(0..=1_000_000_000_000).contains(&new.price_cents) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "price_cents must be between 0 and 10^12",
        ));
    }
    Ok(new)
}

fn failure(error: Failure) -> ApiError {
    match error {
        Failure::Database(error) => ApiError::database(&error),
        Failure::Cache(error) => ApiError::cache(&error),
    }
}

async fn get_product(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = product_id(id)?;
    match state.catalog.product(id).await.map_err(failure)? {
        Some(product) => Ok(Json(product).into_response()),
        None => Err(ApiError::not_found(format!("no product {id}"))),
    }
}

/// The query of `GET /products`: `category` (optional) and `page` (from 1, default 1).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    category: Option<String>,
    page: Option<u32>,
}

async fn list_products(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let page = query.page.unwrap_or(1);
    if !(1..=MAX_PAGE).contains(&page) {
        return Err(ApiError::bad_request(format!(
            "page must be between 1 and {MAX_PAGE}"
        )));
    }
    let category = query.category.filter(|c| !c.is_empty());
    if let Some(category) = &category
        && !valid_category(category)
    {
        return Err(ApiError::bad_request(
            "category must be 1 to 40 letters, digits, '-' or '_'",
        ));
    }
    let page = state.catalog.page(category, page).await.map_err(failure)?;
    Ok(Json(page).into_response())
}

async fn create_product(
    State(state): State<AppState>,
    body: Result<Json<NewProduct>, JsonRejection>,
) -> Result<Response, ApiError> {
    let new = validate(body)?;
    let product = state.catalog.create(&new).await.map_err(failure)?;
    Ok((StatusCode::CREATED, Json(product)).into_response())
}

async fn update_product(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<NewProduct>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = product_id(id)?;
    let new = validate(body)?;
    match state.catalog.update(id, &new).await.map_err(failure)? {
        Written::Done(product) => Ok(Json(product).into_response()),
        Written::NotFound => Err(ApiError::not_found(format!("no product {id}"))),
    }
}

async fn delete_product(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = product_id(id)?;
    match state.catalog.delete(id).await.map_err(failure)? {
        Written::Done(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Written::NotFound => Err(ApiError::not_found(format!("no product {id}"))),
    }
}

/// The body of `POST /login`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    user: String,
    password: String,
}

#[derive(Debug, Serialize)]
struct Me {
    user: String,
}

async fn login(
    State(state): State<AppState>,
    session: Session,
    body: Result<Json<Login>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(login) = body?;
    if login.user.is_empty() || login.user.len() > 100 || login.password.len() > 200 {
        return Err(ApiError::unauthorized("invalid user or password"));
    }
    let stored = state
        .catalog
        .db
        .password(&login.user)
        .await
        .map_err(|error| ApiError::database(&error))?;
    // A demo: a real service stores a password hash (argon2) and compares in constant time.
    if stored.as_deref() != Some(login.password.as_str()) {
        return Err(ApiError::unauthorized("invalid user or password"));
    }
    // A new id at login: an id set before (fixation) does not become an authenticated one.
    session
        .cycle_id()
        .await
        .map_err(|error| ApiError::session(&error))?;
    session
        .insert(USER, &login.user)
        .await
        .map_err(|error| ApiError::session(&error))?;
    Ok(Json(Me { user: login.user }).into_response())
}

async fn me(session: Session) -> Result<Response, ApiError> {
    match session
        .get::<String>(USER)
        .await
        .map_err(|error| ApiError::session(&error))?
    {
        Some(user) => Ok(Json(Me { user }).into_response()),
        None => Err(ApiError::unauthorized("not logged in")),
    }
}

async fn logout(session: Session) -> Result<Response, ApiError> {
    // Deletes the record from every tier (and, through pub/sub, every instance's L1).
    session
        .flush()
        .await
        .map_err(|error| ApiError::session(&error))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories_are_key_safe() {
        for good in ["books", "a", "x-1_Y", &"c".repeat(40)] {
            assert!(valid_category(good), "{good}");
        }
        for bad in ["", "a b", "a:b", "*", "é", &"c".repeat(41)] {
            assert!(!valid_category(bad), "{bad}");
        }
    }

    #[test]
    fn ids_are_positive_numbers() {
        let id = |text: &str| product_id(Ok(Path(text.to_owned()))).ok();
        assert_eq!(id("42"), Some(42));
        assert_eq!(id("0"), None);
        assert_eq!(id("-3"), None);
        assert_eq!(id("abc"), None);
        assert_eq!(id("99999999999999999999"), None);
    }
}

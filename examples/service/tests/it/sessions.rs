//! Sessions over real HTTP: a login on one instance is a session on both, its cookie slides
//! (24 h of inactivity), and a logout on one ends it on both.

use layercache_example_service::{DEMO_USER, SESSION_COOKIE};
use layercache_testkit::RedisServer;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{Answer, Client, TempDir, config, eventually, start};

/// The `name=value` of the session cookie an answer sets, if it sets one.
fn session_cookie(answer: &Answer) -> Option<String> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|cookie| cookie.starts_with(&format!("{SESSION_COOKIE}=")))
        .and_then(|cookie| cookie.split(';').next())
        .map(str::to_owned)
}

/// The `Max-Age` of the session cookie an answer sets.
fn max_age(answer: &Answer) -> Option<u64> {
    answer
        .headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .find(|cookie| cookie.starts_with(&format!("{SESSION_COOKIE}=")))?
        .split(';')
        .find_map(|part| part.trim().strip_prefix("Max-Age="))?
        .parse()
        .ok()
}

async fn me(client: &Client, cookie: &str) -> Answer {
    client
        .send(client.request(Method::GET, "/me").header("cookie", cookie))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_login_on_one_instance_works_on_both_and_logout_ends_it_on_both() {
    let redis = RedisServer::start();
    let dir = TempDir::new();
    let a = start(config(&redis, Some(dir.sqlite_url()))).await;
    let b = start(config(&redis, Some(dir.sqlite_url()))).await;
    let (ca, cb) = (Client::new(&a), Client::new(&b));
    let (user, password) = DEMO_USER;

    // Not logged in: 401 with a JSON error, and no session is created for it.
    let anonymous = ca.get("/me").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.error().is_some());
    assert_eq!(session_cookie(&anonymous), None);

    // A wrong password or an unknown user: 401, no cookie.
    for (u, p) in [(user, "wrong"), ("nobody", password)] {
        let refused = ca.post("/login", &json!({"user": u, "password": p})).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{u}/{p}");
        assert!(refused.error().is_some());
        assert_eq!(session_cookie(&refused), None);
    }

    let login = ca
        .post("/login", &json!({"user": user, "password": password}))
        .await;
    assert_eq!(login.status, StatusCode::OK, "{:?}", login.body);
    assert_eq!(login.body["user"], user);
    let cookie = session_cookie(&login).expect("a session cookie");
    let day = 24 * 3600;
    assert!(
        max_age(&login).is_some_and(|age| (day - 60..=day).contains(&age)),
        "a 24 h cookie: {:?}",
        login.headers
    );

    // The session is served by A (its L1) and by B (from Redis), repeatedly; each answer renews
    // the cookie (sliding expiry).
    for client in [&ca, &cb, &ca, &cb] {
        let answer = me(client, &cookie).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.body["user"], user);
        assert!(
            max_age(&answer).is_some_and(|age| (day - 60..=day).contains(&age)),
            "renewed: {:?}",
            answer.headers
        );
    }
    // Renewing did not write the record on every request (only past half its TTL).
    let writes_before = a.session_cache_stats().l2_writes + b.session_cache_stats().l2_writes;
    for client in [&ca, &cb, &ca, &cb] {
        assert_eq!(me(client, &cookie).await.status, StatusCode::OK);
    }
    let writes_after = a.session_cache_stats().l2_writes + b.session_cache_stats().l2_writes;
    assert_eq!(writes_after, writes_before, "no write per request");

    // Logout on A: 401 at once on A, and on B as soon as the invalidation reaches it.
    let logout = ca
        .send(
            ca.request(Method::POST, "/logout")
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_eq!(me(&ca, &cookie).await.status, StatusCode::UNAUTHORIZED);
    eventually(|| async {
        let answer = me(&cb, &cookie).await;
        match answer.status {
            StatusCode::UNAUTHORIZED => Ok(()),
            other => Err(format!("B still serves the session: {other}")),
        }
    })
    .await
    .unwrap();
    // And it stays gone on both (no instance brings it back with a save).
    for client in [&ca, &cb] {
        assert_eq!(me(client, &cookie).await.status, StatusCode::UNAUTHORIZED);
    }

    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

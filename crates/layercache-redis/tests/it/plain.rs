//! Plain values (issue 11): what other programs read with a plain `GET` — here a Python script
//! with the standard library only, speaking RESP over a socket, then `json.loads`.

use std::process::Command;
use std::time::Duration;

use layercache_core::{Backend, Clock, EntryOptions, SystemClock};
use layercache_redis::RedisBackend;
use layercache_testkit::conformance::unique_space;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    tags: Vec<String>,
}

/// Reads `key` from the Redis on `port` the way a Python service would, and prints the parsed
/// value's `name` and `id`.
const PYTHON_READER: &str = r#"
import json, socket, sys
port, key = int(sys.argv[1]), sys.argv[2].encode()
s = socket.create_connection(("127.0.0.1", port))
s.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key))
f = s.makefile("rb")
header = f.readline()
assert header.startswith(b"$"), header
body = f.read(int(header[1:]))
value = json.loads(body)
print(value["name"], value["id"])
"#;

fn python(port: u16, key: &str) -> String {
    let output = Command::new("python3")
        .arg("-c")
        .arg(PYTHON_READER)
        .arg(port.to_string())
        .arg(key)
        .output()
        .expect("python3 runs (install it with `apt-get install python3`)");
    assert!(
        output.status.success(),
        "the Python reader failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_script_reads_a_plain_value_and_redis_keeps_its_lifetime() {
    let server = crate::shared_server();
    let redis = RedisBackend::builder(server.url())
        .plain_values()
        .connect()
        .await
        .unwrap();
    let ns = unique_space().namespace("products").unwrap();
    let key = ns.key("42").unwrap();
    let product = Product {
        id: 42,
        name: "teapot".to_owned(),
        tags: vec!["kitchen".to_owned()],
    };
    let entry = EntryOptions::new(Duration::from_secs(600))
        .entry(product.clone(), SystemClock.now(), Duration::ZERO)
        .unwrap();
    redis.set(&key, entry).await.unwrap();

    assert_eq!(python(server.port(), key.as_str()), "teapot 42\n");

    // The bytes are the JSON alone; the lifetime is the key's TTL.
    let mut conn = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(raw, serde_json::to_vec(&product).unwrap());
    let ttl: i64 = redis::cmd("PTTL")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 600_000, "PTTL {ttl}");

    // Read back: fresh until the TTL runs out; and what another program writes is read too.
    let back = Backend::<Product>::get(&redis, &key)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.value, product);
    let now = SystemClock.now();
    assert!(back.meta.is_fresh(now));
    assert!(back.meta.stale_until.saturating_since(now) <= Duration::from_secs(600));
    let other = ns.key("43").unwrap();
    let _: () = redis::cmd("SET")
        .arg(other.as_str())
        .arg(r#"{"id":43,"name":"cup","tags":[]}"#)
        .query_async(&mut conn)
        .await
        .unwrap();
    let many =
        Backend::<Product>::get_many(&redis, &[key.clone(), other.clone(), ns.key("44").unwrap()])
            .await
            .unwrap();
    assert_eq!(many[0].as_ref().map(|e| e.value.id), Some(42));
    assert_eq!(many[1].as_ref().map(|e| e.value.name.as_str()), Some("cup"));
    assert!(many[2].is_none());

    // A delete leaves nothing another program could not read (no tombstone).
    assert!(
        Backend::<Product>::invalidate(&redis, &key, SystemClock.now(), Duration::from_secs(60))
            .await
            .unwrap()
    );
    let gone: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key.as_str())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(gone, None);

    // Bytes that are not the value's JSON: a miss and a counted decode failure.
    let _: () = redis::cmd("SET")
        .arg(other.as_str())
        .arg("not json")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = redis.stats().decode_failures;
    assert!(
        Backend::<Product>::get(&redis, &other)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(redis.stats().decode_failures, before + 1);
}

use std::collections::BTreeSet;
use std::fs;
use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;

use super::RedisServer;
use super::binary::{NOT_FOUND, locate};
use super::files::{create_temp_dir, last_lines};
use super::launch::LaunchError;
use super::ports::{DEFAULT_REDIS_PORT, reserve_port};
use super::resp::{Reply, info_field, read_reply};

fn temp_dir_with(files: &[&str]) -> PathBuf {
    let dir = create_temp_dir();
    for name in files {
        let path = dir.join(name);
        fs::File::create(&path)
            .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|error| panic!("chmod {}: {error}", path.display()));
        }
    }
    dir
}

#[test]
fn locate_prefers_override_then_sibling_then_path() {
    let path_dir = temp_dir_with(&["redis-server", "redis-cli"]);
    let sibling = temp_dir_with(&["redis-cli"]);
    let path_var = Some(path_dir.clone().into_os_string());

    let found = locate("redis-server", "X", None, path_var.clone(), None);
    assert_eq!(found, Some(Ok(path_dir.join("redis-server"))));

    let found = locate("redis-cli", "X", None, path_var.clone(), Some(&sibling));
    assert_eq!(found, Some(Ok(sibling.join("redis-cli"))));

    let explicit = sibling.join("redis-cli");
    let found = locate(
        "redis-server",
        "X",
        Some(explicit.clone().into()),
        path_var.clone(),
        None,
    );
    assert_eq!(found, Some(Ok(explicit)));

    // A bare name in the override is searched on PATH.
    let found = locate(
        "redis-server",
        "X",
        Some("redis-cli".into()),
        path_var.clone(),
        None,
    );
    assert_eq!(found, Some(Ok(path_dir.join("redis-cli"))));

    let _ = fs::remove_dir_all(path_dir);
    let _ = fs::remove_dir_all(sibling);
}

#[test]
fn locate_reports_missing_binaries() {
    let empty = temp_dir_with(&[]);
    let path_var = Some(empty.clone().into_os_string());
    assert_eq!(
        locate("redis-server", "X", None, path_var.clone(), None),
        None
    );
    assert_eq!(locate("redis-server", "X", None, None, None), None);
    match locate(
        "redis-server",
        "MY_ENV",
        Some("/nonexistent/redis".into()),
        path_var,
        None,
    ) {
        Some(Err(message)) => assert!(message.contains("MY_ENV"), "{message}"),
        other => panic!("expected an error for a bad override, got {other:?}"),
    }
    let _ = fs::remove_dir_all(empty);
}

#[test]
fn not_found_message_explains_installation() {
    assert!(NOT_FOUND.contains("redis-server was not found on PATH"));
    assert!(NOT_FOUND.contains("LAYERCACHE_REDIS_SERVER"));
    assert!(NOT_FOUND.contains("cargo xtask redis"));
    assert!(NOT_FOUND.contains("Tests never skip"));
}

#[test]
fn resp_replies_parse() {
    let mut input: &[u8] = b"+PONG\r\n-NOAUTH Authentication required.\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n$1\r\na\r\n:1\r\n";
    assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Simple(s)) if s == "PONG"));
    assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Error(s)) if s.starts_with("NOAUTH")));
    assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Integer(42))));
    assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Bulk(Some(b))) if b == b"abc"));
    assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Bulk(None))));
    assert!(matches!(read_reply(&mut input, 0), Ok(Reply::Array(Some(items))) if items.len() == 2));
    assert!(read_reply(&mut input, 0).is_err());
    let mut garbage: &[u8] = b"HTTP/1.1 400 Bad Request\r\n";
    assert!(read_reply(&mut garbage, 0).is_err());
    let mut huge: &[u8] = b"$99999999999\r\n";
    assert!(read_reply(&mut huge, 0).is_err());
}

#[test]
fn info_fields_and_tails() {
    let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:1234\r\n";
    assert_eq!(info_field(info, "process_id"), Some("1234"));
    assert_eq!(info_field(info, "missing"), None);
    assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
    assert_eq!(last_lines("a\nb", 5), "a\nb");
    assert_eq!(last_lines("", 3), "");
}

#[test]
fn reserved_ports_are_unique() {
    let ports: BTreeSet<u16> = (0..50).map(|_| reserve_port(false)).collect();
    assert_eq!(ports.len(), 50);
    assert!(!ports.contains(&DEFAULT_REDIS_PORT));
}

/// Launches a process for `port` and expects the port-in-use verdict that makes `start`
/// retry with another port.
fn expect_addr_in_use(port: u16) {
    let spec = RedisServer::builder().into_spec();
    let result = spec.launch(port, None, None);
    let diagnostics = spec.diagnostics();
    let _ = fs::remove_dir_all(&spec.dir);
    match result {
        Err(LaunchError::AddrInUse(_)) => {}
        Err(LaunchError::Failed(message)) => {
            panic!("expected AddrInUse, got Failed({message}){diagnostics}")
        }
        Ok(running) => {
            running.kill();
            panic!("the launch on a taken port {port} succeeded");
        }
    }
}

#[test]
fn launch_on_a_port_held_by_a_listener_reports_addr_in_use() {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|error| panic!("bind: {error}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|error| panic!("local_addr: {error}"))
        .port();
    expect_addr_in_use(port);
}

#[test]
fn launch_on_a_port_held_by_another_redis_reports_addr_in_use() {
    // The other server answers PING on the port; the identity check must not mistake it
    // for ours.
    let other = RedisServer::start();
    expect_addr_in_use(other.port());
    let other = RedisServer::builder()
        .config("requirepass", "other-secret")
        .start();
    expect_addr_in_use(other.port());
}

#[test]
#[should_panic(expected = "managed by RedisServer")]
fn managed_directives_are_rejected() {
    let _ = RedisServer::builder().config("port", "1234");
}

/// Runs `redis-cli` over TLS against `port`, trusting `ca`, and returns its stdout and stderr.
fn redis_cli_tls(server: &RedisServer, host: &str, ca: &std::path::Path) -> (bool, String) {
    let cli = super::binary::redis_cli_binary(&server.spec.binary)
        .unwrap_or_else(|message| panic!("{message}"));
    let port = server.tls_port().expect("a TLS port");
    let output = std::process::Command::new(&cli)
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-h", host, "-p", &port.to_string(), "PING"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("could not run {}: {error}", cli.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && text.contains("PONG"), text)
}

#[test]
fn a_tls_server_answers_over_tls_with_its_ca_and_keeps_its_port_across_restarts() {
    let server = RedisServer::builder().tls(true).start();
    let tls_port = server.tls_port().expect("a TLS port");
    assert_ne!(tls_port, server.port());
    assert_eq!(server.tls_url(), format!("rediss://127.0.0.1:{tls_port}/"));
    assert!(
        server
            .tls_ca_pem()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(
        fs::read_to_string(server.tls_ca_path()).expect("the CA file"),
        server.tls_ca_pem()
    );
    assert!(server.tls_ca_path().starts_with(server.dir()));

    for host in ["127.0.0.1", "localhost"] {
        let (ok, output) = redis_cli_tls(&server, host, server.tls_ca_path());
        assert!(ok, "TLS PING to {host} failed: {output}");
    }

    server.restart();
    assert_eq!(server.tls_port(), Some(tls_port));
    let (ok, output) = redis_cli_tls(&server, "127.0.0.1", server.tls_ca_path());
    assert!(ok, "TLS PING after restart failed: {output}");
}

#[test]
fn a_tls_server_is_refused_by_a_client_trusting_another_ca() {
    let server = RedisServer::builder().tls(true).start();
    let other = super::TestCa::new();
    let path = server.dir().join("other-ca.crt");
    fs::write(&path, other.cert_pem()).expect("write the other CA");
    let (ok, output) = redis_cli_tls(&server, "127.0.0.1", &path);
    assert!(!ok, "a client trusting another CA got PONG: {output}");
}

#[test]
fn tls_names_limit_the_server_certificate() {
    let server = RedisServer::builder().tls_names(["localhost"]).start();
    let (ok, output) = redis_cli_tls(&server, "localhost", server.tls_ca_path());
    assert!(ok, "TLS PING to localhost failed: {output}");
    let cert = fs::read_to_string(server.dir().join("server.crt")).expect("the certificate");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
}

#[test]
#[should_panic(expected = "was started without TLS")]
fn tls_accessors_of_a_plain_server_panic_clearly() {
    let server = RedisServer::start();
    assert_eq!(server.tls_port(), None);
    let _ = server.tls_url();
}

#[test]
#[should_panic(expected = "managed by RedisServer")]
fn the_tls_port_is_managed() {
    let _ = RedisServer::builder().config("tls-port", "1234");
}

#[test]
fn debug_output_leaves_out_private_keys() {
    let ca = super::TestCa::new();
    let issued = ca.issue(&["localhost"]);
    assert!(issued.key_pem.contains("PRIVATE KEY"));
    let shown = format!("{ca:?} {issued:?}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    assert!(!shown.contains(&issued.key_pem), "{shown}");
}

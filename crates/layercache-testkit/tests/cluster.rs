//! Integration tests for `layercache_testkit::server::RedisCluster` with replicas: roles, slot
//! owners, a crashed primary's failover, a restarted node rejoining as a replica, and a planned
//! failover back. Real `redis-server` and `redis-cli`; synchronisation by polling, never sleeping.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use layercache_testkit::server::{NodeRole, RedisCluster, RedisServer};

const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one command on a fresh connection and answers the reply's first line, with a bulk
/// string's body appended after a newline.
fn call(node: &RedisServer, args: &[&str]) -> io::Result<String> {
    let stream = TcpStream::connect_timeout(&node.addr(), TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(stream);
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    reader.get_mut().write_all(request.as_bytes())?;
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    match line
        .strip_prefix('$')
        .and_then(|len| len.parse::<usize>().ok())
    {
        Some(len) => {
            let mut body = vec![0; len + 2];
            reader.read_exact(&mut body)?;
            body.truncate(len);
            Ok(format!("{line}\n{}", String::from_utf8_lossy(&body)))
        }
        None => Ok(line),
    }
}

#[test]
fn a_replicated_cluster_fails_over_and_takes_its_old_primary_back() {
    let cluster = RedisCluster::replicated();
    assert_eq!(cluster.nodes().len(), 6);
    assert_eq!(cluster.replicas_per_primary(), 1);
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    for &primary in &primaries {
        let replicas = cluster.replicas_of(primary);
        assert_eq!(replicas.len(), 1, "primary {primary}: {replicas:?}");
        let info = call(cluster.node(replicas[0]), &["INFO", "replication"]).unwrap();
        assert!(info.contains("master_link_status:up"), "{info}");
    }

    // A key written on its primary and acknowledged by the replica survives the crash.
    let owner = cluster.primary_of_key("survivor");
    assert!(primaries.contains(&owner));
    let node = cluster.node(owner);
    assert_eq!(call(node, &["SET", "survivor", "v1"]).unwrap(), "+OK");
    cluster.wait_replicated(owner);
    let replica = cluster.replicas_of(owner)[0];

    let failover = cluster.crash_primary(owner);
    println!(
        "crash_primary: the replica took over in {:?}",
        failover.took
    );
    assert_eq!(failover.old_primary, owner);
    assert_eq!(failover.new_primary, replica);
    assert!(!cluster.node(owner).is_running());
    assert_eq!(cluster.role(replica), Some(NodeRole::Primary));
    assert_eq!(cluster.primary_of_key("survivor"), replica);
    assert_eq!(
        call(cluster.node(replica), &["GET", "survivor"]).unwrap(),
        "$2\nv1"
    );
    assert_eq!(cluster.primaries().len(), 3);

    // The crashed node comes back as the new primary's replica and syncs.
    cluster.node(owner).restart();
    cluster.wait_healthy();
    assert_eq!(
        cluster.role(owner),
        Some(NodeRole::Replica {
            primary_port: cluster.node(replica).port()
        })
    );

    // A planned failover hands the slots back, with nothing lost.
    let back = cluster.fail_over_to(owner);
    assert_eq!((back.old_primary, back.new_primary), (replica, owner));
    assert_eq!(cluster.primary_of_key("survivor"), owner);
    assert_eq!(call(node, &["GET", "survivor"]).unwrap(), "$2\nv1");
    assert_eq!(
        cluster.role(replica),
        Some(NodeRole::Replica {
            primary_port: node.port()
        })
    );
}

#[test]
fn crashing_a_primary_without_replicas_is_refused() {
    let cluster = RedisCluster::start();
    let primary = cluster.primaries()[0];
    let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cluster.crash_primary(primary);
    }));
    assert!(refused.is_err());
    assert!(
        cluster.node(primary).is_running(),
        "nothing was killed: no replica could take over"
    );
}

//! Free loopback ports, each handed out at most once per process.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::sync::Mutex;

use super::lock;

/// The port of a system Redis that may run on the machine; never handed out.
pub(crate) const DEFAULT_REDIS_PORT: u16 = 6379;

/// Ports handed out by this process; never handed out twice.
static RESERVED_PORTS: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Picks a port that is free on 127.0.0.1 (and on ::1 when `ipv6`) right now and has not been
/// handed out by this process before.
///
/// Another process may still take it before `redis-server` binds it; starts detect that and
/// retry with a new port.
pub(crate) fn reserve_port(ipv6: bool) -> u16 {
    let mut last_error = String::from("no candidate port");
    for _ in 0..500 {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) {
            Ok(listener) => listener,
            Err(error) => {
                last_error = format!("binding 127.0.0.1:0 failed: {error}");
                continue;
            }
        };
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(error) => {
                last_error = format!("reading the bound address failed: {error}");
                continue;
            }
        };
        if port == DEFAULT_REDIS_PORT {
            continue;
        }
        if ipv6 && let Err(error) = TcpListener::bind((Ipv6Addr::LOCALHOST, port)) {
            last_error = format!("binding [::1]:{port} failed: {error}");
            continue;
        }
        drop(listener);
        if lock(&RESERVED_PORTS).insert(port) {
            return port;
        }
    }
    panic!("could not find a free loopback port for redis-server: {last_error}");
}

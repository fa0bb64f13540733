//! The start-up permission check: which features the Redis user may run.
//!
//! A restricted user (a managed Redis's `~app1:*` with `-@dangerous`, say) learns at the first
//! request of a feature what it lacks, as a failure in the middle of traffic. The check instead
//! runs one harmless probe per command a feature needs, on keys (and a channel) under the
//! backend's key prefix, and names the first command refused. Redis checks a command's
//! permissions before running it, so each probe is either refused or does nothing lasting (the
//! probe keys are removed at the end). `docs/redis-permissions.md` lists the same commands.

use std::fmt;

use layercache_core::{Codec, Error, ErrorKind, Result};

use crate::RedisBackend;
use crate::connection::{Idempotent, Request};

/// A feature whose Redis commands [`RedisBackend::check_permissions`] probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisFeature {
    /// Reads, writes, deletes, conditional stores and tombstones (`GET`, `MGET`, `SET`, `UNLINK`,
    /// `EVAL`, `PING`): the two-tier cache's L2.
    Cache,
    /// Namespace clears (`SCAN`, `UNLINK`).
    Clear,
    /// The tag index (`SADD`, `PEXPIRE`, `SSCAN`).
    Tags,
    /// The distributed lock (`SET NX`, `EVALSHA`, `SCRIPT LOAD`).
    Lock,
    /// The durable write-behind journal (a stream and its consumer group).
    WriteBehind,
    /// The pub/sub invalidation backplane (`PUBLISH`; `SUBSCRIBE` is in the same category).
    PubSub,
    /// Client tracking (`CLIENT TRACKING`; the transport also sends `HELLO 3` and
    /// `CLIENT SETNAME`).
    Tracking,
}

impl RedisFeature {
    /// Every feature, in the order the check probes them.
    pub const ALL: [RedisFeature; 7] = [
        RedisFeature::Cache,
        RedisFeature::Clear,
        RedisFeature::Tags,
        RedisFeature::Lock,
        RedisFeature::WriteBehind,
        RedisFeature::PubSub,
        RedisFeature::Tracking,
    ];

    /// The feature's name, as in messages and `docs/redis-permissions.md`.
    pub fn as_str(self) -> &'static str {
        match self {
            RedisFeature::Cache => "cache",
            RedisFeature::Clear => "namespace clear",
            RedisFeature::Tags => "tags",
            RedisFeature::Lock => "distributed lock",
            RedisFeature::WriteBehind => "durable write-behind",
            RedisFeature::PubSub => "pub/sub invalidation",
            RedisFeature::Tracking => "client tracking",
        }
    }
}

impl fmt::Display for RedisFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the server refused: the source of the `Permission` error of
/// [`RedisBackend::check_permissions`], reachable with
/// [`Error::source_as`](layercache_core::Error::source_as).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermissionDenied {
    /// The feature that needs the command.
    pub feature: RedisFeature,
    /// The command refused, as Redis names it (`EVAL`, `CLIENT TRACKING`).
    pub command: &'static str,
    /// The server's answer.
    pub reply: String,
}

impl fmt::Display for PermissionDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs `{}`, which the redis user may not run ({})",
            self.feature, self.command, self.reply
        )
    }
}

impl std::error::Error for PermissionDenied {}

/// One probe: the command's name and the command itself.
type Probe = (&'static str, redis::Cmd);

fn cmd(name: &str) -> redis::Cmd {
    redis::cmd(name)
}

/// The probes of `feature`, on `key` (a string key), `set` (a set key), `stream` (a stream key)
/// and `channel`.
fn probes(feature: RedisFeature, key: &str, set: &str, stream: &str, channel: &str) -> Vec<Probe> {
    let mut probes: Vec<Probe> = Vec::new();
    let mut add = |name: &'static str, build: &dyn Fn(&mut redis::Cmd)| {
        let mut command = cmd(name.split(' ').next().unwrap_or(name));
        build(&mut command);
        probes.push((name, command));
    };
    match feature {
        RedisFeature::Cache => {
            add("PING", &|_| {});
            add("GET", &|c| {
                c.arg(key);
            });
            add("MGET", &|c| {
                c.arg(key);
            });
            add("SET", &|c| {
                c.arg(key).arg("probe").arg("PX").arg(60_000).arg("GET");
            });
            add("EVAL", &|c| {
                c.arg("return 0").arg(1).arg(key);
            });
            add("UNLINK", &|c| {
                c.arg(key);
            });
        }
        RedisFeature::Clear => {
            add("SCAN", &|c| {
                c.arg(0).arg("MATCH").arg(key).arg("COUNT").arg(1);
            });
            add("UNLINK", &|c| {
                c.arg(key);
            });
        }
        RedisFeature::Tags => {
            add("SADD", &|c| {
                c.arg(set).arg(key);
            });
            add("PEXPIRE", &|c| {
                c.arg(set).arg(60_000).arg("GT");
            });
            add("SSCAN", &|c| {
                c.arg(set).arg(0);
            });
        }
        RedisFeature::Lock => {
            add("SET", &|c| {
                c.arg(key).arg("probe").arg("NX").arg("PX").arg(60_000);
            });
            add("SCRIPT LOAD", &|c| {
                c.arg("LOAD").arg("return 0");
            });
            add("EVALSHA", &|c| {
                // The hash of `return 0`, loaded just above.
                c.arg("06d3d9b2060dd51343d5f19f0e531f15c507e3d1")
                    .arg(1)
                    .arg(key);
            });
        }
        RedisFeature::WriteBehind => {
            add("XADD", &|c| {
                c.arg(stream).arg("*").arg("probe").arg("1");
            });
            add("XGROUP CREATE", &|c| {
                c.arg("CREATE")
                    .arg(stream)
                    .arg("probe")
                    .arg(0)
                    .arg("MKSTREAM");
            });
            add("XREADGROUP", &|c| {
                c.arg("GROUP")
                    .arg("probe")
                    .arg("probe")
                    .arg("COUNT")
                    .arg(1)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">");
            });
            add("XAUTOCLAIM", &|c| {
                c.arg(stream).arg("probe").arg("probe").arg(0).arg("0-0");
            });
            add("XACK", &|c| {
                c.arg(stream).arg("probe").arg("0-1");
            });
            add("XDEL", &|c| {
                c.arg(stream).arg("0-1");
            });
            add("XLEN", &|c| {
                c.arg(stream);
            });
            add("XRANGE", &|c| {
                c.arg(stream).arg("-").arg("+").arg("COUNT").arg(1);
            });
            add("XREVRANGE", &|c| {
                c.arg(stream).arg("+").arg("-").arg("COUNT").arg(1);
            });
        }
        RedisFeature::PubSub => {
            add("PUBLISH", &|c| {
                c.arg(channel).arg("");
            });
        }
        RedisFeature::Tracking => {
            // Our connection does not track: turning tracking off changes nothing.
            add("CLIENT TRACKING", &|c| {
                c.arg("TRACKING").arg("OFF");
            });
        }
    }
    probes
}

impl<C: Codec> RedisBackend<C> {
    /// Checks that the Redis user may run every command `features` need, on keys under the key
    /// prefix (and, for pub/sub, a channel under it): `Ok` when it may; otherwise a
    /// [`Permission`](ErrorKind::Permission) error naming the feature and the first command
    /// refused, with a [`PermissionDenied`] as its source. A server that cannot be reached is
    /// the usual `Unavailable` or `Timeout` error. Probes touch only keys of their own, removed
    /// at the end. [`RedisBackendBuilder::check_permissions`](crate::RedisBackendBuilder::check_permissions)
    /// runs it at connect.
    ///
    /// ```no_run
    /// use layercache_redis::{PermissionDenied, RedisBackend, RedisFeature};
    ///
    /// # async fn demo() -> layercache_core::Result<()> {
    /// let redis = RedisBackend::builder("redis://app1:secret@127.0.0.1:6379")
    ///     .key_prefix("app1:")
    ///     .connect()
    ///     .await?;
    /// if let Err(error) = redis.check_permissions(&RedisFeature::ALL).await {
    ///     if let Some(denied) = error.source_as::<PermissionDenied>() {
    ///         eprintln!("{} cannot work: redis refuses {}", denied.feature, denied.command);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn check_permissions(&self, features: &[RedisFeature]) -> Result<()> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let base = self
            .keys
            .join(&format!("layercache:probe:{}:{nanos}", std::process::id()));
        let (key, set, stream) = (
            base.clone(),
            format!("{base}:set"),
            format!("{base}:stream"),
        );
        // A cluster routes a probe by its key: keep the three in one slot.
        let (key, set, stream) = if self.conn.is_cluster() {
            (
                format!("{{{key}}}"),
                format!("{{{key}}}:set"),
                format!("{{{key}}}:stream"),
            )
        } else {
            (key, set, stream)
        };
        let channel = self.keys.join("layercache:probe");
        let mut outcome = Ok(());
        'features: for &feature in features {
            for (name, probe) in probes(feature, &key, &set, &stream, &channel) {
                match self
                    .conn
                    .query::<redis::Value>(Request::Cmd(&probe), Idempotent::No)
                    .await
                {
                    Err(error) if error.kind() == ErrorKind::Permission => {
                        let denied = PermissionDenied {
                            feature,
                            command: name,
                            reply: error
                                .source_as::<redis::RedisError>()
                                .map_or_else(|| error.to_string(), ToString::to_string),
                        };
                        outcome = Err(Error::permission(denied.to_string()).with_source(denied));
                        break 'features;
                    }
                    // Refused for another reason (a wrong type, no such group): permitted.
                    Err(error)
                        if error.kind() == ErrorKind::Unavailable && !error.is_temporary() => {}
                    Err(error) => {
                        outcome = Err(error.context(format!("checking {feature}")));
                        break 'features;
                    }
                    Ok(_) => {}
                }
            }
        }
        for probe_key in [&key, &set, &stream] {
            let mut one = redis::cmd("UNLINK");
            one.arg(probe_key);
            // Best effort, one key per command (no cross-slot): a user without UNLINK has been
            // told so above, and the probe keys expire or are a few bytes.
            let _ = self
                .conn
                .query::<redis::Value>(Request::Cmd(&one), Idempotent::Yes)
                .await;
        }
        outcome
    }
}

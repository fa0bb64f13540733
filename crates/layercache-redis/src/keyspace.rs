//! Where everything the library writes lives in Redis: under one key prefix (ADR 0013).
//!
//! A managed Redis often gives a service a user restricted to its own prefix (`~app1:*`). With
//! [`RedisBackendBuilder::key_prefix`](crate::RedisBackendBuilder::key_prefix) set, every key the
//! library touches — entries, tombstones, the tag index, locks, the permission probe — is the
//! prefix followed by what it would otherwise be. The prefix is written into the command buffer
//! beside the key, so it costs no allocation per command.

use std::io::Write as _;
use std::sync::Arc;

use redis::{RedisWrite, ToRedisArgs};

/// The key prefix of one backend (empty: none).
#[derive(Clone, Debug, Default)]
pub(crate) struct Keyspace {
    prefix: Arc<str>,
}

impl Keyspace {
    pub(crate) fn new(prefix: impl Into<Arc<str>>) -> Self {
        Keyspace {
            prefix: prefix.into(),
        }
    }

    /// The prefix in front of every key.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of `key`: the prefix, then `key`.
    pub(crate) fn key<'a>(&'a self, key: &'a str) -> RedisKey<'a> {
        RedisKey {
            prefix: &self.prefix,
            key,
        }
    }

    /// The prefix followed by `rest`, as an owned string (for keys made once, like a tag's set).
    pub(crate) fn join(&self, rest: &str) -> String {
        let mut joined = String::with_capacity(self.prefix.len() + rest.len());
        joined.push_str(&self.prefix);
        joined.push_str(rest);
        joined
    }

    /// The cache's key of a Redis key: the part after the prefix, or `None` for a key outside it.
    pub(crate) fn strip<'a>(&self, redis_key: &'a str) -> Option<&'a str> {
        redis_key.strip_prefix(&*self.prefix)
    }
}

/// A Redis key written as two parts, the prefix and the key, into one command argument.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RedisKey<'a> {
    prefix: &'a str,
    key: &'a str,
}

impl<'a> RedisKey<'a> {
    /// A key already in Redis's terms (a tag index's member, say): no prefix added.
    pub(crate) fn raw(key: &'a str) -> Self {
        RedisKey { prefix: "", key }
    }
}

impl ToRedisArgs for RedisKey<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        if self.prefix.is_empty() {
            out.write_arg(self.key.as_bytes());
            return;
        }
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = arg.write_all(self.prefix.as_bytes());
        let _ = arg.write_all(self.key.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(key: RedisKey<'_>) -> Vec<Vec<u8>> {
        key.to_redis_args()
    }

    #[test]
    fn a_key_is_one_argument_with_its_prefix() {
        let space = Keyspace::new("app1:");
        assert_eq!(args(space.key("user:1")), vec![b"app1:user:1".to_vec()]);
        assert_eq!(
            args(Keyspace::default().key("user:1")),
            vec![b"user:1".to_vec()]
        );
        assert_eq!(args(RedisKey::raw("app1:x")), vec![b"app1:x".to_vec()]);
        assert_eq!(space.join("layercache:tag:t"), "app1:layercache:tag:t");
        assert_eq!(space.strip("app1:user:1"), Some("user:1"));
        assert_eq!(space.strip("other:user:1"), None);
    }
}

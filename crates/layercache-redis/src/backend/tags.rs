//! The tag index: a set of keys per tag, filled beside every tagged store and expiring with its
//! longest entry, so `invalidate_tag` can remove the tag's keys at once.

use layercache_core::{Codec, Entry, Error, Key, Result, Timestamp};

use super::{DEFAULT_TAG_PREFIX, RedisBackend};
use crate::connection::{Idempotent, Request};
use crate::keyspace::RedisKey;

/// Tags to the (Redis) keys stored with them and the longest TTL among those (ms).
pub(super) type TagGroups<'a> = std::collections::BTreeMap<&'a str, (Vec<RedisKey<'a>>, u64)>;

impl<C: Codec> RedisBackend<C> {
    /// The tag index's work for stored `items`: each tag with the keys stored with it and the
    /// longest of their TTLs (ms). Empty without a tag index.
    pub(super) fn tag_groups<'a, V>(
        &'a self,
        items: impl IntoIterator<Item = (&'a Key, &'a Entry<V>)>,
        now: Timestamp,
    ) -> TagGroups<'a>
    where
        V: 'a,
    {
        let mut groups = TagGroups::new();
        if self.tag_prefix.is_none() {
            return groups;
        }
        for (key, entry) in items {
            let px = u64::try_from(entry.meta.time_to_live(now).as_millis()).unwrap_or(u64::MAX);
            if px == 0 {
                continue;
            }
            for tag in entry.meta.tags.as_slice() {
                let group = groups.entry(tag.as_str()).or_insert((Vec::new(), 0));
                group.0.push(self.keys.key(key.as_str()));
                group.1 = group.1.max(px);
            }
        }
        groups
    }

    /// The set of tag `tag`'s keys: `<key prefix><tag prefix><tag>`.
    pub(super) fn tag_key(&self, tag: &str) -> String {
        let tag_prefix = self.tag_prefix.as_deref().unwrap_or(DEFAULT_TAG_PREFIX);
        self.keys.join(&format!("{tag_prefix}{tag}"))
    }

    /// Adds the commands of one tag's group: SADD of its keys, then the set's expiry raised to
    /// the longest TTL (PEXPIRE NX sets it on a new set, GT only raises it). Answers ignored.
    fn push_tag_group(
        &self,
        pipe: &mut redis::Pipeline,
        tag: &str,
        keys: &[RedisKey<'_>],
        px: u64,
    ) {
        let tag_key = self.tag_key(tag);
        pipe.cmd("SADD").arg(&tag_key).arg(keys).ignore();
        pipe.cmd("PEXPIRE").arg(&tag_key).arg(px).arg("NX").ignore();
        pipe.cmd("PEXPIRE").arg(&tag_key).arg(px).arg("GT").ignore();
    }

    /// Sends the tag index's work: into `pipe` on one server, one pipeline per tag (one slot
    /// each) on a cluster.
    pub(super) async fn index_tags(
        &self,
        pipe: &mut redis::Pipeline,
        groups: TagGroups<'_>,
    ) -> Result<()> {
        if !self.conn.is_cluster() {
            for (tag, (keys, px)) in &groups {
                self.push_tag_group(pipe, tag, keys, *px);
            }
            return Ok(());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (tag, (keys, px)) in &groups {
            let mut tag_pipe = redis::pipe();
            self.push_tag_group(&mut tag_pipe, tag, keys, *px);
            let conn = self.conn.clone();
            tasks.spawn(async move {
                conn.query::<()>(Request::Pipe(&tag_pipe), Idempotent::Yes)
                    .await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.map_err(|e| Error::unavailable("a redis tag index task failed").with_source(e))??;
        }
        Ok(())
    }
}

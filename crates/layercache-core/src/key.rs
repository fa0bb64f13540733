use std::cell::RefCell;
use std::cmp::Ordering;
use std::fmt::{self, Write as _};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};

use smol_str::SmolStr;

use crate::error::{Error, ErrorKind};

/// The default upper bound on a key's length in bytes (1 KiB).
///
/// Redis accepts far longer keys, but a key that long is almost always a bug (a serialized
/// object used as a key), and every byte of it is paid on every call.
pub const DEFAULT_MAX_KEY_LEN: usize = 1024;

/// The upper bound on a prefix or namespace in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;

/// Why a key or key segment was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key (or its id part) is empty.
    #[error("key is empty")]
    Empty,
    /// The key is longer than the configured limit.
    #[error("key is {len} bytes long, over the limit of {max} bytes")]
    TooLong {
        /// The key's length in bytes.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A prefix or namespace is empty, too long, or holds a character that would make scoping
    /// ambiguous (`:`), or that Redis treats as a pattern (`*?[]\`), or whitespace or a control character.
    #[error("invalid {segment} {value:?}: {reason}")]
    InvalidSegment {
        /// Which segment: `prefix` or `namespace`.
        segment: &'static str,
        /// The refused value.
        value: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl From<KeyError> for Error {
    fn from(e: KeyError) -> Self {
        Error::new(ErrorKind::InvalidKey, e.to_string()).with_source(e)
    }
}

/// The hasher of every key of the process: foldhash, seeded once per process.
static KEY_HASHER: LazyLock<foldhash::fast::RandomState> = LazyLock::new(Default::default);

thread_local! {
    /// Where [`Namespace::key`] writes a key before it becomes one (inline, or one allocation past
    /// 23 bytes).
    static KEY_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// A validated cache key: not empty and no longer than its limit.
///
/// A key's text up to 23 bytes is held inline: making one allocates nothing beyond what builds
/// its text, and cloning it copies 32 bytes without touching memory another clone shares (a
/// longer key's text is shared behind a reference count;
/// [ADR 0016](https://github.com/layercache/layercache/blob/main/docs/adr/0016-inline-keys.md)).
/// A key is hashed once, when it is made: hashing it again (moka,
/// the version table, single-flight) writes that one `u64`, and comparing two keys compares the
/// hashes (and the text only when they match), so a key made once and reused costs nothing per
/// request ([ADR 0011](https://github.com/layercache/layercache/blob/main/docs/adr/0011-lean-request-path.md)).
/// The hash is seeded per process: it is not stable across processes and never leaves one.
///
/// Keys built by a [`Namespace`] have the form `prefix:vN:namespace:id`; [`Key::new`] accepts any
/// non-empty string within the limit.
///
/// ```
/// use layercache_core::{Key, KeyError};
/// assert_eq!(Key::new("user:42").unwrap().as_str(), "user:42");
/// assert_eq!(Key::new(""), Err(KeyError::Empty));
/// assert!(matches!(Key::new("x".repeat(2000)), Err(KeyError::TooLong { len: 2000, max: 1024 })));
/// ```
#[derive(Clone)]
pub struct Key {
    hash: u64,
    text: SmolStr,
}

impl Key {
    /// A key with the [default length limit](DEFAULT_MAX_KEY_LEN).
    pub fn new(key: impl AsRef<str>) -> Result<Self, KeyError> {
        Self::with_max_len(key, DEFAULT_MAX_KEY_LEN)
    }

    /// A key no longer than `max_len` bytes.
    pub fn with_max_len(key: impl AsRef<str>, max_len: usize) -> Result<Self, KeyError> {
        let key = key.as_ref();
        if key.is_empty() {
            return Err(KeyError::Empty);
        }
        if key.len() > max_len {
            return Err(KeyError::TooLong {
                len: key.len(),
                max: max_len,
            });
        }
        Ok(Key::checked(key))
    }

    /// A key of `text`, already validated: one hash, and an allocation only past 23 bytes.
    fn checked(text: &str) -> Self {
        Key {
            hash: KEY_HASHER.hash_one(text),
            text: SmolStr::new(text),
        }
    }

    /// The key as a string.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key's 64-bit hash, computed once when it was made (seeded per process).
    pub fn hash_value(&self) -> u64 {
        self.hash
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.text == other.text
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    /// By the key's text.
    fn cmp(&self, other: &Self) -> Ordering {
        self.text.cmp(&other.text)
    }
}

impl AsRef<str> for Key {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.text.as_bytes()
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.text.as_str(), f)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TryFrom<&str> for Key {
    type Error = KeyError;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Key::new(value)
    }
}

impl TryFrom<String> for Key {
    type Error = KeyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Key::new(value)
    }
}

fn check_segment(segment: &'static str, value: &str) -> Result<(), KeyError> {
    let invalid = |reason| KeyError::InvalidSegment {
        segment,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("it is empty"));
    }
    if value.len() > MAX_SEGMENT_LEN {
        return Err(invalid("it is longer than 128 bytes"));
    }
    if value.contains(':') {
        return Err(invalid("it contains ':', the separator"));
    }
    if value
        .chars()
        .any(|c| matches!(c, '*' | '?' | '[' | ']' | '\\'))
    {
        return Err(invalid("it contains a pattern character (*?[]\\)"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it contains whitespace or a control character"));
    }
    Ok(())
}

/// Where an application's keys live: a prefix, a version and a key length limit.
///
/// Bumping the version moves every key to a fresh space, which is how a change of value schema
/// is rolled out without reading old values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    prefix: Arc<str>,
    version: u32,
    max_key_len: usize,
}

impl KeySpace {
    /// A key space with version 1 and the [default key length limit](DEFAULT_MAX_KEY_LEN).
    pub fn new(prefix: &str) -> Result<Self, KeyError> {
        check_segment("prefix", prefix)?;
        Ok(KeySpace {
            prefix: prefix.into(),
            version: 1,
            max_key_len: DEFAULT_MAX_KEY_LEN,
        })
    }

    /// Sets the version (default 1).
    #[must_use]
    pub fn with_version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Sets the limit on a whole key's length in bytes (default [`DEFAULT_MAX_KEY_LEN`]).
    #[must_use]
    pub fn with_max_key_len(mut self, max_key_len: usize) -> Self {
        self.max_key_len = max_key_len;
        self
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// A namespace in this key space: the unit that [`Backend::clear`](crate::Backend::clear) scopes.
    pub fn namespace(&self, namespace: &str) -> Result<Namespace, KeyError> {
        check_segment("namespace", namespace)?;
        let scope = format!("{}:v{}:{}:", self.prefix, self.version, namespace);
        if scope.len() >= self.max_key_len {
            return Err(KeyError::TooLong {
                len: scope.len() + 1,
                max: self.max_key_len,
            });
        }
        Ok(Namespace {
            scope: scope.into(),
            max_key_len: self.max_key_len,
        })
    }
}

/// A namespace of a [`KeySpace`]: builds keys `prefix:vN:namespace:id` and scopes `clear`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace {
    scope: Arc<str>,
    max_key_len: usize,
}

impl Namespace {
    /// The namespace whose [`scope`](Self::scope) is `scope` (an invalidation message carries
    /// only that).
    pub(crate) fn from_scope(scope: &str) -> Namespace {
        Namespace {
            scope: scope.into(),
            max_key_len: DEFAULT_MAX_KEY_LEN,
        }
    }

    /// The key of `id` in this namespace: a string, a number, anything that displays. The id may
    /// hold any character (`:` and unicode too); it must not be empty, and the whole key must fit
    /// the key space's length limit. One allocation (the key's own).
    ///
    /// ```
    /// use layercache_core::KeySpace;
    /// let users = KeySpace::new("app")?.namespace("users")?;
    /// assert_eq!(users.key(42)?, users.key("42")?);
    /// assert_eq!(users.key(42)?.as_str(), "app:v1:users:42");
    /// # Ok::<(), layercache_core::KeyError>(())
    /// ```
    pub fn key(&self, id: impl fmt::Display) -> Result<Key, KeyError> {
        let build = |buffer: &mut String| {
            buffer.clear();
            buffer.push_str(&self.scope);
            // Writing into a String cannot fail.
            let _ = write!(buffer, "{id}");
            if buffer.len() == self.scope.len() {
                return Err(KeyError::Empty);
            }
            if buffer.len() > self.max_key_len {
                return Err(KeyError::TooLong {
                    len: buffer.len(),
                    max: self.max_key_len,
                });
            }
            Ok(Key::checked(buffer))
        };
        KEY_BUFFER
            .try_with(|buffer| match buffer.try_borrow_mut() {
                Ok(mut buffer) => {
                    let key = build(&mut buffer);
                    if buffer.capacity() > 4 * DEFAULT_MAX_KEY_LEN {
                        // An id far over the limit: do not keep its buffer.
                        *buffer = String::new();
                    }
                    key
                }
                // Only if `id`'s `Display` builds a key itself.
                Err(_) => build(&mut String::new()),
            })
            .unwrap_or_else(|_| build(&mut String::new()))
    }

    /// The string every key of this namespace starts with (`prefix:vN:namespace:`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Whether `key` belongs to this namespace.
    pub fn contains(&self, key: &Key) -> bool {
        key.as_str().starts_with(&*self.scope)
    }

    /// The id part of `key`, when it belongs to this namespace.
    pub fn id_of<'k>(&self, key: &'k Key) -> Option<&'k str> {
        key.as_str().strip_prefix(&*self.scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_scoped_keys() {
        let ns = KeySpace::new("app")
            .unwrap()
            .with_version(3)
            .namespace("users")
            .unwrap();
        let key = ns.key("42:x").unwrap();
        assert_eq!(key.as_str(), "app:v3:users:42:x");
        assert!(ns.contains(&key));
        assert_eq!(ns.id_of(&key), Some("42:x"));
        let other = KeySpace::new("app").unwrap().namespace("users2").unwrap();
        assert!(!other.contains(&key));
        assert!(!ns.contains(&other.key("1").unwrap()));
    }

    #[test]
    fn refuses_bad_input_with_typed_errors() {
        assert_eq!(Key::new(""), Err(KeyError::Empty));
        let ns = KeySpace::new("app")
            .unwrap()
            .with_max_key_len(20)
            .namespace("n")
            .unwrap();
        assert_eq!(ns.key(""), Err(KeyError::Empty));
        assert_eq!(
            ns.key("x".repeat(20).as_str()),
            Err(KeyError::TooLong { len: 29, max: 20 })
        );
        assert!(ns.key("y".repeat(11).as_str()).is_ok());
        for bad in ["", "a:b", "a*", "a b", "a\n", "[x]"] {
            assert!(
                matches!(
                    KeySpace::new(bad),
                    Err(KeyError::InvalidSegment {
                        segment: "prefix",
                        ..
                    })
                ),
                "{bad:?}"
            );
        }
        assert!(KeySpace::new(&"p".repeat(129)).is_err());
        let err: Error = KeyError::Empty.into();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
    }

    #[test]
    fn unicode_ids_are_counted_in_bytes() {
        let ns = KeySpace::new("app").unwrap().namespace("städte").unwrap();
        let key = ns.key("Zürich·東京").unwrap();
        assert_eq!(key.as_str(), "app:v1:städte:Zürich·東京");
    }
}

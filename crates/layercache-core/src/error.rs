use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// The result type of layercache operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, in the few categories a caller can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A tier (Redis) could not be reached or refused the command. Usually temporary.
    Unavailable,
    /// An operation did not finish within its configured timeout. Temporary.
    Timeout,
    /// A value could not be encoded or decoded.
    Codec,
    /// The source of truth (a [`Loader`](crate::Loader) or [`Writer`](crate::Writer)) failed.
    Loader,
    /// Invalid configuration or options, reported at the call that received them.
    Config,
    /// A key was empty, too long or otherwise invalid.
    InvalidKey,
    /// A lock could not be acquired or was lost.
    Lock,
    /// The server refused the command for lack of permission (a Redis ACL's `NOPERM`, a wrong
    /// password). Permanent: the user's rights must change, retrying will not help.
    Permission,
    /// A value is larger than the configured maximum value size; nothing was written.
    TooLarge,
}

impl ErrorKind {
    /// The kind's name, as used in messages and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Codec => "codec",
            ErrorKind::Loader => "loader",
            ErrorKind::Config => "config",
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::Lock => "lock",
            ErrorKind::Permission => "permission",
            ErrorKind::TooLarge => "too large",
        }
    }

    /// Whether errors of this kind are temporary unless said otherwise.
    fn temporary_by_default(self) -> bool {
        matches!(
            self,
            ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Lock
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every layercache operation.
///
/// It is cheap to clone (one reference count), because single-flight hands one error to many
/// waiting callers. It carries a [`kind`](Error::kind), a message, an optional source and whether
/// the failure is [temporary](Error::is_temporary) (worth retrying) or permanent.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    temporary: bool,
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl Error {
    /// A new error of `kind`; temporary for `Unavailable`, `Timeout` and `Lock`, permanent otherwise.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                temporary: kind.temporary_by_default(),
                source: None,
            }),
        }
    }

    /// A tier could not be reached.
    pub fn unavailable(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// An operation timed out.
    pub fn timeout(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Timeout, message)
    }

    /// Encoding or decoding failed.
    pub fn codec(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Codec, message)
    }

    /// The source of truth failed.
    pub fn loader(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Loader, message)
    }

    /// Invalid configuration or options.
    pub fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    /// A lock could not be acquired or was lost.
    pub fn lock(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Lock, message)
    }

    /// The server refused the command for lack of permission.
    pub fn permission(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Permission, message)
    }

    /// A value over the maximum value size.
    pub fn too_large(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::TooLarge, message)
    }

    /// Attaches the underlying cause.
    #[must_use]
    pub fn with_source(self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.map_inner(|inner| inner.source = Some(Arc::new(source)))
    }

    /// A loader error from the caller's own error type: kind `Loader` (permanent), the caller's
    /// error kept as the source so [`source_as`](Self::source_as) hands it back. A layercache
    /// [`Error`] passes through unchanged.
    pub fn from_loader(error: impl Into<Box<dyn StdError + Send + Sync + 'static>>) -> Self {
        let boxed = error.into();
        match boxed.downcast::<Error>() {
            Ok(ours) => *ours,
            Err(theirs) => Error {
                inner: Arc::new(Inner {
                    kind: ErrorKind::Loader,
                    message: Cow::Borrowed("the loader failed"),
                    temporary: false,
                    source: Some(Arc::from(theirs)),
                }),
            },
        }
    }

    /// The underlying cause as the caller's own error type, if it is one: the loader's error of
    /// a failed `get_or_load`, for instance.
    ///
    /// ```
    /// use layercache_core::{Error, ErrorKind};
    ///
    /// let err = Error::from_loader(std::io::Error::other("db down"));
    /// assert_eq!(err.kind(), ErrorKind::Loader);
    /// assert_eq!(err.source_as::<std::io::Error>().map(|e| e.to_string()).as_deref(), Some("db down"));
    /// ```
    pub fn source_as<E: StdError + 'static>(&self) -> Option<&E> {
        self.inner.source.as_deref()?.downcast_ref::<E>()
    }

    /// Marks the error temporary (worth retrying) or permanent.
    #[must_use]
    pub fn set_temporary(self, temporary: bool) -> Self {
        self.map_inner(|inner| inner.temporary = temporary)
    }

    /// Prefixes the message with what was being done, as the error travels up.
    #[must_use]
    pub fn context(self, context: impl fmt::Display) -> Self {
        self.map_inner(|inner| inner.message = format!("{context}: {}", inner.message).into())
    }

    fn map_inner(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                kind: shared.kind,
                message: shared.message.clone(),
                temporary: shared.temporary,
                source: shared.source.clone(),
            },
        };
        f(&mut inner);
        Error {
            inner: Arc::new(inner),
        }
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The message, without the kind or the source.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// Whether retrying the same call later may succeed.
    pub fn is_temporary(&self) -> bool {
        self.inner.temporary
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("temporary", &self.inner.temporary);
        if let Some(source) = &self.inner.source {
            d.field("source", &format_args!("{source}"));
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} error: {}", self.inner.kind, self.inner.message)?;
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_default_temporariness() {
        assert!(Error::timeout("t").is_temporary());
        assert!(Error::unavailable("u").is_temporary());
        assert!(!Error::codec("c").is_temporary());
        assert!(!Error::config("c").is_temporary());
        assert!(!Error::permission("p").is_temporary());
        assert!(!Error::too_large("b").is_temporary());
        assert!(Error::loader("l").set_temporary(true).is_temporary());
    }

    #[test]
    fn display_carries_kind_context_and_source() {
        let io = std::io::Error::other("connection reset");
        let e = Error::unavailable("GET failed")
            .with_source(io)
            .context("redis");
        assert_eq!(
            e.to_string(),
            "unavailable error: redis: GET failed: connection reset"
        );
        assert!(StdError::source(&e).is_some());
        let clone = e.clone();
        assert_eq!(clone.kind(), ErrorKind::Unavailable);
    }
}

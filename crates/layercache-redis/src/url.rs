/// `url` with the password (if any) replaced by `***`, for `Debug` output and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        None if userinfo.is_empty() => String::new(),
        None => "***".to_owned(),
    };
    format!("{}{}@{}", &url[..scheme_end + 3], user, &rest[at + 1..])
}

/// The URLs a transport connects to: the cluster's nodes when it was given some, else `url`. A
/// cluster without nodes is a `Config` error.
pub(crate) fn node_urls(
    cluster: Option<&[String]>,
    url: &str,
) -> layercache_core::Result<Vec<String>> {
    match cluster {
        Some([]) => Err(layercache_core::Error::config(
            "a Redis Cluster needs at least one node URL",
        )),
        Some(nodes) => Ok(nodes.to_vec()),
        None => Ok(vec![url.to_owned()]),
    }
}

/// Whether `url` asks for TLS (`rediss://`).
#[cfg(feature = "tls")]
pub(crate) fn is_tls(url: &str) -> bool {
    url.get(..9)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("rediss://"))
}

/// Makes sure rustls has a process-wide crypto provider before redis-rs builds a TLS config
/// (it asks rustls for the process default, and panics without one). Installs `ring`, the
/// provider the `tls` feature enables, unless the application installed one of its own; that is
/// what rustls does by itself when `ring` is the only provider compiled in, and this keeps it so
/// when another crate compiles in a second one.
#[cfg(feature = "tls")]
pub(crate) fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `pattern` with Redis glob characters escaped, so SCAN MATCH takes it literally.
pub(crate) fn escape_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 4);
    for c in pattern.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(
            redact("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact("redis://:s3cret@127.0.0.1:6379"),
            "redis://:***@127.0.0.1:6379"
        );
        assert_eq!(
            redact("rediss://app:p@ss:w@host/1"),
            "rediss://app:***@host/1"
        );
        assert_eq!(redact("redis://token@host"), "redis://***@host");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_urls_are_recognised() {
        assert!(is_tls("rediss://localhost:6380"));
        assert!(is_tls("REDISS://localhost"));
        assert!(!is_tls("redis://localhost"));
        assert!(!is_tls("redis"));
    }

    #[test]
    fn escapes_glob_characters() {
        assert_eq!(escape_glob("a:v1:n*[x]?\\"), "a:v1:n\\*\\[x\\]\\?\\\\");
    }
}

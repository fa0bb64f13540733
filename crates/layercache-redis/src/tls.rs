//! How every builder makes its redis-rs client: `rediss://` with the `ring` crypto provider and,
//! with the `tls` feature, a private CA (`tls_root_ca`) checked before anything connects.

use layercache_core::{Error, Result};

use crate::url::redact;

/// A private CA (PEM) trusted instead of the default roots; always `None` without `tls`.
#[derive(Clone, Default)]
pub(crate) struct RootCa(#[cfg(feature = "tls")] pub(crate) Option<Vec<u8>>);

impl std::fmt::Debug for RootCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_set() {
            "<private CA>"
        } else {
            "default roots"
        })
    }
}

impl RootCa {
    fn is_set(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.0.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// Checks the CA against `urls` (each must be `rediss://`) and installs the crypto provider
    /// when any URL asks for TLS.
    pub(crate) fn check<'a>(&self, urls: impl Iterator<Item = &'a str> + Clone) -> Result<()> {
        #[cfg(feature = "tls")]
        {
            if urls.clone().any(crate::url::is_tls) {
                crate::url::ensure_crypto_provider();
            }
            let Some(pem) = &self.0 else { return Ok(()) };
            if let Some(plain) = urls.clone().find(|url| !crate::url::is_tls(url)) {
                return Err(Error::config(format!(
                    "tls_root_ca needs rediss:// URLs, and {} is not one",
                    redact(plain)
                )));
            }
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut certificates = 0_usize;
            for certificate in CertificateDer::pem_slice_iter(pem) {
                certificate.map_err(|e| {
                    Error::config("tls_root_ca: a PEM certificate does not parse").with_source(e)
                })?;
                certificates += 1;
            }
            if certificates == 0 {
                return Err(Error::config(
                    "tls_root_ca holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                ));
            }
        }
        #[cfg(not(feature = "tls"))]
        let _ = urls;
        Ok(())
    }

    /// The certificates redis-rs builds its TLS config from, when a CA is set.
    #[cfg(feature = "tls")]
    pub(crate) fn certificates(&self) -> Option<redis::TlsCertificates> {
        self.0.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }

    /// A client for `url` (an invalid URL is a `Config` error that shows it redacted).
    pub(crate) fn client(&self, url: &str) -> Result<redis::Client> {
        let invalid = |e: redis::RedisError| {
            Error::config(format!("invalid redis url {}", redact(url))).with_source(e)
        };
        #[cfg(feature = "tls")]
        if let Some(certificates) = self.certificates() {
            return redis::Client::build_with_tls(url, certificates).map_err(invalid);
        }
        redis::Client::open(url).map_err(invalid)
    }
}

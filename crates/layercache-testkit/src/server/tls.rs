//! TLS for test servers: a certificate authority made at test time ([`TestCa`]), the files a
//! server's `tls-*` directives point at, and the TLS side of a [`RedisServer`].

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use super::HOST;
use super::process::RedisServer;

#[cfg(doc)]
use super::RedisServerBuilder;

/// The names a server certificate is issued for unless [`RedisServerBuilder::tls_names`] says
/// otherwise: every loopback name a test may connect to.
pub(crate) const DEFAULT_TLS_NAMES: &[&str] = &["localhost", "127.0.0.1", "::1"];

/// Numbers the CAs of this process, so that each has a name of its own.
static CA_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A throwaway certificate authority, generated in memory (ECDSA P-256), that issues server
/// certificates for tests.
///
/// Every [`RedisServer`] started with [`RedisServerBuilder::tls`] has its own; make another one
/// to play a CA the client must not trust. `Debug` shows neither key.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate issued by a [`TestCa`] and its private key, both PEM. `Debug` leaves out the key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl TestCa {
    /// Generates a new CA, named `layercache testkit CA <pid>-<n>`: no two CAs share a name, so
    /// a client that trusts another one reports an unknown issuer.
    ///
    /// # Panics
    ///
    /// If key generation or signing fails (it does not with the bundled `ring` provider).
    pub fn new() -> Self {
        let mut params = CertificateParams::default();
        let name = format!(
            "layercache testkit CA {}-{}",
            std::process::id(),
            CA_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("CA key: {error}"));
        let issuer = CertifiedIssuer::self_signed(params, key)
            .unwrap_or_else(|error| panic!("self-signing the CA: {error}"));
        Self { issuer }
    }

    /// The CA's certificate (PEM): what a client trusts.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a server certificate valid for `names` (DNS names or IP addresses, as text).
    ///
    /// # Panics
    ///
    /// If a name is neither an IP address nor a valid DNS name, or signing fails.
    pub fn issue<S: AsRef<str>>(&self, names: &[S]) -> IssuedCert {
        let names: Vec<String> = names.iter().map(|name| name.as_ref().to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())
            .unwrap_or_else(|error| panic!("certificate names {names:?}: {error}"));
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.as_str());
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap_or_else(|error| panic!("server key: {error}"));
        let cert = params
            .signed_by(&key, &*self.issuer)
            .unwrap_or_else(|error| panic!("signing the certificate for {names:?}: {error}"));
        IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// A server's TLS files, written into its temporary directory when the spec is made.
#[derive(Debug)]
pub(crate) struct TlsFiles {
    pub(crate) ca_pem: String,
    pub(crate) ca_path: PathBuf,
    cert_path: PathBuf,
    key_path: PathBuf,
}

impl TlsFiles {
    /// Makes a CA and a certificate for `names`, and writes `ca.crt`, `server.crt` and
    /// `server.key` into `dir`.
    pub(crate) fn create(dir: &Path, names: &[String]) -> Self {
        let ca = TestCa::new();
        let issued = ca.issue(names);
        let files = Self {
            ca_pem: ca.cert_pem(),
            ca_path: dir.join("ca.crt"),
            cert_path: dir.join("server.crt"),
            key_path: dir.join("server.key"),
        };
        for (path, contents) in [
            (&files.ca_path, &files.ca_pem),
            (&files.cert_path, &issued.cert_pem),
            (&files.key_path, &issued.key_pem),
        ] {
            fs::write(path, contents)
                .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        }
        files
    }

    /// The `tls-*` directives for `port`. Clients need no certificate (`tls-auth-clients no`);
    /// a later `.config("tls-auth-clients", ..)` overrides it.
    pub(crate) fn args(&self, port: u16) -> Vec<OsString> {
        vec![
            "--tls-port".into(),
            port.to_string().into(),
            "--tls-cert-file".into(),
            self.cert_path.clone().into(),
            "--tls-key-file".into(),
            self.key_path.clone().into(),
            "--tls-ca-cert-file".into(),
            self.ca_path.clone().into(),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

/// Appended to a failed TLS start whose output mentions TLS: the likely cause.
pub(crate) fn no_tls_hint(output: &str) -> &'static str {
    if output.to_ascii_lowercase().contains("tls") {
        "; this redis-server may have been built without TLS support (BUILD_TLS=yes), which \
         RedisServerBuilder::tls needs (Debian's redis-server 7 has it)"
    } else {
        ""
    }
}

/// The TLS side of a server started with [`RedisServerBuilder::tls`].
impl RedisServer {
    /// The TLS port, or `None` for a server started without TLS. Stable across restarts.
    pub fn tls_port(&self) -> Option<u16> {
        self.tls_port
    }

    /// The TLS connection URL, `rediss://127.0.0.1:TLS_PORT/`. Its certificate is valid for
    /// 127.0.0.1 unless [`RedisServerBuilder::tls_names`] left it out.
    ///
    /// # Panics
    ///
    /// If the server was started without TLS.
    pub fn tls_url(&self) -> String {
        format!("rediss://{HOST}:{}/", self.require_tls_port("tls_url"))
    }

    /// The same URL with `host` in place of 127.0.0.1 (`localhost`, or `[::1]` with
    /// [`RedisServerBuilder::bind_ipv6`]).
    ///
    /// # Panics
    ///
    /// If the server was started without TLS.
    pub fn tls_url_with_host(&self, host: &str) -> String {
        format!(
            "rediss://{host}:{}/",
            self.require_tls_port("tls_url_with_host")
        )
    }

    /// The PEM certificate of the CA that issued the server's certificate: what a client trusts.
    ///
    /// # Panics
    ///
    /// If the server was started without TLS.
    pub fn tls_ca_pem(&self) -> &str {
        &self.require_tls("tls_ca_pem").ca_pem
    }

    /// Where [`RedisServer::tls_ca_pem`] is written (`ca.crt` in the server's directory).
    ///
    /// # Panics
    ///
    /// If the server was started without TLS.
    pub fn tls_ca_path(&self) -> &Path {
        &self.require_tls("tls_ca_path").ca_path
    }

    fn require_tls(&self, method: &str) -> &TlsFiles {
        match &self.spec.tls {
            Some(files) => files,
            None => panic!(
                "RedisServer::{method}: the server on port {} was started without TLS; start it \
                 with RedisServer::builder().tls(true)",
                self.port
            ),
        }
    }

    fn require_tls_port(&self, method: &str) -> u16 {
        self.require_tls(method);
        self.tls_port.unwrap_or_else(|| {
            panic!(
                "RedisServer::{method}: the server on port {} has no TLS port",
                self.port
            )
        })
    }
}

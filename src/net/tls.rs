//! TLS with rustls (ring provider), on both sides.
//!
//! - Client side (clients connecting to pgsluice): an acceptor built from
//!   `client_tls_*`, used after an SSLRequest or for PostgreSQL 17 direct TLS (ALPN
//!   `postgresql`). `verify-ca`/`verify-full` require a client certificate signed by
//!   `client_tls_ca_file`; with a CA file and a lower mode one is asked for but optional,
//!   so `auth_type = cert` works under `require` (PgBouncer does the same).
//! - Server side (pgsluice connecting to PostgreSQL): one rustls client configuration per
//!   way of checking the server: none (`allow`/`prefer`/`require`), chain only
//!   (`verify-ca`), chain and host name (`verify-full`). SNI is sent whenever the host is
//!   a name, whatever the mode (managed Postgres such as Neon routes on it).
//!
//! Everything is built from the files when the configuration is loaded (startup, RELOAD,
//! SET), so rotated certificates are picked up by new connections after a RELOAD; a
//! connection keeps the configuration it was made with.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, SupportedCipherSuite, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::config::General;

/// The ALPN protocol name PostgreSQL 17 uses; required for direct TLS.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// libpq's sslmode words, used by `client_tls_sslmode`, `server_tls_sslmode` and the
/// per-database `sslmode=` override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, String> {
        Ok(
            match crate::config::values::parse_enum(text, crate::config::keys::SSL_MODES)? {
                "disable" => SslMode::Disable,
                "allow" => SslMode::Allow,
                "prefer" => SslMode::Prefer,
                "require" => SslMode::Require,
                "verify-ca" => SslMode::VerifyCa,
                _ => SslMode::VerifyFull,
            },
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS versions a `*_tls_protocols` value allows. PgBouncer (libtls) words:
/// `tlsv1.0` … `tlsv1.3`, `all`/`legacy`, `secure`/`default`; separated by `,` or `:`,
/// each optionally negated with `!` or `-`. rustls speaks TLS 1.2 and 1.3 only: `all`
/// simply means both, and a list that allows nothing newer than 1.1 is an error.
pub fn parse_protocols(text: &str) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    // Bits: 1.0, 1.1, 1.2, 1.3.
    let mut set = 0u8;
    for item in text.split([',', ':']).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let (negate, word) = match item.strip_prefix(['!', '-']) {
            Some(w) => (true, w),
            None => (false, item.strip_prefix('+').unwrap_or(item)),
        };
        let bits = match word.to_ascii_lowercase().as_str() {
            "tlsv1.0" => 0b0001,
            "tlsv1.1" => 0b0010,
            "tlsv1.2" => 0b0100,
            "tlsv1.3" => 0b1000,
            "all" | "legacy" => 0b1111,
            "secure" | "default" => 0b1100,
            _ => return Err(format!("unknown TLS protocol: {word}")),
        };
        if negate {
            set &= !bits;
        } else {
            set |= bits;
        }
    }
    let mut out = Vec::new();
    if set & 0b0100 != 0 {
        out.push(&rustls::version::TLS12);
    }
    if set & 0b1000 != 0 {
        out.push(&rustls::version::TLS13);
    }
    if out.is_empty() {
        return Err(format!(
            "no supported TLS protocol in {text:?} (pgsluice supports tlsv1.2 and tlsv1.3)"
        ));
    }
    Ok(out)
}

/// OpenSSL and IANA names of the TLS 1.2 suites rustls (ring) has.
const TLS12_NAMES: &[(&str, &str)] = &[
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
    (
        "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    ),
    (
        "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    ),
    (
        "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    ),
];

/// Keywords that mean "the library's defaults" (libtls and common OpenSSL ones). Every
/// suite rustls has is an ECDHE AEAD suite, i.e. already "secure" and "fast".
const CIPHER_KEYWORDS: &[&str] = &[
    "default", "secure", "fast", "normal", "all", "compat", "legacy", "insecure", "high", "aead",
    "ecdhe", "eecdh",
];

/// The TLS 1.2 suites a `*_tls_ciphers` value selects: keywords select every suite,
/// OpenSSL or IANA names select that suite, `!x`/`-x` removes one (exclusions of things
/// rustls never offers, such as `!aNULL` or `!MD5`, are accepted and change nothing).
/// A positive name rustls does not have is an error naming it.
pub fn parse_tls12_ciphers(text: &str) -> Result<Vec<&'static str>, String> {
    let all: Vec<&'static str> = TLS12_NAMES.iter().map(|(_, iana)| *iana).collect();
    let lookup = |w: &str| {
        TLS12_NAMES
            .iter()
            .find(|(o, i)| o.eq_ignore_ascii_case(w) || i.eq_ignore_ascii_case(w))
            .map(|(_, i)| *i)
    };
    let mut out: Vec<&'static str> = Vec::new();
    for item in text.split([':', ',', ' ']).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        if let Some(w) = item.strip_prefix(['!', '-']) {
            if let Some(name) = lookup(w) {
                out.retain(|n| *n != name);
            }
            continue;
        }
        let w = item.strip_prefix('+').unwrap_or(item);
        if CIPHER_KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(w)) {
            for n in &all {
                if !out.contains(n) {
                    out.push(n);
                }
            }
        } else if let Some(name) = lookup(w) {
            if !out.contains(&name) {
                out.push(name);
            }
        } else {
            return Err(format!("unsupported TLS 1.2 cipher: {w}"));
        }
    }
    Ok(out)
}

const TLS13_NAMES: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// The TLS 1.3 suites a `*_tls13_ciphers` value selects (`:`-separated IANA names);
/// empty = all of them.
pub fn parse_tls13_ciphers(text: &str) -> Result<Vec<&'static str>, String> {
    let mut out = Vec::new();
    for item in text.split([':', ',', ' ']).map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let name = TLS13_NAMES
            .iter()
            .find(|n| n.eq_ignore_ascii_case(item))
            .ok_or_else(|| format!("unsupported TLS 1.3 cipher: {item}"))?;
        if !out.contains(name) {
            out.push(*name);
        }
    }
    if out.is_empty() {
        out = TLS13_NAMES.to_vec();
    }
    Ok(out)
}

/// The `*_tls_*` settings of one side, as written; what RELOAD compares to decide whether
/// servers must be reconnected.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SideSettings {
    pub key_file: String,
    pub cert_file: String,
    pub ca_file: String,
    pub protocols: String,
    pub ciphers: String,
    pub tls13_ciphers: String,
}

impl SideSettings {
    pub fn client(g: &General) -> SideSettings {
        SideSettings {
            key_file: g.client_tls_key_file.clone(),
            cert_file: g.client_tls_cert_file.clone(),
            ca_file: g.client_tls_ca_file.clone(),
            protocols: g.client_tls_protocols.clone(),
            ciphers: g.client_tls_ciphers.clone(),
            tls13_ciphers: g.client_tls13_ciphers.clone(),
        }
    }

    pub fn server(g: &General) -> SideSettings {
        SideSettings {
            key_file: g.server_tls_key_file.clone(),
            cert_file: g.server_tls_cert_file.clone(),
            ca_file: g.server_tls_ca_file.clone(),
            protocols: g.server_tls_protocols.clone(),
            ciphers: g.server_tls_ciphers.clone(),
            tls13_ciphers: g.server_tls13_ciphers.clone(),
        }
    }

    /// The ring provider restricted to the configured suites, and the versions.
    fn provider(
        &self,
        side: &str,
    ) -> Result<(Arc<CryptoProvider>, Vec<&'static SupportedProtocolVersion>), String> {
        let versions =
            parse_protocols(&self.protocols).map_err(|e| format!("{side}_tls_protocols: {e}"))?;
        let t12 =
            parse_tls12_ciphers(&self.ciphers).map_err(|e| format!("{side}_tls_ciphers: {e}"))?;
        let t13 = parse_tls13_ciphers(&self.tls13_ciphers)
            .map_err(|e| format!("{side}_tls13_ciphers: {e}"))?;
        let base = rustls::crypto::ring::default_provider();
        let suites: Vec<SupportedCipherSuite> = base
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| {
                let name = iana_name(*s);
                t12.contains(&name) || t13.contains(&name)
            })
            .collect();
        let usable = versions
            .iter()
            .any(|v| suites.iter().any(|s| s.version() == *v));
        if !usable {
            return Err(format!(
                "{side}_tls_ciphers/{side}_tls13_ciphers leave no cipher for {side}_tls_protocols"
            ));
        }
        Ok((
            Arc::new(CryptoProvider {
                cipher_suites: suites,
                ..base
            }),
            versions,
        ))
    }
}

/// The IANA name of a suite: rustls calls the TLS 1.3 ones `TLS13_…`.
fn iana_name(s: SupportedCipherSuite) -> &'static str {
    let name = s.suite().as_str().unwrap_or("");
    match name.strip_prefix("TLS13_") {
        Some(rest) => TLS13_NAMES
            .iter()
            .copied()
            .find(|n| n.strip_prefix("TLS_") == Some(rest))
            .unwrap_or(name),
        None => name,
    }
}

fn read_certs(path: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{what} {path}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{what} {path}: no certificate found"));
    }
    Ok(certs)
}

fn read_key(path: &str, what: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{what} {path}: {e}"))
}

fn read_roots(path: &str, what: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(path, what)? {
        roots.add(c).map_err(|e| format!("{what} {path}: {e}"))?;
    }
    Ok(roots)
}

/// The system's trust store, for `verify-ca`/`verify-full` without `server_tls_ca_file`
/// (PgBouncer then uses the TLS library's default CA file).
fn system_roots() -> Option<RootCertStore> {
    let env = std::env::var("SSL_CERT_FILE").ok();
    let candidates = env.iter().map(String::as_str).chain([
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]);
    for path in candidates {
        if !Path::new(path).exists() {
            continue;
        }
        let Ok(iter) = CertificateDer::pem_file_iter(path) else {
            continue;
        };
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(iter.flatten());
        if added > 0 {
            return Some(roots);
        }
    }
    None
}

/// The client side: how clients may or must speak TLS to pgsluice.
#[derive(Debug)]
pub struct ClientSide {
    pub mode: SslMode,
    pub config: Arc<ServerConfig>,
}

/// The server side: the rustls client configurations for each way of checking servers.
#[derive(Debug)]
pub struct ServerSide {
    pub settings: SideSettings,
    /// `allow`/`prefer`/`require`: encrypted, the certificate is not checked.
    no_verify: Arc<ClientConfig>,
    /// `verify-ca` and `verify-full`; `Err` says why they cannot be used (no CA).
    verify_ca: Result<Arc<ClientConfig>, String>,
    verify_full: Result<Arc<ClientConfig>, String>,
}

impl ServerSide {
    /// The rustls configuration for `mode`; `Ok(None)` for `disable`.
    pub fn config_for(&self, mode: SslMode) -> Result<Option<Arc<ClientConfig>>, String> {
        match mode {
            SslMode::Disable => Ok(None),
            SslMode::Allow | SslMode::Prefer | SslMode::Require => Ok(Some(self.no_verify.clone())),
            SslMode::VerifyCa => self.verify_ca.clone().map(Some),
            SslMode::VerifyFull => self.verify_full.clone().map(Some),
        }
    }
}

/// Both sides, built from one configuration.
#[derive(Debug)]
pub struct TlsContexts {
    /// `None` when `client_tls_sslmode = disable`.
    pub client: Option<ClientSide>,
    pub server: ServerSide,
}

impl TlsContexts {
    /// Reads every file the TLS settings name. Errors name the key or file.
    pub fn build(g: &General) -> Result<TlsContexts, String> {
        Ok(TlsContexts {
            client: build_client_side(g)?,
            server: build_server_side(g)?,
        })
    }

    /// What an untouched configuration gives (no files involved): client TLS off, server
    /// TLS opportunistic without verification. Used where no configuration was loaded.
    pub fn plain() -> TlsContexts {
        // Cannot fail: defaults only, no files.
        match build_server_side(&General::default()) {
            Ok(server) => TlsContexts {
                client: None,
                server,
            },
            Err(e) => unreachable!("default TLS settings are valid: {e}"),
        }
    }
}

fn build_client_side(g: &General) -> Result<Option<ClientSide>, String> {
    let mode = g.client_tls_sslmode;
    if mode == SslMode::Disable {
        return Ok(None);
    }
    let s = SideSettings::client(g);
    if s.key_file.is_empty() || s.cert_file.is_empty() {
        // PgBouncer's text.
        return Err(
            "To allow TLS connections from clients, client_tls_key_file and \
                    client_tls_cert_file must be set."
                .into(),
        );
    }
    let (provider, versions) = s.provider("client")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| format!("client TLS: {e}"))?;
    let builder = if s.ca_file.is_empty() {
        if mode >= SslMode::VerifyCa {
            return Err(format!(
                "client_tls_sslmode={} needs client_tls_ca_file",
                mode.as_str()
            ));
        }
        builder.with_no_client_auth()
    } else {
        let roots = Arc::new(read_roots(&s.ca_file, "client_tls_ca_file")?);
        let v = WebPkiClientVerifier::builder_with_provider(roots, provider);
        let v = if mode >= SslMode::VerifyCa {
            v
        } else {
            v.allow_unauthenticated()
        };
        builder
            .with_client_cert_verifier(v.build().map_err(|e| format!("client_tls_ca_file: {e}"))?)
    };
    let certs = read_certs(&s.cert_file, "client_tls_cert_file")?;
    let key = read_key(&s.key_file, "client_tls_key_file")?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("client_tls_cert_file/client_tls_key_file: {e}"))?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Some(ClientSide {
        mode,
        config: Arc::new(config),
    }))
}

fn build_server_side(g: &General) -> Result<ServerSide, String> {
    let s = SideSettings::server(g);
    let (provider, versions) = s.provider("server")?;
    let client_cert = match (s.cert_file.is_empty(), s.key_file.is_empty()) {
        (true, true) => None,
        (false, false) => Some((
            read_certs(&s.cert_file, "server_tls_cert_file")?,
            read_key(&s.key_file, "server_tls_key_file")?,
        )),
        _ => {
            return Err("server_tls_cert_file and server_tls_key_file must be set together".into())
        }
    };
    let finish = |verifier: Arc<dyn ServerCertVerifier>| -> Result<Arc<ClientConfig>, String> {
        let b = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("server TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut c = match &client_cert {
            None => b.with_no_client_auth(),
            Some((certs, key)) => b
                .with_client_auth_cert(certs.clone(), key.clone_key())
                .map_err(|e| format!("server_tls_cert_file/server_tls_key_file: {e}"))?,
        };
        c.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        // SNI is decided per connection: a name is sent, an IP address never is.
        c.enable_sni = true;
        Ok(Arc::new(c))
    };
    let algs = provider.signature_verification_algorithms;
    let no_verify = finish(Arc::new(NoVerify(algs)))?;
    let roots = if s.ca_file.is_empty() {
        system_roots().ok_or_else(|| {
            "server_tls_ca_file is not set and no system CA file was found".to_string()
        })
    } else {
        // A bad CA file is an error even if no database uses verify-* now.
        read_roots(&s.ca_file, "server_tls_ca_file")
    };
    let (verify_ca, verify_full) = match roots {
        Ok(roots) => {
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("server_tls_ca_file: {e}"))?;
            (
                Ok(finish(Arc::new(ChainOnly(webpki.clone())))?),
                Ok(finish(webpki)?),
            )
        }
        Err(e) if s.ca_file.is_empty() => (Err(e.clone()), Err(e)),
        Err(e) => return Err(e),
    };
    if g.server_tls_sslmode >= SslMode::VerifyCa {
        if let Err(e) = &verify_ca {
            return Err(e.clone());
        }
    }
    Ok(ServerSide {
        settings: s,
        no_verify,
        verify_ca: verify_ca.map_err(|e| format!("cannot verify servers: {e}")),
        verify_full: verify_full.map_err(|e| format!("cannot verify servers: {e}")),
    })
}

/// `allow`/`prefer`/`require`: any certificate, but the handshake signatures are still
/// checked (the session is encrypted to whoever holds the certificate's key).
#[derive(Debug)]
struct NoVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the host name is not checked (libpq's
/// meaning).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The name to present and check for `host`: a DNS name (sent as SNI) or an IP address
/// (never sent as SNI, per RFC 6066).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let h = host.trim_matches(|c| c == '[' || c == ']');
    ServerName::try_from(h.to_string()).map_err(|e| format!("invalid host name {host:?}: {e}"))
}

/// `TLSv1.3/TLS_AES_256_GCM_SHA384`, as PgBouncer shows it in SHOW CLIENTS/SERVERS and
/// the login log line (without its key-exchange suffix).
pub fn describe(common: &rustls::CommonState) -> String {
    let version = match common.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let suite = common
        .negotiated_cipher_suite()
        .map(iana_name)
        .unwrap_or("unknown");
    format!("{version}/{suite}")
}

/// The subject CommonName of a DER certificate (for `auth_type = cert`). A minimal DER
/// walk: Certificate → tbsCertificate → subject → the first `2.5.4.3` attribute.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert, _) = der_item(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = der_item(cert)?; // tbsCertificate SEQUENCE
    let mut rest = tbs;
    // Optional [0] version.
    let (tag, _, after) = der_item(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer, validity; then subject.
    for _ in 0..4 {
        rest = der_item(rest)?.2;
    }
    let (tag, subject, _) = der_item(rest)?;
    if tag != 0x30 {
        return None;
    }
    let mut rdns = subject;
    while !rdns.is_empty() {
        let (_, set, next) = der_item(rdns)?;
        rdns = next;
        let mut attrs = set;
        while !attrs.is_empty() {
            let (_, attr, next) = der_item(attrs)?;
            attrs = next;
            let (oid_tag, oid, value) = der_item(attr)?;
            if oid_tag == 0x06 && oid == [0x55, 0x04, 0x03] {
                let (_, text, _) = der_item(value)?;
                return std::str::from_utf8(text).ok().map(str::to_string);
            }
        }
    }
    None
}

/// One DER TLV: (tag, contents, what follows). Single-byte tags are all X.509 needs here.
fn der_item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len)?;
    if end > b.len() {
        return None;
    }
    Some((tag, &b[hdr..end], &b[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        let v = |t| parse_protocols(t).map(|v| v.len());
        assert_eq!(v("secure"), Ok(2));
        assert_eq!(v("all"), Ok(2));
        assert_eq!(v("tlsv1.3"), Ok(1));
        assert_eq!(v("tlsv1.2,tlsv1.3"), Ok(2));
        assert_eq!(v("all:!tlsv1.2"), Ok(1));
        assert!(v("tlsv1.0")
            .unwrap_err()
            .contains("no supported TLS protocol"));
        assert_eq!(v("tlsv9").unwrap_err(), "unknown TLS protocol: tlsv9");
    }

    #[test]
    fn ciphers() {
        assert_eq!(parse_tls12_ciphers("default").unwrap().len(), 6);
        assert_eq!(parse_tls12_ciphers("HIGH:!aNULL:!MD5").unwrap().len(), 6);
        assert_eq!(
            parse_tls12_ciphers("ECDHE-RSA-AES256-GCM-SHA384").unwrap(),
            ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
        );
        assert_eq!(
            parse_tls12_ciphers("default:!ECDHE-RSA-AES256-GCM-SHA384")
                .unwrap()
                .len(),
            5
        );
        assert_eq!(
            parse_tls12_ciphers("AES128-SHA").unwrap_err(),
            "unsupported TLS 1.2 cipher: AES128-SHA"
        );
        assert_eq!(parse_tls13_ciphers("").unwrap().len(), 3);
        assert_eq!(
            parse_tls13_ciphers("TLS_AES_128_CCM_SHA256").unwrap_err(),
            "unsupported TLS 1.3 cipher: TLS_AES_128_CCM_SHA256"
        );
    }

    #[test]
    fn configured_suites_reach_the_provider() {
        let mut s = SideSettings {
            protocols: "secure".into(),
            ciphers: "default".into(),
            ..SideSettings::default()
        };
        let (p, v) = s.provider("client").unwrap();
        assert_eq!((p.cipher_suites.len(), v.len()), (9, 2));
        s.tls13_ciphers = "TLS_AES_256_GCM_SHA384".into();
        s.ciphers = "ECDHE-RSA-AES128-GCM-SHA256".into();
        let (p, _) = s.provider("client").unwrap();
        let names: Vec<_> = p.cipher_suites.iter().map(|c| iana_name(*c)).collect();
        assert_eq!(
            names,
            [
                "TLS_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        s.protocols = "tlsv1.3".into();
        s.tls13_ciphers = String::new();
        s.ciphers = "!ECDHE-RSA-AES128-GCM-SHA256".into();
        assert!(s.provider("client").is_ok());
        s.protocols = "tlsv1.2".into();
        assert!(s
            .provider("client")
            .unwrap_err()
            .contains("leave no cipher"));
    }

    #[test]
    fn der_walk_is_total() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x00]), None);
    }
}

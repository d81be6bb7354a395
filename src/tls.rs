//! rustls configurations for the relay link: the relay's server config, and
//! the clients' (daemon and operator) config with the relay pinned.
//!
//! Every config is TLS 1.3 only (RFC 8446) with the ring provider. A
//! client trusts the relay in exactly one of three ways ([`RelayTrust`]);
//! certificate verification is never switched off. The relay's key is
//! read from PEM files or made once with `--self-signed` and kept in the
//! relay's state directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};

use crate::paths::{self, FileError};

/// The largest PEM file read (certificate chain or key), in bytes.
const MAX_PEM_BYTES: u64 = 256 * 1024;

/// A TLS setup failure; the message names the file or setting.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file is unsafe or unreadable.
    #[error(transparent)]
    File(#[from] FileError),
    /// A PEM file holds nothing usable.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the certificate, key or settings.
    #[error("TLS setup")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be made.
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(String),
    /// `--relay-fingerprint` or `--relay-ca` is malformed, or no system roots.
    #[error("{0}")]
    Trust(String),
    /// The self-signed certificate kept in the state directory does not
    /// name every `--san` asked for; `support relay rotate-cert` makes one that does.
    #[error("{cert} does not name {}; it names {}", .missing.join(", "), .names.join(", "))]
    MissingNames {
        /// The certificate file.
        cert: PathBuf,
        /// The names asked for that it lacks.
        missing: Vec<String>,
        /// The names it has.
        names: Vec<String>,
    },
}

/// How long a self-signed certificate made here is valid: a year (then
/// `support relay rotate-cert`).
pub const SELF_SIGNED_DAYS: i64 = 365;

/// The names every self-signed certificate made here has, besides `--san`.
pub const LOCAL_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What a self-signed certificate in the state directory says of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// Its DNS names and IP addresses (subjectAltName).
    pub names: Vec<String>,
    /// The end of its validity.
    pub not_after: chrono::DateTime<chrono::Utc>,
    /// Its fingerprint ([`fingerprint`]).
    pub fingerprint: String,
}

impl CertInfo {
    /// Reads the leaf certificate's names and validity.
    ///
    /// # Errors
    /// [`TlsError::Pem`] naming `path` when the DER is not a certificate.
    pub fn of(cert: &CertificateDer<'_>, path: &Path) -> Result<CertInfo, TlsError> {
        use x509_parser::extensions::GeneralName;
        let bad = |why: String| TlsError::Pem { path: path.into(), why };
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| bad(format!("{e}")))?;
        let mut names = Vec::new();
        if let Some(san) = parsed.subject_alternative_name().map_err(|e| bad(format!("{e}")))? {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(n) => names.push(n.to_string()),
                    GeneralName::IPAddress(b) => {
                        if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                            names.push(std::net::Ipv4Addr::from(v4).to_string());
                        } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                            names.push(std::net::Ipv6Addr::from(v6).to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        let not_after = chrono::DateTime::from_timestamp(parsed.validity().not_after.timestamp(), 0)
            .ok_or_else(|| bad("its notAfter is out of range".into()))?;
        Ok(CertInfo { names, not_after, fingerprint: fingerprint(cert) })
    }
}

/// The relay presented another leaf certificate than the one pinned
/// (`--relay-fingerprint`): carried in rustls's error to [`explain_handshake`].
#[derive(Debug, thiserror::Error)]
#[error("the relay presented {presented}, not the pinned {expected}")]
pub struct PinMismatch {
    /// The pinned fingerprint.
    pub expected: String,
    /// The one presented.
    pub presented: String,
}

/// What a person can do about a failed handshake with the relay at
/// `host`: the pinned and presented fingerprints, a CA to pass, a name the
/// certificate lacks, an expiry. `None` for other failures (not TLS, an
/// old TLS version), which rustls's own words describe.
pub fn explain_handshake(err: &std::io::Error, host: &str) -> Option<String> {
    use rustls::CertificateError as C;
    let Some(rustls::Error::InvalidCertificate(cert)) = err.get_ref()?.downcast_ref::<rustls::Error>() else {
        return None;
    };
    let ask =
        "ask the relay's admin for its fingerprint (`support relay serve` and `support relay rotate-cert` print it)";
    Some(match cert {
        C::Other(other) => match other.0.downcast_ref::<PinMismatch>() {
            Some(m) => format!(
                "the relay presented the certificate {}, but --relay-fingerprint pins {}: either this is not your \
                 relay, or its certificate was replaced; {ask} before you pin another",
                m.presented, m.expected
            ),
            None => return None,
        },
        C::UnknownIssuer | C::BadSignature => format!(
            "its certificate is not signed by a CA you trust ({}): pass --relay-ca FILE with the CA that signed \
             it (for a self-signed relay, its cert.pem), or --relay-fingerprint sha256:HEX ({ask})",
            if matches!(cert, C::BadSignature) { "BadSignature" } else { "UnknownIssuer" }
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            let names = match cert {
                C::NotValidForNameContext { presented, .. } => format!(" (it names {})", presented.join(", ")),
                _ => String::new(),
            };
            format!(
                "its certificate does not name {host}{names}: connect by a name it has, or have the relay's admin \
                 add it (`support relay rotate-cert --san {host}` for a self-signed relay)"
            )
        }
        C::Expired | C::ExpiredContext { .. } => "its certificate has expired: the relay's admin renews it \
             (`support relay rotate-cert` for a self-signed relay, then give clients the new fingerprint)"
            .to_string(),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            "its certificate is not valid yet: check this machine's clock".to_string()
        }
        _ => return None,
    })
}

/// The ring provider, shared by every config here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `sha256:` and the lowercase hex SHA-256 of a certificate's DER bytes, as
/// `--relay-fingerprint` takes it and `support relay serve` prints it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    format!("sha256:{}", hex::encode(ring::digest::digest(&ring::digest::SHA256, cert.as_ref())))
}

/// The relay's certificate chain and private key.
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("leaf", &self.chain.first().map(fingerprint)).field("key", &"***").finish()
    }
}

impl Identity {
    /// The leaf certificate's fingerprint (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.chain.first().map(fingerprint).unwrap_or_default()
    }

    /// Reads a certificate chain (leaf first) and a private key (PKCS#8,
    /// PKCS#1 or SEC1) from PEM files.
    ///
    /// # Errors
    /// [`TlsError::File`] if a file is missing, unsafe (the key must not be
    /// readable by others) or over 256 KiB; [`TlsError::Pem`] if it holds
    /// no certificate or no key.
    pub fn from_pem(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let cert_pem = read(cert, false)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::Pem { path: cert.into(), why: format!("not a PEM certificate chain: {e}") })?;
        if chain.is_empty() {
            return Err(TlsError::Pem { path: cert.into(), why: "holds no CERTIFICATE block".into() });
        }
        let key_pem = read(key, true)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| TlsError::Pem { path: key.into(), why: format!("holds no usable private key: {e}") })?;
        Ok(Identity { chain, key })
    }

    /// The relay's self-signed identity in `dir` (`cert.pem`, `key.pem`,
    /// both 0600): made on first use for `localhost`, `127.0.0.1`, `::1`
    /// and `sans`, valid for [`SELF_SIGNED_DAYS`], then reused, so clients
    /// pinned to it stay pinned. Returns whether it was made now.
    ///
    /// # Errors
    /// As [`Identity::from_pem`]; [`TlsError::Generate`] if rcgen fails;
    /// [`TlsError::MissingNames`] when the certificate kept lacks a name
    /// of `sans` (it is not replaced behind pinned clients' backs).
    pub fn self_signed(dir: &Path, sans: &[String]) -> Result<(Identity, bool), TlsError> {
        paths::ensure_dir(dir)?;
        let files = paths::RelayPaths::new(dir);
        let cert = files.cert();
        if paths::open_read(&cert)?.is_some() {
            let identity = Identity::from_pem(&cert, &files.key())?;
            let names = identity.info(&cert)?.names;
            let missing: Vec<String> = sans.iter().filter(|s| !names.contains(s)).cloned().collect();
            if !missing.is_empty() {
                return Err(TlsError::MissingNames { cert, missing, names });
            }
            return Ok((identity, false));
        }
        Ok((Identity::make_self_signed(dir, sans)?, true))
    }

    /// Replaces the self-signed identity in `dir` with a new key and
    /// certificate, valid for [`SELF_SIGNED_DAYS`] from now, naming what
    /// the old one named and `sans`. Returns it and the old one's details.
    ///
    /// # Errors
    /// As [`Identity::self_signed`].
    pub fn rotate_self_signed(dir: &Path, sans: &[String]) -> Result<(Identity, Option<CertInfo>), TlsError> {
        paths::ensure_dir(dir)?;
        let files = paths::RelayPaths::new(dir);
        let cert = files.cert();
        let old = match paths::open_read(&cert)? {
            Some(_) => Some(Identity::from_pem(&cert, &files.key())?.info(&cert)?),
            None => None,
        };
        let mut names: Vec<String> = old.as_ref().map(|o| o.names.clone()).unwrap_or_default();
        names.extend(sans.iter().cloned());
        Ok((Identity::make_self_signed(dir, &names)?, old))
    }

    /// The leaf's names and validity; `path` names the file in errors.
    ///
    /// # Errors
    /// As [`CertInfo::of`].
    pub fn info(&self, path: &Path) -> Result<CertInfo, TlsError> {
        let leaf =
            self.chain.first().ok_or_else(|| TlsError::Pem { path: path.into(), why: "no certificate".into() })?;
        CertInfo::of(leaf, path)
    }

    /// Makes and writes a new self-signed key and certificate in `dir`.
    fn make_self_signed(dir: &Path, sans: &[String]) -> Result<Identity, TlsError> {
        let files = paths::RelayPaths::new(dir);
        let (cert, key) = (files.cert(), files.key());
        let mut names: Vec<String> = LOCAL_NAMES.map(String::from).to_vec();
        for san in sans {
            if !names.contains(san) {
                names.push(san.clone());
            }
        }
        let failed = |e: rcgen::Error| TlsError::Generate(e.to_string());
        let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
        // A subject of its own: a client given another relay's cert.pem as
        // its CA then finds no issuer by that name (UnknownIssuer).
        let mut tag = [0u8; 8];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tag)
            .map_err(|_| TlsError::Generate("no randomness".into()))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("support relay {}", hex::encode(tag)));
        // From yesterday (a client whose clock is a little behind), for a year.
        let day = |d: chrono::DateTime<chrono::Utc>| {
            use chrono::Datelike as _;
            rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8)
        };
        let now = chrono::Utc::now();
        params.not_before = day(now - chrono::Duration::days(1));
        params.not_after = day(now + chrono::Duration::days(SELF_SIGNED_DAYS));
        let signing_key = rcgen::KeyPair::generate().map_err(failed)?;
        let made = params.self_signed(&signing_key).map_err(failed)?;
        // The key first: a cert.pem without its key.pem would be reused and fail.
        paths::write_atomic(&key, signing_key.serialize_pem().as_bytes())?;
        paths::write_atomic(&cert, made.pem().as_bytes())?;
        Identity::from_pem(&cert, &key)
    }

    /// The relay's server config: TLS 1.3 only (ChaCha20-Poly1305 preferred), no client certificates
    /// (peers prove their keys inside the WebSocket), ALPN `http/1.1`.
    ///
    /// # Errors
    /// [`TlsError::Rustls`] if the key does not match or is unsupported.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        // ChaCha20-Poly1305 first, whatever the client's order: ring keeps
        // an AES-GCM key schedule of about 0.5 KiB per direction for the
        // life of a connection, ChaCha20 a 32-byte key, and a relay holds
        // mostly idle connections (issue 15's memory figure: 1 KiB of the
        // 15 per device). Every TLS 1.3 suite is as strong; one connection's
        // throughput is bound by the JSON frames, not the cipher. A client
        // without ChaCha20 still gets AES-GCM.
        let mut suites = rustls::crypto::ring::default_provider();
        suites.cipher_suites.sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let mut config = ServerConfig::builder_with_provider(Arc::new(suites))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.ignore_client_order = true;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

fn read(path: &Path, secret: bool) -> Result<Vec<u8>, TlsError> {
    let bytes = if secret { paths::read_secret(path, MAX_PEM_BYTES)? } else { read_public(path)? };
    bytes.ok_or_else(|| TlsError::Pem { path: path.into(), why: "no such file".into() })
}

/// A certificate file may live anywhere and belong to anyone (e.g. a CA
/// bundle under /etc), but it is still read with a cap.
fn read_public(path: &Path) -> Result<Option<Vec<u8>>, TlsError> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(FileError::Io { op: "open", path: path.into(), source }.into()),
    };
    let mut out = Vec::new();
    file.take(MAX_PEM_BYTES + 1).read_to_end(&mut out).map_err(|source| FileError::Io {
        op: "read",
        path: path.into(),
        source,
    })?;
    if out.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::Pem { path: path.into(), why: "is over 256 KiB".into() });
    }
    Ok(Some(out))
}

/// How a client (daemon or operator) recognises the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayTrust {
    /// `--relay-ca FILE`: certificates in this PEM file are the only roots
    /// (a self-signed relay's own `cert.pem` works).
    CaFile(PathBuf),
    /// `--relay-fingerprint sha256:HEX`: exactly this leaf certificate; the
    /// handshake signature is still verified against its key.
    Fingerprint([u8; 32]),
    /// `--relay-ca system`: the operating system's roots (rustls-native-certs).
    System,
}

impl RelayTrust {
    /// From `--relay-ca` (a file, or `system`) and `--relay-fingerprint`;
    /// exactly one must be given.
    ///
    /// # Errors
    /// [`TlsError::Trust`] for none, both, or a malformed fingerprint.
    pub fn from_flags(ca: Option<&str>, fingerprint: Option<&str>) -> Result<RelayTrust, TlsError> {
        match (ca, fingerprint) {
            (Some(_), Some(_)) => Err(TlsError::Trust("give --relay-ca or --relay-fingerprint, not both".into())),
            (None, None) => Err(TlsError::Trust(
                "say how to recognise the relay: --relay-ca FILE, --relay-ca system, or --relay-fingerprint sha256:HEX"
                    .into(),
            )),
            (Some("system"), None) => Ok(RelayTrust::System),
            (Some(file), None) => Ok(RelayTrust::CaFile(file.into())),
            (None, Some(fp)) => fp.parse(),
        }
    }

    /// The client config for this trust: TLS 1.3 only, ALPN `http/1.1`.
    ///
    /// # Errors
    /// [`TlsError::File`]/[`TlsError::Pem`] for an unreadable or empty CA
    /// file; [`TlsError::Trust`] when the system has no usable roots.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let builder =
            ClientConfig::builder_with_provider(provider()).with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut config = match self {
            RelayTrust::Fingerprint(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedLeaf { pin: *pin, provider: provider() }))
                .with_no_client_auth(),
            RelayTrust::CaFile(path) => {
                let pem = read(path, false)?;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&pem) {
                    let cert = cert.map_err(|e| TlsError::Pem { path: path.clone(), why: e.to_string() })?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::Pem { path: path.clone(), why: format!("unusable certificate: {e}") })?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Pem { path: path.clone(), why: "holds no CERTIFICATE block".into() });
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            RelayTrust::System => {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(found.certs);
                if roots.is_empty() {
                    return Err(TlsError::Trust(format!(
                        "--relay-ca system: no usable root certificates on this system ({} errors)",
                        found.errors.len()
                    )));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl FromStr for RelayTrust {
    type Err = TlsError;

    /// Parses a SHA-256 fingerprint: `sha256:HEX` as `support relay serve`
    /// prints it, `sha256 Fingerprint=AB:CD:...` as `openssl x509
    /// -fingerprint -sha256` prints it (either case), or the 64 hex digits
    /// alone; `:` between bytes allowed, case ignored.
    fn from_str(s: &str) -> Result<RelayTrust, TlsError> {
        let bad = || {
            TlsError::Trust(format!(
                "--relay-fingerprint takes sha256:HEX (64 hex digits, as `support relay serve` prints it) or what \
                 `openssl x509 -fingerprint -sha256` prints, not {s:?}"
            ))
        };
        let t = s.trim();
        let lower = t.to_ascii_lowercase();
        let hexits = ["sha256:", "sha256 fingerprint=", "sha2-256 fingerprint="]
            .iter()
            .find_map(|p| lower.strip_prefix(p))
            .unwrap_or(&lower);
        let hexits: String = hexits.chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(hexits).map_err(|_| bad())?;
        Ok(RelayTrust::Fingerprint(bytes.try_into().map_err(|_| bad())?))
    }
}

/// The server name to verify for `host` (an IP address or a DNS name).
///
/// # Errors
/// [`TlsError::Trust`] if `host` is neither.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::Trust(format!("{host:?} is not a valid host name")))
}

/// Accepts exactly one leaf certificate (by SHA-256), and still checks that
/// the server's handshake signature was made by that certificate's key.
#[derive(Debug)]
struct PinnedLeaf {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if got.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            let mismatch = PinMismatch {
                expected: format!("sha256:{}", hex::encode(self.pin)),
                presented: fingerprint(end_entity),
            };
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                mismatch,
            )))))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with a TLS 1.3-only config; refuse rather than trust.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls13RequiredForQuic))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        assert_eq!(format!("sha256:{hex64}").parse::<RelayTrust>().unwrap(), RelayTrust::Fingerprint([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(format!("sha256:{colons}").parse::<RelayTrust>().unwrap(), RelayTrust::Fingerprint([0xab; 32]));
        for bad in ["", "sha256:", "md5:ab", &format!("sha256:{}", "ab".repeat(31)), &format!("sha1:{hex64}")] {
            assert!(bad.parse::<RelayTrust>().is_err(), "{bad}");
        }
        assert!(RelayTrust::from_flags(None, None).is_err());
        assert!(RelayTrust::from_flags(Some("system"), Some("sha256:00")).is_err());
        assert_eq!(RelayTrust::from_flags(Some("system"), None).unwrap(), RelayTrust::System);
    }

    #[test]
    fn self_signed_identity_is_made_once_with_private_modes() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("relay");
        let (first, made) = Identity::self_signed(&state, &["relay.example".into()]).unwrap();
        assert!(made);
        for f in ["cert.pem", "key.pem"] {
            assert_eq!(std::fs::metadata(state.join(f)).unwrap().permissions().mode() & 0o777, 0o600, "{f}");
        }
        let (again, made) = Identity::self_signed(&state, &[]).unwrap();
        assert!(!made);
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert!(first.fingerprint().starts_with("sha256:") && first.fingerprint().len() == 71);
        first.server_config().unwrap();
        RelayTrust::CaFile(state.join("cert.pem")).client_config().unwrap();
    }

    #[test]
    fn the_relay_chooses_chacha20_even_when_the_client_lists_aes_first() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("relay");
        let (identity, _) = Identity::self_signed(&state, &[]).unwrap();
        let client_config = RelayTrust::CaFile(state.join("cert.pem")).client_config().unwrap();
        let offered: Vec<_> = client_config.crypto_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(offered[0], rustls::CipherSuite::TLS13_AES_256_GCM_SHA384, "the client's own order");
        let handshake = |client_config: Arc<ClientConfig>| {
            let mut client = rustls::ClientConnection::new(client_config, server_name("127.0.0.1").unwrap()).unwrap();
            let mut server = rustls::ServerConnection::new(identity.server_config().unwrap()).unwrap();
            while client.is_handshaking() || server.is_handshaking() {
                let mut wire = Vec::new();
                client.write_tls(&mut wire).unwrap();
                server.read_tls(&mut wire.as_slice()).unwrap();
                server.process_new_packets().unwrap();
                wire.clear();
                server.write_tls(&mut wire).unwrap();
                client.read_tls(&mut wire.as_slice()).unwrap();
                client.process_new_packets().unwrap();
            }
            server.negotiated_cipher_suite().unwrap().suite()
        };
        assert_eq!(handshake(client_config.clone()), rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        // A client without ChaCha20 still connects, with AES-GCM.
        let mut aes_only = rustls::crypto::ring::default_provider();
        aes_only.cipher_suites.retain(|s| s.suite() != rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
        let roots = {
            let mut r = rustls::RootCertStore::empty();
            r.add(identity.chain[0].clone()).unwrap();
            r
        };
        let aes_client = ClientConfig::builder_with_provider(Arc::new(aes_only))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        assert_eq!(handshake(Arc::new(aes_client)), rustls::CipherSuite::TLS13_AES_256_GCM_SHA384);
    }
}

//! How a daemon proves who it is to a broker and checks the broker: TLS
//! (rustls, the `ring` provider, no OpenSSL) from PEM files named in the
//! configuration, and MQTT username/password.
//!
//! Everything is loaded and checked when the configuration is validated, so
//! an unreadable or mismatched file is a configuration error that names the
//! file and the key (exit 78 at start, old settings kept on reload).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::Broker;

/// Common name indexers' certificates carry; no agent may use it.
pub const INDEXER_CN: &str = "swarming-indexer";

/// Why the TLS files could not be used. `key` is the configuration key
/// (`tls.cert`), `file` the file it names.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key}: cannot read {file}: {source}")]
    Read {
        key: &'static str,
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{key}: {file}: {message}")]
    Invalid {
        key: &'static str,
        file: PathBuf,
        message: String,
    },
    #[error("{key}: {message}")]
    Settings { key: &'static str, message: String },
}

impl TlsError {
    /// The configuration key the error is about.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Read { key, .. }
            | TlsError::Invalid { key, .. }
            | TlsError::Settings { key, .. } => key,
        }
    }
}

/// `tls:` as written: every path optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    /// CA certificates (PEM) that verify the brokers; system roots when absent.
    pub ca: Option<PathBuf>,
    /// Client certificate chain (PEM), end entity first.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
}

/// Loaded TLS settings: the rustls configuration and what a reload must
/// compare (paths and file contents, so renewed files are picked up).
#[derive(Clone)]
pub struct TlsSettings {
    pub files: RawTls,
    /// Common name of the client certificate, when there is one.
    pub cn: Option<String>,
    /// SHA-256 over the files' contents.
    digest: Vec<u8>,
    pub config: Arc<ClientConfig>,
}

impl PartialEq for TlsSettings {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files && self.digest == other.digest
    }
}

impl fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSettings")
            .field("files", &self.files)
            .field("cn", &self.cn)
            .finish_non_exhaustive()
    }
}

fn read(key: &'static str, file: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(file).map_err(|source| TlsError::Read {
        key,
        file: file.to_owned(),
        source,
    })
}

fn invalid(key: &'static str, file: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::Invalid {
        key,
        file: file.to_owned(),
        message: message.to_string(),
    }
}

fn certificates(key: &'static str, file: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, file)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, file, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(key, file, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The provider every MQTT TLS connection uses (explicit, so the process
/// default does not matter).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots that verify brokers: the `ca` file, else the system's.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(file) => {
            for c in certificates("tls.ca", file)? {
                store.add(c).map_err(|e| {
                    invalid("tls.ca", file, format!("unusable CA certificate: {e}"))
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for c in found.certs {
                // One odd system certificate must not stop the others.
                let _ = store.add(c);
            }
            if store.is_empty() {
                return Err(TlsError::Settings {
                    key: "tls.ca",
                    message: "no system CA certificates found; name the brokers' CA file".into(),
                });
            }
        }
    }
    Ok(store)
}

impl TlsSettings {
    /// Loads and checks the files: certificates parse, the key matches the
    /// certificate, cert and key come together.
    pub fn load(files: RawTls) -> Result<TlsSettings, TlsError> {
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings {
                key: "tls",
                message: e.to_string(),
            })?;
        let store = roots(files.ca.as_deref())?;
        if let Some(ca) = &files.ca {
            digest.update(&read("tls.ca", ca)?);
        }
        let builder = builder.with_root_certificates(store);
        let (config, cn) = match (&files.cert, &files.key) {
            (None, None) => (builder.with_no_client_auth(), None),
            (Some(_), None) => {
                return Err(TlsError::Settings {
                    key: "tls.key",
                    message: "tls.cert is given without its key".into(),
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Settings {
                    key: "tls.cert",
                    message: "tls.key is given without its certificate".into(),
                })
            }
            (Some(cert_file), Some(key_file)) => {
                let chain = certificates("tls.cert", cert_file)?;
                let cn = common_name(&chain[0]).map_err(|m| invalid("tls.cert", cert_file, m))?;
                let key_pem = read("tls.key", key_file)?;
                let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                    invalid(
                        "tls.key",
                        key_file,
                        format!("no PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
                    )
                })?;
                digest.update(&read("tls.cert", cert_file)?);
                digest.update(&key_pem);
                let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                    invalid(
                        "tls.key",
                        key_file,
                        format!(
                            "does not fit the certificate in {}: {e}",
                            cert_file.display()
                        ),
                    )
                })?;
                (config, cn)
            }
        };
        Ok(TlsSettings {
            files,
            cn,
            digest: digest.finish().as_ref().to_vec(),
            config: Arc::new(config),
        })
    }
}

/// The subject's common name (CN) of a DER certificate, when it has one.
pub fn common_name(cert: &CertificateDer<'_>) -> Result<Option<String>, String> {
    use x509_cert::der::asn1::{PrintableStringRef, Utf8StringRef};
    use x509_cert::der::{Decode, Tagged};
    let cert = x509_cert::Certificate::from_der(cert.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    // id-at-commonName, 2.5.4.3
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    for rdn in cert.tbs_certificate.subject.0.iter() {
        for atv in rdn.0.iter() {
            if atv.oid != CN {
                continue;
            }
            let v = &atv.value;
            let text = match v.tag() {
                x509_cert::der::Tag::Utf8String => v
                    .decode_as::<Utf8StringRef<'_>>()
                    .map(|s| s.as_str().to_owned()),
                x509_cert::der::Tag::PrintableString => v
                    .decode_as::<PrintableStringRef<'_>>()
                    .map(|s| s.as_str().to_owned()),
                other => return Err(format!("subject CN has unsupported type {other}")),
            }
            .map_err(|e| format!("unreadable subject CN: {e}"))?;
            return Ok(Some(text));
        }
    }
    Ok(None)
}

/// MQTT username and password (from a password file).
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Login {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Login({}, ***)", self.username)
    }
}

impl Login {
    /// Reads the password file: its first line, without the line end.
    pub fn load(username: String, password_file: &Path) -> Result<Login, TlsError> {
        let text = std::fs::read_to_string(password_file).map_err(|source| TlsError::Read {
            key: "password_file",
            file: password_file.to_owned(),
            source,
        })?;
        let password = text.lines().next().unwrap_or("").to_owned();
        if password.is_empty() {
            return Err(invalid(
                "password_file",
                password_file,
                "the first line (the password) is empty",
            ));
        }
        Ok(Login { username, password })
    }
}

/// What a client uses to reach brokers securely. Compared on reload: a
/// change reconnects.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientAuth {
    pub tls: Option<TlsSettings>,
    pub login: Option<Login>,
}

impl ClientAuth {
    /// Sets transport and credentials on `opts` for `broker`. An `mqtts://`
    /// broker without a `tls:` section is verified with the system roots.
    pub fn apply(&self, opts: &mut MqttOptions, broker: &Broker) -> Result<(), TlsError> {
        if broker.tls {
            let config = match &self.tls {
                Some(t) => t.config.clone(),
                None => TlsSettings::load(RawTls::default())?.config,
            };
            opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
        }
        if let Some(l) = &self.login {
            opts.set_credentials(l.username.clone(), l.password.clone());
        }
        Ok(())
    }
}

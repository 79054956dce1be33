//! Signed `watch` lists (see `docs/protocol.md`, "Signed target lists").
//!
//! The indexer signs every list it publishes with an Ed25519 key; an agent
//! configured with `watch_keys` applies a list only if one of those keys
//! signed it and it is not older than the list it runs. The signature and
//! the sequence number are two more fields of the JSON object, which agents
//! without `watch_keys` (and old agents) ignore.
//!
//! Ed25519 comes from `ring`, already in the build as rustls's provider:
//! audited, constant time, and no second crypto library.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::Deserialize;

use crate::protocol::{TargetSpec, MAX_WATCH_BYTES};

/// Prefix of public keys and signatures as written in configs and payloads.
pub const PREFIX: &str = "ed25519:";
/// Domain separation: these bytes are never a valid signature over
/// anything else we sign.
const CONTEXT: &[u8] = b"swarming-watch-v1\0";

/// Why a key could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("{0}: not an Ed25519 private key in PEM (PKCS#8): {1}")]
    BadPrivate(PathBuf, String),
    #[error("{0:?} is not a public key of the form ed25519:BASE64 (32 bytes)")]
    BadPublic(String),
}

/// An Ed25519 public key, as `watch_keys` lists it.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{PREFIX}{}", B64.encode(self.0))
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bad = || KeyError::BadPublic(s.to_owned());
        let b64 = s.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
        let bytes = B64.decode(b64).map_err(|_| bad())?;
        Ok(PublicKey(bytes.try_into().map_err(|_| bad())?))
    }
}

/// The indexer's private key.
pub struct SigningKey {
    pub file: PathBuf,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({}, {})", self.file.display(), self.public())
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.file == other.file && self.public() == other.public()
    }
}

impl SigningKey {
    /// Reads a PEM PKCS#8 Ed25519 key (ours, or `openssl genpkey -algorithm ed25519`).
    pub fn load(file: &Path) -> Result<SigningKey, KeyError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::PrivatePkcs8KeyDer;
        let pem = std::fs::read(file).map_err(|e| KeyError::Read(file.to_owned(), e))?;
        let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
            .map_err(|e| KeyError::BadPrivate(file.to_owned(), e.to_string()))?;
        // OpenSSL writes PKCS#8 v1 (no public key inside): accept both.
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| KeyError::BadPrivate(file.to_owned(), e.to_string()))?;
        Ok(SigningKey {
            file: file.to_owned(),
            pair,
        })
    }

    pub fn public(&self) -> PublicKey {
        let mut k = [0u8; 32];
        k.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(k)
    }
}

/// Writes a new private key to `file` (mode 0600, never over an existing
/// file) and returns its public key.
pub fn generate(file: &Path) -> anyhow::Result<PublicKey> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|e| anyhow::anyhow!("cannot generate a key: {e}"))?;
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    let b64 = B64.encode(pkcs8.as_ref());
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .with_context(|| format!("cannot create {}", file.display()))?;
    f.write_all(pem.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", file.display()))?;
    let key = SigningKey::load(file)?;
    Ok(key.public())
}

/// The fields of a `watch` payload that signing covers or adds.
#[derive(Deserialize)]
struct Envelope {
    targets: Vec<TargetSpec>,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    sequence: Option<u64>,
    #[serde(default)]
    signature: Option<String>,
}

/// The bytes a signature covers: context, sequence, version and every
/// target's host, each length-prefixed (no ambiguity, independent of JSON
/// spacing and key order).
fn signed_bytes(sequence: u64, version: Option<&str>, targets: &[TargetSpec]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + targets.len() * 24);
    out.extend_from_slice(CONTEXT);
    out.extend_from_slice(&sequence.to_be_bytes());
    let mut field = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u64).to_be_bytes());
        out.extend_from_slice(b);
    };
    field(version.unwrap_or("").as_bytes());
    field(&(targets.len() as u64).to_be_bytes());
    for t in targets {
        field(t.host().as_bytes());
    }
    out
}

/// What a list is about, minus its sequence: equal content is the same list.
fn content_digest(version: Option<&str>, targets: &[TargetSpec]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, &signed_bytes(0, version, targets))
        .as_ref()
        .to_vec()
}

/// A strictly increasing sequence number: Unix time in milliseconds, or
/// one more than the last one handed out.
pub fn next_sequence() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev.saturating_add(1));
        match LAST.compare_exchange(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// Adds `sequence` and `signature` to a `watch` payload built by the
/// indexer. Every other field stays as it is.
pub fn sign(payload: &[u8], key: &SigningKey, sequence: u64) -> anyhow::Result<Vec<u8>> {
    let env: Envelope = serde_json::from_slice(payload)?;
    let mut doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(payload)?;
    let sig = key.pair.sign(&signed_bytes(
        sequence,
        env.version.as_deref(),
        &env.targets,
    ));
    doc.insert("sequence".into(), sequence.into());
    doc.insert(
        "signature".into(),
        format!("{PREFIX}{}", B64.encode(sig.as_ref())).into(),
    );
    Ok(serde_json::to_vec(&doc)?)
}

/// Why a list was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("watch payload of {0} bytes exceeds the {MAX_WATCH_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not a signed watch list: {0}")]
    Malformed(String),
    #[error("unsigned watch list")]
    Unsigned,
    #[error("signature made by none of the watch_keys (forged, or signed with another key)")]
    Forged,
    #[error("replayed or stale list: sequence {got} is older than the running list's {running}")]
    Replayed { got: u64, running: u64 },
}

/// The agent's side: trusted keys and the sequence of the running list.
#[derive(Debug, Default)]
pub struct Verifier {
    keys: Vec<PublicKey>,
    /// Sequence and content digest of the last accepted list.
    running: Option<(u64, Vec<u8>)>,
}

impl Verifier {
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Verifier {
            keys,
            running: None,
        }
    }

    /// True when lists must be signed.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The running list's sequence and content digest (hex), to keep
    /// across restarts.
    pub fn running(&self) -> Option<(u64, String)> {
        self.running.as_ref().map(|(seq, digest)| {
            (
                *seq,
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            )
        })
    }

    /// Restores what [`Verifier::running`] returned in an earlier run, so
    /// that an old signed list replayed after a restart is refused too.
    /// `None` for a digest that is not hex.
    pub fn restore(&mut self, sequence: u64, digest_hex: &str) -> Option<()> {
        if digest_hex.len() % 2 != 0 || digest_hex.len() > 128 {
            return None;
        }
        let digest = (0..digest_hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(digest_hex.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        self.running = Some((sequence, digest));
        Some(())
    }

    /// New trusted keys (reload); the running sequence stays.
    pub fn set_keys(&mut self, keys: Vec<PublicKey>) {
        self.keys = keys;
    }

    /// Checks a payload; on success it becomes the running list. Without
    /// keys every list passes.
    pub fn check(&mut self, payload: &[u8]) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        if payload.len() > MAX_WATCH_BYTES {
            return Err(Refusal::TooLarge(payload.len()));
        }
        let env: Envelope =
            serde_json::from_slice(payload).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let (Some(sequence), Some(signature)) = (env.sequence, env.signature.as_deref()) else {
            return Err(Refusal::Unsigned);
        };
        let sig = signature
            .strip_prefix(PREFIX)
            .and_then(|s| B64.decode(s).ok())
            .ok_or(Refusal::Forged)?;
        let msg = signed_bytes(sequence, env.version.as_deref(), &env.targets);
        if !self.keys.iter().any(|k| {
            UnparsedPublicKey::new(&ED25519, &k.0)
                .verify(&msg, &sig)
                .is_ok()
        }) {
            return Err(Refusal::Forged);
        }
        let digest = content_digest(env.version.as_deref(), &env.targets);
        if let Some((running, running_digest)) = &self.running {
            // The same list again (another indexer, a re-publish) is no
            // replay: it changes nothing.
            if sequence < *running && *running_digest != digest {
                return Err(Refusal::Replayed {
                    got: sequence,
                    running: *running,
                });
            }
            if sequence < *running {
                return Ok(());
            }
        }
        self.running = Some((sequence, digest));
        Ok(())
    }
}

/// `swarming-indexer --gen-watch-key FILE`: handled before the daemon's own
/// command line. Returns the exit code when the option was given.
pub fn gen_key_command(args: &[String]) -> Option<std::process::ExitCode> {
    let file = match args.get(1).map(String::as_str) {
        Some("--gen-watch-key") => args.get(2).cloned(),
        Some(a) if a.starts_with("--gen-watch-key=") => {
            a.split_once('=').map(|(_, f)| f.to_owned())
        }
        _ => return None,
    };
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        eprintln!("usage: swarming-indexer --gen-watch-key FILE");
        return Some(std::process::ExitCode::from(64));
    };
    match generate(Path::new(&file)) {
        Ok(public) => {
            eprintln!(
                "private key written to {file} (mode 0600); name it with `watch_key: {file}` in indexer.yaml"
            );
            eprintln!("agents trust it with `watch_keys: [\"{public}\"]` in agent.yaml:");
            println!("{public}");
            Some(std::process::ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("swarming-indexer: {e:#}");
            Some(std::process::ExitCode::from(1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(dir: &tempfile::TempDir, name: &str) -> (SigningKey, PublicKey) {
        let f = dir.path().join(name);
        let public = generate(&f).unwrap();
        (SigningKey::load(&f).unwrap(), public)
    }

    fn list(targets: &[&str], version: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"targets": targets, "version": version})).unwrap()
    }

    #[test]
    fn key_file_is_private_and_the_public_key_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (k, public) = key(&dir, "watch.key");
        assert_eq!(k.public(), public);
        let mode = std::fs::metadata(dir.path().join("watch.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert!(
            generate(&dir.path().join("watch.key")).is_err(),
            "overwrote"
        );
        for bad in [
            "",
            "ed25519:",
            "ed25519:AAAA",
            "rsa:abc",
            &public.to_string()[8..],
        ] {
            assert!(bad.parse::<PublicKey>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn signed_lists_pass_forged_unsigned_and_replayed_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let (k, public) = key(&dir, "a.key");
        let (other, _) = key(&dir, "b.key");
        let mut v = Verifier::new(vec![public]);
        let old = sign(&list(&["127.0.0.1"], "v1"), &k, 10).unwrap();
        let new = sign(&list(&["127.0.0.2"], "v2"), &k, 20).unwrap();
        assert_eq!(v.check(&list(&["127.0.0.3"], "x")), Err(Refusal::Unsigned));
        assert_eq!(
            v.check(&sign(&list(&["127.0.0.3"], "x"), &other, 30).unwrap()),
            Err(Refusal::Forged)
        );
        assert_eq!(v.check(&old), Ok(()));
        assert_eq!(v.check(&new), Ok(()));
        assert_eq!(
            v.check(&old),
            Err(Refusal::Replayed {
                got: 10,
                running: 20
            })
        );
        // The running list again, or the same content with an older
        // sequence (another indexer): accepted, nothing changes.
        assert_eq!(v.check(&new), Ok(()));
        assert_eq!(
            v.check(&sign(&list(&["127.0.0.2"], "v2"), &k, 15).unwrap()),
            Ok(())
        );
        // A target added to a signed list breaks the signature.
        let mut doc: serde_json::Value = serde_json::from_slice(&new).unwrap();
        doc["targets"]
            .as_array_mut()
            .unwrap()
            .push("192.0.2.1".into());
        assert_eq!(
            v.check(&serde_json::to_vec(&doc).unwrap()),
            Err(Refusal::Forged)
        );
        // So does a higher sequence pasted onto an old list.
        let mut doc: serde_json::Value = serde_json::from_slice(&old).unwrap();
        doc["sequence"] = 99.into();
        assert_eq!(
            v.check(&serde_json::to_vec(&doc).unwrap()),
            Err(Refusal::Forged)
        );
        assert!(matches!(v.check(b"{not json"), Err(Refusal::Malformed(_))));
        assert!(matches!(
            v.check(b"127.0.0.1\n"),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            v.check(&vec![b' '; MAX_WATCH_BYTES + 1]),
            Err(Refusal::TooLarge(_))
        ));
    }

    #[test]
    fn without_keys_everything_passes_and_old_parsers_read_signed_lists() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _) = key(&dir, "a.key");
        let signed = sign(&list(&["127.0.0.1"], "v1"), &k, next_sequence()).unwrap();
        assert_eq!(Verifier::default().check(b"anything"), Ok(()));
        let parsed = crate::protocol::WatchList::parse(&signed).unwrap();
        assert_eq!(parsed.targets.len(), 1);
        assert!(next_sequence() < next_sequence());
    }

    #[test]
    fn the_running_sequence_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let public = generate(&dir.path().join("k")).unwrap();
        let k = SigningKey::load(&dir.path().join("k")).unwrap();
        let mut v = Verifier::new(vec![public.clone()]);
        let old = sign(&list(&["127.0.0.1"], "v1"), &k, 10).unwrap();
        let new = sign(&list(&["127.0.0.2"], "v2"), &k, 20).unwrap();
        v.check(&new).unwrap();
        let (seq, digest) = v.running().unwrap();
        let mut after = Verifier::new(vec![public]);
        after.restore(seq, &digest).unwrap();
        assert!(matches!(after.check(&old), Err(Refusal::Replayed { .. })));
        // The same list again is no replay.
        assert!(after.check(&new).is_ok());
        assert!(after.restore(1, "zz").is_none());
    }

    #[test]
    fn openssl_made_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.pem");
        // .ci/run installs openssl.
        let ok = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&f)
            .status()
            .expect("openssl")
            .success();
        assert!(ok);
        SigningKey::load(&f).unwrap();
    }
}

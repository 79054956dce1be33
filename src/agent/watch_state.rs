//! The running signed list's sequence, kept across restarts in
//! `<state_dir>/watch-sequence`, so that an old signed list replayed after
//! a restart is refused like one replayed while running.
//!
//! The file is one line, `<sequence> <content digest, hex>`. It is written
//! (whole, then renamed over the old one) on the blocking pool, never on
//! the runtime. A missing or unreadable file means no earlier list: the
//! agent says so once and accepts the next signed list, as before.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The file's name in the state directory.
pub const FILE: &str = "watch-sequence";

/// Where the sequence of `state_dir` is kept.
pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE)
}

/// Reads a kept sequence: `None` when absent or not of this format
/// (logged: the replay check then starts from the next list).
pub fn load(file: &Path) -> Option<(u64, String)> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %file.display(), error = %e, "cannot read the kept watch sequence: a replayed old list would be accepted until the next signed list");
            return None;
        }
    };
    let mut parts = text.split_ascii_whitespace();
    let parsed = (|| {
        let seq = parts.next()?.parse::<u64>().ok()?;
        let digest = parts.next()?;
        let hex = digest.len() <= 128 && digest.bytes().all(|b| b.is_ascii_hexdigit());
        (hex && parts.next().is_none()).then(|| (seq, digest.to_owned()))
    })();
    if parsed.is_none() {
        tracing::warn!(path = %file.display(), "the kept watch sequence is not readable: ignored");
    }
    parsed
}

/// Keeps `sequence` and `digest` in `file`, off the runtime when there is
/// one. A failure is logged and sets `unsaved` (shown in `STATUS=`) until a
/// later write succeeds: the agent goes on, only the protection across
/// restarts is lost.
pub fn save(file: PathBuf, sequence: u64, digest: String, unsaved: Arc<AtomicBool>) {
    let write = move || {
        let tmp = file.with_extension("tmp");
        let done = std::fs::write(&tmp, format!("{sequence} {digest}\n"))
            .and_then(|()| std::fs::rename(&tmp, &file));
        if let Err(e) = &done {
            tracing::warn!(path = %file.display(), error = %e, "cannot keep the watch sequence: after a restart, a replayed old signed list would be accepted until the next one");
        }
        unsaved.store(done.is_err(), Ordering::Relaxed);
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(write);
        }
        Err(_) => write(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_sequence_reads_back_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let f = path(dir.path());
        assert_eq!(load(&f), None);
        let unsaved = Arc::new(AtomicBool::new(false));
        save(f.clone(), 42, "00ff".into(), unsaved.clone());
        assert_eq!(load(&f), Some((42, "00ff".into())));
        assert!(!unsaved.load(Ordering::Relaxed));
        for bad in ["", "x 00", "1 zz", "1 00 extra", "18446744073709551616 00"] {
            std::fs::write(&f, bad).unwrap();
            assert_eq!(load(&f), None, "{bad:?}");
        }
    }

    #[test]
    fn a_failed_write_is_flagged_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let f = path(dir.path());
        // A non-empty directory in the file's place: the rename fails,
        // for root too.
        std::fs::create_dir_all(f.join("x")).unwrap();
        let unsaved = Arc::new(AtomicBool::new(false));
        save(f.clone(), 7, "aa".into(), unsaved.clone());
        assert!(unsaved.load(Ordering::Relaxed));
        std::fs::remove_dir_all(&f).unwrap();
        save(f.clone(), 8, "bb".into(), unsaved.clone());
        assert!(!unsaved.load(Ordering::Relaxed));
        assert_eq!(load(&f), Some((8, "bb".into())));
    }
}

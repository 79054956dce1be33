//! The dead-letter file: documents refused for good, kept for a human.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::json;

use super::*;

/// Appends refused documents to an NDJSON file, one line each:
/// `{"time", "reason", "status", "id", "document"}`.
#[derive(Debug)]
pub struct DeadLetter {
    path: PathBuf,
    file: File,
    count: u64,
}

impl DeadLetter {
    /// Opens (creating it if needed) `path` for appending.
    pub fn open(path: impl Into<PathBuf>) -> std::io::Result<DeadLetter> {
        let path = path.into();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(DeadLetter {
            path,
            file,
            count: 0,
        })
    }

    /// Opens `<state_dir>/dead-letter.ndjson`.
    pub fn in_state_dir(state_dir: &Path) -> std::io::Result<DeadLetter> {
        DeadLetter::open(state_dir.join(DEAD_LETTER_FILE))
    }

    /// Appends one refused document.
    pub fn write(&mut self, doc: &BulkDoc, status: u16, reason: &str) -> std::io::Result<()> {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        // `doc.source` is compact JSON by construction; the rest is escaped.
        let line = format!(
            "{{\"time\":{},\"reason\":{},\"status\":{},\"id\":{},\"document\":{}}}\n",
            json!(time),
            json!(reason),
            status,
            json!(doc.id()),
            doc.source()
        );
        self.file.write_all(line.as_bytes())?;
        self.file.flush()?;
        self.count += 1;
        Ok(())
    }

    /// Documents written through this handle.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

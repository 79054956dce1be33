//! The indexer's optional file output: documents as NDJSON (one JSON object
//! per line) in `path`, rotated to `path.1`, `path.2`, ... when it reaches its
//! size limit.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use crate::config::FileSettings;

/// Errors of the file output.
#[derive(Debug, thiserror::Error)]
pub enum FileOutputError {
    #[error("{path}: cannot {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FileOutputError + 'a {
    move |source| FileOutputError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// An NDJSON file that rotates by size.
#[derive(Debug)]
pub struct FileOutput {
    path: PathBuf,
    /// Size at which the file is rotated, in bytes.
    max_bytes: u64,
    /// Rotated files kept (`path.1` newest ... `path.<keep>` oldest).
    keep: u32,
    file: File,
    /// Size of `path` up to its last whole line, in bytes.
    size: u64,
    /// A failed write left bytes past `size` that could not be cut yet.
    torn: bool,
}

impl FileOutput {
    /// Opens `settings.path` for appending (creating it and its parent
    /// directories if needed); an existing file's size counts toward
    /// rotation.
    pub fn open(settings: &FileSettings) -> Result<FileOutput, FileOutputError> {
        let path = settings.path.clone();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err("create directory", parent))?;
        }
        let file = open_append(&path)?;
        sync_parent(&path)?;
        let size = file.metadata().map_err(io_err("stat", &path))?.len();
        debug!(path = %path.display(), size, "file output opened");
        Ok(FileOutput {
            path,
            max_bytes: settings.max_bytes,
            keep: settings.keep,
            file,
            size,
            torn: false,
        })
    }

    /// Path of the current file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current size of the file, in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends each of `lines` (one compact JSON document each, without its
    /// newline; a raw newline inside is replaced by a space, with a warning)
    /// followed by `\n`, rotating first whenever the next line would
    /// take a non-empty file past `max_bytes` (a single longer line gets a
    /// file of its own). Not durable until [`FileOutput::sync`].
    pub fn write<L: AsRef<[u8]>>(&mut self, lines: &[L]) -> Result<(), FileOutputError> {
        let mut buf = Vec::new();
        for line in lines {
            let line = line.as_ref();
            let len = line.len() as u64 + 1;
            let filled = self.size + buf.len() as u64;
            if filled > 0 && filled + len > self.max_bytes {
                self.write_buf(&mut buf)?;
                self.rotate()?;
            }
            let start = buf.len();
            buf.extend_from_slice(line);
            // Why a space is safe: in valid JSON a raw newline can only be
            // whitespace between tokens (strings must escape it), and one
            // would split the document across NDJSON lines.
            let mut replaced = false;
            for b in &mut buf[start..] {
                if *b == b'\n' {
                    *b = b' ';
                    replaced = true;
                }
            }
            if replaced {
                warn!(path = %self.path.display(), "raw newline in a document replaced by a space");
            }
            buf.push(b'\n');
        }
        self.write_buf(&mut buf)
    }

    /// Flushes written lines to disk (fdatasync), before they are
    /// acknowledged upstream.
    pub fn sync(&mut self) -> Result<(), FileOutputError> {
        self.file.sync_data().map_err(io_err("sync", &self.path))
    }

    /// Cuts a torn tail left by a failed write and a failed cut.
    fn mend(&mut self) -> Result<(), FileOutputError> {
        if self.torn {
            self.file
                .set_len(self.size)
                .map_err(io_err("truncate", &self.path))?;
            self.torn = false;
        }
        Ok(())
    }

    fn write_buf(&mut self, buf: &mut Vec<u8>) -> Result<(), FileOutputError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.mend()?;
        if let Err(e) = self.file.write_all(buf) {
            // Part of the buffer may have landed: cut it off, so the next
            // write does not continue a torn line. If even that fails, the
            // next write starts by cutting again (see `mend`).
            if self.file.set_len(self.size).is_err() {
                self.torn = true;
            }
            return Err(io_err("write", &self.path)(e));
        }
        self.size += buf.len() as u64;
        buf.clear();
        Ok(())
    }

    /// Shifts `path` -> `path.1` -> ... -> `path.<keep>`, deleting the
    /// oldest, and starts an empty `path`.
    fn rotate(&mut self) -> Result<(), FileOutputError> {
        // Why sync first: the caller's next sync() only covers the new file,
        // and the lines in the old one may be acknowledged with it.
        self.sync()?;
        // Files past `keep` (left by a larger `keep` before) go too.
        let mut extra = self.keep.saturating_add(1);
        loop {
            let old = numbered(&self.path, extra);
            match fs::remove_file(&old) {
                Ok(()) => extra = extra.saturating_add(1),
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) => return Err(io_err("delete", &old)(e)),
            }
        }
        if self.keep == 0 {
            self.file
                .set_len(0)
                .map_err(io_err("truncate", &self.path))?;
        } else {
            for i in (1..self.keep).rev() {
                let from = numbered(&self.path, i);
                let to = numbered(&self.path, i + 1);
                match fs::rename(&from, &to) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(io_err("rename", &from)(e));
                    }
                    _ => {}
                }
            }
            let first = numbered(&self.path, 1);
            fs::rename(&self.path, &first).map_err(io_err("rename", &self.path))?;
            self.file = open_append(&self.path)?;
            // Why: lines synced into the new file are only found after a
            // crash if its directory entry is durable too.
            sync_parent(&self.path)?;
        }
        self.size = 0;
        debug!(path = %self.path.display(), keep = self.keep, "file output rotated");
        Ok(())
    }
}

/// `path` with `.n` appended to its file name.
fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Makes the directory entries of `path`'s parent durable.
fn sync_parent(path: &Path) -> Result<(), FileOutputError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", parent))
}

fn open_append(path: &Path) -> Result<File, FileOutputError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err("open", path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, max_bytes: u64, keep: u32) -> FileSettings {
        FileSettings {
            path: dir.join("out/results.ndjson"),
            max_bytes,
            keep,
        }
    }

    /// A 21-byte JSON document (22 bytes with its newline).
    fn doc(i: usize) -> String {
        format!("{{\"id\":\"doc-{i:08}\"}}")
    }

    fn lines_of(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn lines_are_written_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 2);
        let mut out = FileOutput::open(&s).unwrap();
        let docs: Vec<String> = (0..5).map(doc).collect();
        out.write(&docs[..2]).unwrap();
        out.write(&docs[2..]).unwrap();
        out.sync().unwrap();
        assert_eq!(out.size(), 5 * 22);
        assert_eq!(lines_of(&s.path), docs);
        for line in lines_of(&s.path) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(v["id"].is_string());
        }
    }

    #[test]
    fn rotates_at_size_and_keeps_count() {
        let dir = tempfile::tempdir().unwrap();
        // Four 22-byte lines per file.
        let s = settings(dir.path(), 90, 2);
        let mut out = FileOutput::open(&s).unwrap();
        let docs: Vec<String> = (0..18).map(doc).collect();
        out.write(&docs).unwrap();
        // 18 lines: 4 + 4 + 4 + 4 + 2; the first two files are gone.
        assert_eq!(lines_of(&s.path), docs[16..].to_vec());
        assert_eq!(lines_of(&numbered(&s.path, 1)), docs[12..16].to_vec());
        assert_eq!(lines_of(&numbered(&s.path, 2)), docs[8..12].to_vec());
        assert!(!numbered(&s.path, 3).exists());
        for i in 0..=2 {
            let p = if i == 0 {
                s.path.clone()
            } else {
                numbered(&s.path, i)
            };
            assert!(fs::metadata(p).unwrap().len() <= 90);
        }
    }

    #[test]
    fn a_line_over_the_limit_gets_its_own_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 30, 3);
        let mut out = FileOutput::open(&s).unwrap();
        let big = format!("{{\"id\":\"{}\"}}", "x".repeat(50));
        out.write(&[doc(0), big.clone(), doc(1)]).unwrap();
        assert_eq!(lines_of(&s.path), vec![doc(1)]);
        assert_eq!(lines_of(&numbered(&s.path, 1)), vec![big]);
        assert_eq!(lines_of(&numbered(&s.path, 2)), vec![doc(0)]);
    }

    #[test]
    fn restart_appends_and_counts_existing_size() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 90, 1);
        {
            let mut out = FileOutput::open(&s).unwrap();
            out.write(&[doc(0), doc(1), doc(2)]).unwrap();
            out.sync().unwrap();
        }
        let mut out = FileOutput::open(&s).unwrap();
        assert_eq!(out.size(), 66);
        out.write(&[doc(3)]).unwrap();
        assert_eq!(lines_of(&s.path), (0..4).map(doc).collect::<Vec<_>>());
        // The file is full: the next line rotates.
        out.write(&[doc(4)]).unwrap();
        assert_eq!(lines_of(&s.path), vec![doc(4)]);
        assert_eq!(
            lines_of(&numbered(&s.path, 1)),
            (0..4).map(doc).collect::<Vec<_>>()
        );
    }

    #[test]
    fn keep_zero_truncates_without_keeping() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 90, 0);
        let mut out = FileOutput::open(&s).unwrap();
        let docs: Vec<String> = (0..10).map(doc).collect();
        out.write(&docs).unwrap();
        assert_eq!(lines_of(&s.path), docs[8..].to_vec());
        assert!(!numbered(&s.path, 1).exists());
        out.write(&[doc(10)]).unwrap();
        out.sync().unwrap();
        assert_eq!(lines_of(&s.path), vec![doc(8), doc(9), doc(10)]);
    }

    #[test]
    fn lowering_keep_removes_older_files_at_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let docs: Vec<String> = (0..20).map(doc).collect();
        {
            let mut out = FileOutput::open(&settings(dir.path(), 90, 4)).unwrap();
            out.write(&docs).unwrap();
        }
        let s = settings(dir.path(), 90, 1);
        assert!(numbered(&s.path, 4).exists());
        let mut out = FileOutput::open(&s).unwrap();
        out.write(&docs).unwrap();
        for i in 2..=4 {
            assert!(!numbered(&s.path, i).exists(), "{i}");
        }
        assert!(numbered(&s.path, 1).exists());
    }

    #[test]
    fn raw_newline_becomes_a_space() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), 1 << 20, 1);
        let mut out = FileOutput::open(&s).unwrap();
        out.write(&["{\"a\":\n1}"]).unwrap();
        assert_eq!(lines_of(&s.path), vec!["{\"a\": 1}".to_owned()]);
    }
}

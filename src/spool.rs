//! Durable on-disk FIFO of opaque byte records.
//!
//! The indexer appends each result document here before acknowledging it to
//! its MQTT broker, and commits it only once Elasticsearch has stored it, so a
//! crash or an outage loses nothing that was acknowledged (at-least-once:
//! records read but not committed before a crash are delivered again, and
//! downstream de-duplicates by document id).
//!
//! On disk, `dir` holds:
//! - segment files `spool-<16-digit seq>.log`, each a run of frames
//!   `[len u32 LE][crc32 u32 LE][len bytes]`, where the crc covers the length
//!   field and the payload;
//! - `head`: the consumer's position `[segment seq u64 LE][byte offset u64 LE]
//!   [crc32 u32 LE]`, replaced atomically on every commit.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tracing::{debug, warn};

/// Bytes of framing before each record: length and crc32.
const FRAME_HEADER: u64 = 8;
/// Upper bound of a segment's size, in bytes.
const MAX_SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Lower bound of a segment's size, in bytes.
const MIN_SEGMENT_BYTES: u64 = 64 * 1024;
/// Smallest accepted disk budget, in bytes: room for four minimal segments.
pub const MIN_SPOOL_BYTES: u64 = 4 * MIN_SEGMENT_BYTES;
const HEAD_FILE: &str = "head";
const HEAD_TMP: &str = "head.tmp";
/// Size of the head file, in bytes.
const HEAD_LEN: usize = 20;
const SEGMENT_PREFIX: &str = "spool-";
const SEGMENT_SUFFIX: &str = ".log";

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("{path}: cannot {op}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool budget of {max_bytes} bytes is below the minimum of {MIN_SPOOL_BYTES} bytes")]
    BudgetTooSmall { max_bytes: u64 },
    #[error(
        "record {index} of the batch is {len} bytes, over the {limit}-byte limit \
         (a quarter of the spool budget); nothing of the batch was written"
    )]
    RecordTooLarge {
        index: usize,
        len: usize,
        limit: u64,
    },
    #[error("commit position {0:?} is not in the spool")]
    InvalidPosition(Position),
    #[error("spool lock poisoned by a panicked thread")]
    Poisoned,
    #[error("spool worker task failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
}

/// Builds a closure mapping an `io::Error` to [`SpoolError::Io`].
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a record ends in the spool; obtained from [`Spool::read`] and handed
/// back to [`Spool::commit`]. Positions order like the records they follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// Sequence number of the segment.
    seg: u64,
    /// Byte offset just past the record within the segment.
    end: u64,
    /// Number of records in the segment up to and including this one.
    n: u64,
}

impl Position {
    fn start(seg: u64) -> Self {
        Position { seg, end: 0, n: 0 }
    }
}

/// A snapshot of the spool's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpoolStats {
    /// Records appended and not yet committed.
    pub pending: u64,
    /// Bytes in segment files on disk.
    pub bytes: u64,
    /// Records dropped unread because the budget was exceeded, since open.
    pub dropped: u64,
    /// Torn or corrupt regions cut off (at open or while reading), since open.
    pub corrupt: u64,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    seq: u64,
    /// Bytes of valid frames at the start of the file.
    len: u64,
    /// Bytes the file takes on disk (more than `len` only after damage).
    disk: u64,
    /// Number of valid frames.
    records: u64,
}

impl Segment {
    fn empty(seq: u64) -> Self {
        Segment {
            seq,
            len: 0,
            disk: 0,
            records: 0,
        }
    }
}

/// The durable FIFO. Not thread-safe by itself: see [`SharedSpool`].
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    /// Oldest first; never empty; the last one is appended to.
    segments: VecDeque<Segment>,
    /// Append handle on the last segment.
    writer: File,
    /// The last segment may hold bytes past `len` (failed write, damage
    /// found while reading): the next append must start a new segment.
    writer_sealed: bool,
    /// The last append failed (typically a full disk): a commit that
    /// consumes the whole last segment then replaces it with an empty one,
    /// so its space comes back.
    write_failed: bool,
    /// The consumer's position; always inside the first segment.
    head: Position,
    dropped: u64,
    corrupt: u64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` with a disk budget of
    /// `max_bytes` bytes (at least [`MIN_SPOOL_BYTES`]), recovering after a
    /// crash: torn or corrupt tails of segments are cut off with a warning and
    /// counted in [`Spool::corrupt`], and reading resumes at the last
    /// committed position.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Spool, SpoolError> {
        if max_bytes < MIN_SPOOL_BYTES {
            return Err(SpoolError::BudgetTooSmall { max_bytes });
        }
        fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
        let segment_bytes = (max_bytes / 4).clamp(MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES);
        let mut corrupt = 0;

        let tmp = dir.join(HEAD_TMP);
        remove_if_exists(&tmp)?;
        let stored_head = match read_head(&dir.join(HEAD_FILE))? {
            HeadFile::Missing => None,
            HeadFile::Valid { seg, end } => Some((seg, end)),
            HeadFile::Corrupt => {
                // Why start over rather than fail: redelivery is harmless
                // (downstream de-duplicates), a stuck indexer is not.
                warn!(dir = %dir.display(), "spool head file corrupt: redelivering from the oldest record");
                corrupt += 1;
                None
            }
        };

        let seqs = list_segments(dir)?;
        let mut salvaged: Vec<Vec<u8>> = Vec::new();
        let mut next_seq = seqs.last().map_or(1, |s| s + 1);
        let mut segments = VecDeque::new();
        let mut head = None;
        let mut moved_head = false;
        for seq in seqs {
            let path = segment_path(dir, seq);
            if let Some((hseg, _)) = stored_head {
                if seq < hseg {
                    // Consumed; its deletion did not survive a crash.
                    remove_if_exists(&path)?;
                    continue;
                }
            }
            let stop = match stored_head {
                Some((hseg, hend)) if hseg == seq => hend,
                _ => 0,
            };
            let scan = scan_segment(&path, stop)?;
            if let Some(why) = scan.damage {
                // Acknowledged records may follow one bad frame: keep every
                // valid frame found past it (moved to a new segment).
                let found = salvage(&path, scan.len)?;
                warn!(
                    segment = %path.display(),
                    kept_bytes = scan.len,
                    cut_bytes = scan.disk - scan.len,
                    salvaged_records = found.len(),
                    "spool segment has a {why}: cutting it off"
                );
                corrupt += 1;
                truncate(&path, scan.len)?;
                salvaged.extend(found);
            }
            if let Some((hseg, hend)) = stored_head {
                if hseg == seq {
                    if scan.boundary.0 != hend {
                        warn!(segment = %path.display(), stored = hend, used = scan.boundary.0,
                            "spool head is not on a record boundary: moved back to one");
                        moved_head = true;
                    }
                    head = Some(Position {
                        seg: seq,
                        end: scan.boundary.0,
                        n: scan.boundary.1,
                    });
                }
            }
            segments.push_back(Segment {
                seq,
                len: scan.len,
                disk: scan.len,
                records: scan.records,
            });
        }
        if let Some((hseg, _)) = stored_head {
            // Never reuse the sequence number the head file names: its
            // offset would skip records of the new segment.
            next_seq = next_seq.max(hseg + 1);
        }

        if !salvaged.is_empty() {
            let mut file = create_segment(dir, next_seq)?;
            let mut buf = Vec::new();
            for r in &salvaged {
                push_frame(&mut buf, r);
            }
            let path = segment_path(dir, next_seq);
            file.write_all(&buf)
                .and_then(|()| file.sync_data())
                .map_err(io_err("write segment", &path))?;
            segments.push_back(Segment {
                seq: next_seq,
                len: buf.len() as u64,
                disk: buf.len() as u64,
                records: salvaged.len() as u64,
            });
            next_seq += 1;
        }
        let writer = match segments.back() {
            Some(last) => {
                let path = segment_path(dir, last.seq);
                OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err("open segment", &path))?
            }
            None => {
                let file = create_segment(dir, next_seq)?;
                segments.push_back(Segment::empty(next_seq));
                file
            }
        };
        let front = segments.front().map_or(next_seq, |s| s.seq);
        // Without a head inside the first segment, its segment was dropped
        // for the budget (or the head file is missing): start at the oldest.
        let head = head
            .filter(|h| h.seg == front)
            .unwrap_or(Position::start(front));

        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_bytes,
            segments,
            writer,
            writer_sealed: false,
            write_failed: false,
            head,
            dropped: 0,
            corrupt,
        };
        if moved_head {
            // Why persist now: records appended after the cut would
            // otherwise sit below the stale offset and be skipped after
            // another restart.
            write_head(&spool.dir, spool.head)?;
        }
        spool.collect_consumed();
        debug!(dir = %dir.display(), pending = spool.len(), bytes = spool.bytes(),
            segments = spool.segments.len(), "spool opened");
        Ok(spool)
    }

    /// Largest record accepted by [`Spool::append`], in bytes: a quarter of
    /// the budget.
    pub fn max_record_bytes(&self) -> u64 {
        (self.max_bytes / 4).min(u64::from(u32::MAX))
    }

    /// Appends `records` and flushes them to disk (one fdatasync per segment
    /// touched) before returning. A record over [`Spool::max_record_bytes`]
    /// fails the whole batch before anything is written. On an I/O error part
    /// of the batch may be durable: retrying it may duplicate records.
    /// If the budget is then exceeded, the oldest segments are dropped.
    pub fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<(), SpoolError> {
        let limit = self.max_record_bytes();
        for (index, record) in records.iter().enumerate() {
            let len = record.as_ref().len();
            if len as u64 > limit {
                return Err(SpoolError::RecordTooLarge { index, len, limit });
            }
        }
        let mut buf = Vec::new();
        let mut buffered = 0u64;
        for record in records {
            let record = record.as_ref();
            let frame = FRAME_HEADER + record.len() as u64;
            let filled = self.last().len + buf.len() as u64;
            if self.writer_sealed || (filled > 0 && filled + frame > self.segment_bytes) {
                self.flush(&mut buf, &mut buffered)?;
                self.rotate()?;
            }
            push_frame(&mut buf, record);
            buffered += 1;
        }
        self.flush(&mut buf, &mut buffered)?;
        self.enforce_budget();
        Ok(())
    }

    /// Returns up to `max_records` (at least 1) of the oldest uncommitted
    /// records, stopping before `max_bytes` bytes of payload would be passed
    /// (but always returning at least one record if any is pending). Nothing
    /// is consumed: the same records come back until committed.
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Position, Vec<u8>)>, SpoolError> {
        let max_records = max_records.max(1);
        let mut out: Vec<(Position, Vec<u8>)> = Vec::new();
        let mut total = 0usize;
        let mut idx = 0;
        let mut pos = self.head;
        'segments: while idx < self.segments.len() && out.len() < max_records {
            let seg = self.segments[idx];
            if pos.end < seg.len {
                let path = segment_path(&self.dir, seg.seq);
                let mut reader = open_at(&path, pos.end)?;
                while pos.end < seg.len && out.len() < max_records {
                    let mut header = [0u8; FRAME_HEADER as usize];
                    let frame = read_frame(&mut reader, &mut header, seg.len - pos.end, |len| {
                        !out.is_empty() && total.saturating_add(len) > max_bytes
                    });
                    match frame.map_err(io_err("read segment", &path))? {
                        Frame::Record(payload) => {
                            total += payload.len();
                            pos.end += FRAME_HEADER + payload.len() as u64;
                            pos.n += 1;
                            out.push((pos, payload));
                        }
                        Frame::Stop => break 'segments,
                        Frame::Damaged(why) => {
                            // Acknowledged records may follow the bad
                            // frame: move every valid one found past it to
                            // the end of the spool, then forget the rest.
                            let found = salvage(&path, pos.end).unwrap_or_default();
                            self.lose_tail(idx, pos, why);
                            if !found.is_empty() {
                                match self.append(&found) {
                                    Ok(()) => warn!(records = found.len(),
                                        "records found past the damage kept at the end of the spool"),
                                    Err(e) => warn!(records = found.len(), error = %e,
                                        "records found past the damage could not be kept"),
                                }
                            }
                            break;
                        }
                    }
                }
            }
            if pos.end >= self.segments[idx].len {
                idx += 1;
                if let Some(next) = self.segments.get(idx) {
                    pos = Position::start(next.seq);
                }
            }
        }
        Ok(out)
    }

    /// Marks every record up to and including `upto` as done, persists the
    /// position durably and deletes fully consumed segments. Committing a
    /// position already passed (or dropped for the budget) does nothing.
    pub fn commit(&mut self, upto: Position) -> Result<(), SpoolError> {
        if upto <= self.head {
            return Ok(());
        }
        let valid = self
            .segments
            .iter()
            .any(|s| s.seq == upto.seg && upto.end <= s.len && upto.n <= s.records);
        if !valid {
            return Err(SpoolError::InvalidPosition(upto));
        }
        // Why persist before deleting: a crash in between then only leaves
        // consumed segments behind, which open() removes, never a head that
        // falls back to an older position.
        let persisted = write_head(&self.dir, upto);
        // On a failure (typically a full disk) the segments are deleted
        // all the same, to free space: a crash before the next successful
        // commit then finds the stored head's segment gone and starts at
        // the oldest remaining one, which only delivers again records that
        // were already stored (their ids make that harmless). The position
        // advances in memory either way: the caller is told, but never sent
        // round the same batch again.
        while let Some(seg) = self.segments.front().filter(|s| s.seq < upto.seg) {
            if let Err(e) = remove_if_exists(&segment_path(&self.dir, seg.seq)) {
                // Left on disk, and open() removes it as consumed.
                warn!(error = %e, "cannot delete consumed spool segment");
            }
            self.segments.pop_front();
        }
        self.head = upto;
        self.collect_consumed();
        let last = self.last();
        if self.write_failed && self.segments.len() == 1 && self.head.end >= last.len {
            // Everything is consumed but the last segment keeps its bytes:
            // start an empty one (a new file needs no data blocks) and
            // delete the old.
            match self.rotate() {
                Ok(()) => self.write_failed = false,
                Err(e) => warn!(error = %e, "cannot start a new spool segment to free space"),
            }
        }
        match persisted {
            Ok(()) => Ok(()),
            // Space may have been freed just now.
            Err(_) => write_head(&self.dir, upto),
        }
    }

    /// Number of records appended and not yet committed.
    pub fn len(&self) -> u64 {
        let total: u64 = self.segments.iter().map(|s| s.records).sum();
        total - self.head.n
    }

    /// Whether no record is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes taken by segment files on disk, committed records included
    /// until their segment is deleted.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.disk).sum()
    }

    /// Records dropped unread since open because the budget was exceeded.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Torn or corrupt regions cut off since open (each may have held any
    /// number of records), plus a corrupt head file.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// All counters at once.
    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            pending: self.len(),
            bytes: self.bytes(),
            dropped: self.dropped,
            corrupt: self.corrupt,
        }
    }

    fn last(&self) -> Segment {
        // The deque is never empty; the default only satisfies the types.
        self.segments
            .back()
            .copied()
            .unwrap_or(Segment::empty(self.head.seg))
    }

    /// Writes `buf` to the last segment and fdatasyncs it.
    fn flush(&mut self, buf: &mut Vec<u8>, buffered: &mut u64) -> Result<(), SpoolError> {
        if buf.is_empty() {
            return Ok(());
        }
        let last = self.last();
        let path = segment_path(&self.dir, last.seq);
        let written = self
            .writer
            .write_all(buf)
            .and_then(|()| self.writer.sync_data());
        if let Err(e) = written {
            self.write_failed = true;
            // The file may now hold part of the batch past `len`: cut it
            // back. Why seal when that fails: appending after the partial
            // batch would misplace positions (a new segment is started).
            // When the cut works, the segment stays usable, so a full disk
            // does not leave one empty segment per retry.
            let disk = match self.writer.set_len(last.len) {
                Ok(()) => last.len,
                Err(_) => {
                    self.writer_sealed = true;
                    self.writer
                        .metadata()
                        .map_or(last.len + buf.len() as u64, |m| m.len())
                }
            };
            if let Some(seg) = self.segments.back_mut() {
                seg.disk = disk;
            }
            return Err(io_err("write segment", &path)(e));
        }
        self.write_failed = false;
        if let Some(seg) = self.segments.back_mut() {
            seg.len += buf.len() as u64;
            seg.disk = seg.disk.max(seg.len);
            seg.records += *buffered;
        }
        buf.clear();
        *buffered = 0;
        Ok(())
    }

    /// Starts a new last segment.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        let seq = self.last().seq + 1;
        self.writer = create_segment(&self.dir, seq)?;
        self.writer_sealed = false;
        self.segments.push_back(Segment::empty(seq));
        self.collect_consumed();
        Ok(())
    }

    /// Deletes leading segments that are fully consumed, except the last.
    fn collect_consumed(&mut self) {
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front().copied() else {
                break;
            };
            if self.head.end < front.len {
                break;
            }
            if let Err(e) = remove_if_exists(&segment_path(&self.dir, front.seq)) {
                warn!(error = %e, "cannot delete consumed spool segment; will retry");
                break;
            }
            self.segments.pop_front();
            if let Some(next) = self.segments.front() {
                self.head = Position::start(next.seq);
            }
        }
    }

    /// Drops the oldest segments while the budget is exceeded.
    fn enforce_budget(&mut self) {
        let mut dropped = 0u64;
        while self.segments.len() > 1 && self.bytes() > self.max_bytes {
            let Some(front) = self.segments.front().copied() else {
                break;
            };
            if let Err(e) = remove_if_exists(&segment_path(&self.dir, front.seq)) {
                warn!(error = %e, "cannot delete spool segment to stay within budget");
                break;
            }
            dropped += front.records - self.head.n;
            self.segments.pop_front();
            if let Some(next) = self.segments.front() {
                // Not persisted: open() finds the head's segment gone and
                // starts at the oldest one, which is the same place.
                self.head = Position::start(next.seq);
            }
        }
        if dropped > 0 {
            self.dropped += dropped;
            warn!(
                dropped,
                max_bytes = self.max_bytes,
                "spool over budget: dropped the oldest records"
            );
        }
    }

    /// Forgets segment `idx` from `pos` on, after damage found while reading.
    fn lose_tail(&mut self, idx: usize, pos: Position, why: &str) {
        let is_last = idx + 1 == self.segments.len();
        if let Some(seg) = self.segments.get_mut(idx) {
            warn!(
                segment = %segment_path(&self.dir, seg.seq).display(),
                offset = pos.end,
                lost_records = seg.records - pos.n,
                "spool segment has a {why}: skipping the rest of it"
            );
            seg.len = pos.end;
            seg.records = pos.n;
        }
        self.corrupt += 1;
        if is_last {
            self.writer_sealed = true;
        }
    }
}

/// Appends one frame for `record` to `buf`.
fn push_frame(buf: &mut Vec<u8>, record: &[u8]) {
    // Lengths are bounded by max_record_bytes(), which fits in u32.
    let len = u32::try_from(record.len())
        .unwrap_or(u32::MAX)
        .to_le_bytes();
    buf.extend_from_slice(&len);
    buf.extend_from_slice(&frame_crc(len, record).to_le_bytes());
    buf.extend_from_slice(record);
}

/// The crc of a frame. Why it covers the length too: a zero-filled tail (a
/// crash after the file grew but before its data landed) would otherwise
/// pass as empty records with a crc of 0.
fn frame_crc(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(payload);
    hasher.finalize()
}

enum Frame {
    Record(Vec<u8>),
    /// The caller's predicate refused the next record (batch full).
    Stop,
    Damaged(&'static str),
}

/// Reads one frame from `reader`, with at most `room` bytes left in the
/// segment; `stop(len)` may refuse a record of `len` bytes before its payload
/// is read.
fn read_frame(
    reader: &mut impl Read,
    header: &mut [u8; FRAME_HEADER as usize],
    room: u64,
    stop: impl FnOnce(usize) -> bool,
) -> io::Result<Frame> {
    if room < FRAME_HEADER {
        return Ok(Frame::Damaged("torn frame header"));
    }
    if let Err(e) = reader.read_exact(header) {
        return eof_as_damage(e);
    }
    let len_bytes = [header[0], header[1], header[2], header[3]];
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    let len = u32::from_le_bytes(len_bytes);
    if u64::from(len) > room - FRAME_HEADER {
        return Ok(Frame::Damaged("frame running past the end"));
    }
    let len = len as usize;
    if stop(len) {
        return Ok(Frame::Stop);
    }
    let mut payload = vec![0u8; len];
    if let Err(e) = reader.read_exact(&mut payload) {
        return eof_as_damage(e);
    }
    if frame_crc(len_bytes, &payload) != crc {
        return Ok(Frame::Damaged("checksum mismatch"));
    }
    Ok(Frame::Record(payload))
}

/// A file shorter than expected is damage (it was cut behind our back), not
/// an I/O failure.
fn eof_as_damage(e: io::Error) -> io::Result<Frame> {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        Ok(Frame::Damaged("file shorter than expected"))
    } else {
        Err(e)
    }
}

struct Scan {
    /// Bytes of valid frames.
    len: u64,
    /// Bytes of the file.
    disk: u64,
    /// Valid frames.
    records: u64,
    /// (offset, records before it) of the last record boundary at or before
    /// the requested stop offset.
    boundary: (u64, u64),
    damage: Option<&'static str>,
}

/// Validates every frame of a segment.
fn scan_segment(path: &Path, stop: u64) -> Result<Scan, SpoolError> {
    let file = File::open(path).map_err(io_err("open segment", path))?;
    let disk = file.metadata().map_err(io_err("stat segment", path))?.len();
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut header = [0u8; FRAME_HEADER as usize];
    let mut scan = Scan {
        len: 0,
        disk,
        records: 0,
        boundary: (0, 0),
        damage: None,
    };
    while scan.len < disk {
        let frame = read_frame(&mut reader, &mut header, disk - scan.len, |_| false);
        match frame.map_err(io_err("read segment", path))? {
            Frame::Record(payload) => {
                scan.len += FRAME_HEADER + payload.len() as u64;
                scan.records += 1;
                if scan.len <= stop {
                    scan.boundary = (scan.len, scan.records);
                }
            }
            Frame::Stop => break,
            Frame::Damaged(why) => {
                scan.damage = Some(why);
                break;
            }
        }
    }
    Ok(scan)
}

/// The valid frames of the segment at `path` past a damaged one at
/// `from`: each offset is tried as a frame header until a frame's length
/// and crc check out, then frames are followed from there.
fn salvage(path: &Path, from: u64) -> Result<Vec<Vec<u8>>, SpoolError> {
    let mut file = File::open(path).map_err(io_err("open segment", path))?;
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(from))
        .and_then(|_| file.read_to_end(&mut data))
        .map_err(io_err("read segment", path))?;
    let mut out = Vec::new();
    let header = FRAME_HEADER as usize;
    // The damaged frame itself starts at 0: skip it.
    let mut at = 1usize;
    while at + header <= data.len() {
        let len_bytes = [data[at], data[at + 1], data[at + 2], data[at + 3]];
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        let len = u32::from_le_bytes(len_bytes) as usize;
        let end = at.checked_add(header).and_then(|s| s.checked_add(len));
        match end {
            Some(end)
                if end <= data.len() && frame_crc(len_bytes, &data[at + header..end]) == crc =>
            {
                out.push(data[at + header..end].to_vec());
                at = end;
            }
            _ => at += 1,
        }
    }
    Ok(out)
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{SEGMENT_PREFIX}{seq:016}{SEGMENT_SUFFIX}"))
}

/// Sequence numbers of the segment files in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list directory", dir))? {
        let entry = entry.map_err(io_err("list directory", dir))?;
        let name = entry.file_name();
        let seq = name
            .to_str()
            .and_then(|n| n.strip_prefix(SEGMENT_PREFIX))
            .and_then(|n| n.strip_suffix(SEGMENT_SUFFIX))
            .filter(|n| n.len() == 16)
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// Creates segment `seq` and makes its directory entry durable.
fn create_segment(dir: &Path, seq: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, seq);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(io_err("create segment", &path))?;
    sync_dir(dir)?;
    Ok(file)
}

fn open_at(path: &Path, offset: u64) -> Result<BufReader<File>, SpoolError> {
    let mut file = File::open(path).map_err(io_err("open segment", path))?;
    file.seek(SeekFrom::Start(offset))
        .map_err(io_err("seek segment", path))?;
    Ok(BufReader::with_capacity(64 * 1024, file))
}

fn truncate(path: &Path, len: u64) -> Result<(), SpoolError> {
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open segment", path))?;
    file.set_len(len)
        .and_then(|()| file.sync_all())
        .map_err(io_err("truncate segment", path))
}

fn remove_if_exists(path: &Path) -> Result<(), SpoolError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("delete", path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync directory", dir))
}

enum HeadFile {
    Missing,
    Valid { seg: u64, end: u64 },
    Corrupt,
}

fn read_head(path: &Path) -> Result<HeadFile, SpoolError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HeadFile::Missing),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let Ok(bytes) = <[u8; HEAD_LEN]>::try_from(bytes.as_slice()) else {
        return Ok(HeadFile::Corrupt);
    };
    let word = |i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[i..i + 8]);
        u64::from_le_bytes(w)
    };
    let crc = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    if crc32fast::hash(&bytes[..16]) != crc {
        return Ok(HeadFile::Corrupt);
    }
    Ok(HeadFile::Valid {
        seg: word(0),
        end: word(8),
    })
}

/// Replaces the head file atomically and durably.
fn write_head(dir: &Path, head: Position) -> Result<(), SpoolError> {
    let mut bytes = [0u8; HEAD_LEN];
    bytes[..8].copy_from_slice(&head.seg.to_le_bytes());
    bytes[8..16].copy_from_slice(&head.end.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..16]);
    bytes[16..].copy_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(HEAD_TMP);
    let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp))?;
    let path = dir.join(HEAD_FILE);
    fs::rename(&tmp, &path).map_err(io_err("rename to head", &tmp))?;
    sync_dir(dir)
}

/// A [`Spool`] shared between async tasks: file I/O runs on tokio's blocking
/// pool, and a consumer can wait for records to arrive.
#[derive(Debug, Clone)]
pub struct SharedSpool {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    spool: Mutex<Spool>,
    appended: Notify,
}

impl SharedSpool {
    /// Wraps an open spool.
    pub fn new(spool: Spool) -> Self {
        SharedSpool {
            inner: Arc::new(Shared {
                spool: Mutex::new(spool),
                appended: Notify::new(),
            }),
        }
    }

    /// [`Spool::open`] on the blocking pool.
    pub async fn open(dir: PathBuf, max_bytes: u64) -> Result<Self, SpoolError> {
        let spool = tokio::task::spawn_blocking(move || Spool::open(&dir, max_bytes)).await??;
        Ok(SharedSpool::new(spool))
    }

    /// [`Spool::append`], then wakes tasks in [`SharedSpool::wait_for_records`].
    /// Returns the counters after the append (one trip to the blocking pool).
    pub async fn append<B, R>(&self, records: B) -> Result<SpoolStats, SpoolError>
    where
        B: AsRef<[R]> + Send + 'static,
        R: AsRef<[u8]>,
    {
        let stats = self
            .run(move |s| s.append(records.as_ref()).map(|()| s.stats()))
            .await?;
        self.inner.appended.notify_waiters();
        Ok(stats)
    }

    /// [`Spool::read`].
    pub async fn read(
        &self,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Position, Vec<u8>)>, SpoolError> {
        self.run(move |s| s.read(max_records, max_bytes)).await
    }

    /// [`Spool::commit`]; returns the counters after it.
    pub async fn commit(&self, upto: Position) -> Result<SpoolStats, SpoolError> {
        self.run(move |s| s.commit(upto).map(|()| s.stats())).await
    }

    /// [`Spool::stats`].
    pub async fn stats(&self) -> Result<SpoolStats, SpoolError> {
        self.run(|s| Ok(s.stats())).await
    }

    /// Returns once at least one record is pending.
    pub async fn wait_for_records(&self) -> Result<(), SpoolError> {
        loop {
            let notified = self.inner.appended.notified();
            tokio::pin!(notified);
            // Why enable first: an append between the check and the await
            // must still wake us.
            notified.as_mut().enable();
            if self.stats().await?.pending > 0 {
                return Ok(());
            }
            notified.await;
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut spool = inner.spool.lock().map_err(|_| SpoolError::Poisoned)?;
            f(&mut spool)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const BUDGET: u64 = MIN_SPOOL_BYTES; // 256 KiB: 64 KiB segments

    fn rec(i: usize, size: usize) -> Vec<u8> {
        let mut r = format!("record-{i:06}-").into_bytes();
        r.resize(size, b'x');
        r
    }

    fn payloads(batch: &[(Position, Vec<u8>)]) -> Vec<Vec<u8>> {
        batch.iter().map(|(_, p)| p.clone()).collect()
    }

    fn segment_files(dir: &Path) -> Vec<u64> {
        list_segments(dir).unwrap()
    }

    /// Reads and commits everything, returning the payloads in order.
    fn drain(spool: &mut Spool) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let batch = spool.read(50, 1 << 20).unwrap();
            let Some((last, _)) = batch.last() else {
                return all;
            };
            spool.commit(*last).unwrap();
            all.extend(payloads(&batch));
        }
    }

    #[test]
    fn empty_spool_reads_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(&dir.path().join("spool"), BUDGET).unwrap();
        assert!(spool.read(10, 1000).unwrap().is_empty());
        assert_eq!(spool.len(), 0);
        assert!(spool.is_empty());
        spool.append::<Vec<u8>>(&[]).unwrap();
        assert!(spool.read(10, 1000).unwrap().is_empty());
    }

    #[test]
    fn budget_below_minimum_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Spool::open(dir.path(), MIN_SPOOL_BYTES - 1),
            Err(SpoolError::BudgetTooSmall { .. })
        ));
    }

    #[test]
    fn append_read_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        let recs: Vec<Vec<u8>> = (0..10).map(|i| rec(i, 100)).collect();
        spool.append(&recs[..4]).unwrap();
        spool.append(&recs[4..]).unwrap();
        assert_eq!(spool.len(), 10);

        let batch = spool.read(3, usize::MAX).unwrap();
        assert_eq!(payloads(&batch), recs[..3].to_vec());
        spool.commit(batch[2].0).unwrap();
        assert_eq!(spool.len(), 7);

        // Byte limit: 250 bytes fit two 100-byte records.
        let batch = spool.read(100, 250).unwrap();
        assert_eq!(payloads(&batch), recs[3..5].to_vec());
        spool.commit(batch[1].0).unwrap();
        assert_eq!(drain(&mut spool), recs[5..].to_vec());
        assert!(spool.is_empty());
        // Committing an old position again is harmless.
        spool.commit(batch[0].0).unwrap();
        assert!(spool.is_empty());
    }

    #[test]
    fn read_is_a_peek_and_returns_one_oversized_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        let recs = vec![rec(0, 2000), rec(1, 10)];
        spool.append(&recs).unwrap();
        let first = spool.read(10, 100).unwrap();
        assert_eq!(payloads(&first), vec![recs[0].clone()]);
        let again = spool.read(10, 100).unwrap();
        assert_eq!(first, again);
        assert_eq!(payloads(&spool.read(0, 0).unwrap()), vec![recs[0].clone()]);
        spool.commit(first[0].0).unwrap();
        assert_eq!(
            payloads(&spool.read(10, 100).unwrap()),
            vec![recs[1].clone()]
        );
    }

    #[test]
    fn empty_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        spool.append(&[b"".as_slice(), b"a", b""]).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 0);
        assert_eq!(drain(&mut spool), vec![vec![], b"a".to_vec(), vec![]]);
    }

    #[test]
    fn reopen_after_commit_restores_position() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..6).map(|i| rec(i, 300)).collect();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool.append(&recs).unwrap();
            let batch = spool.read(4, usize::MAX).unwrap();
            spool.commit(batch[3].0).unwrap();
        }
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.len(), 2);
        assert_eq!(spool.corrupt(), 0);
        assert_eq!(drain(&mut spool), recs[4..].to_vec());
        // Appending after reopen continues the same FIFO.
        spool.append(&[rec(9, 50)]).unwrap();
        drop(spool);
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(drain(&mut spool), vec![rec(9, 50)]);
    }

    #[test]
    fn reopen_redelivers_uncommitted_records() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..5).map(|i| rec(i, 300)).collect();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool.append(&recs).unwrap();
            let batch = spool.read(2, usize::MAX).unwrap();
            spool.commit(batch[1].0).unwrap();
            // Read but never committed: must come back.
            assert_eq!(spool.read(10, usize::MAX).unwrap().len(), 3);
        }
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.len(), 3);
        assert_eq!(drain(&mut spool), recs[2..].to_vec());
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment_path(dir, *segment_files(dir).last().unwrap())
    }

    #[test]
    fn torn_tail_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..4).map(|i| rec(i, 500)).collect();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool.append(&recs).unwrap();
        }
        // Cut the last record in the middle of its payload.
        let seg = last_segment(dir.path());
        let len = fs::metadata(&seg).unwrap().len();
        truncate(&seg, len - 100).unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 1);
        assert_eq!(spool.len(), 3);
        assert_eq!(fs::metadata(&seg).unwrap().len(), 3 * 508);
        // Appends land after the cut and read back cleanly.
        spool.append(&[rec(7, 20)]).unwrap();
        drop(spool);

        // Garbage after the valid frames: a zero-filled tail and random bytes.
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&[0u8; 37]).unwrap();
        drop(file);
        let spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 1);
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(b"\x05\x00\x00\x00garbage!").unwrap();
        drop(file);
        drop(spool);
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 1);
        let mut expected = recs[..3].to_vec();
        expected.push(rec(7, 20));
        assert_eq!(drain(&mut spool), expected);
    }

    #[test]
    fn head_past_a_cut_is_moved_back_and_persisted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool
                .append(&[rec(0, 100), rec(1, 100), rec(2, 100)])
                .unwrap();
            let batch = spool.read(10, usize::MAX).unwrap();
            spool.commit(batch[2].0).unwrap();
        }
        // Damage cuts the segment below the committed offset.
        let seg = last_segment(dir.path());
        truncate(&seg, 108 + 50).unwrap();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            assert_eq!(spool.corrupt(), 1);
            assert!(spool.is_empty());
            spool.append(&[rec(5, 50), rec(6, 50)]).unwrap();
        }
        // The new records sit below the old stored offset: still delivered.
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(drain(&mut spool), vec![rec(5, 50), rec(6, 50)]);
    }

    #[test]
    fn torn_header_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool.append(&[rec(0, 100)]).unwrap();
        }
        let seg = last_segment(dir.path());
        let mut file = OpenOptions::new().append(true).open(&seg).unwrap();
        file.write_all(&[1, 2, 3]).unwrap();
        drop(file);
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 1);
        assert_eq!(drain(&mut spool), vec![rec(0, 100)]);
    }

    #[test]
    fn one_bad_frame_at_open_loses_only_that_frame() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..6).map(|i| rec(i, 200)).collect();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool.append(&recs).unwrap();
        }
        // Flip one payload byte of the third record.
        let seg = last_segment(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        bytes[2 * 208 + 8 + 50] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 1);
        // The acknowledged records behind the bad one are kept.
        assert_eq!(spool.len(), 5);
        let mut expected = recs[..2].to_vec();
        expected.extend_from_slice(&recs[3..]);
        assert_eq!(drain(&mut spool), expected);
        drop(spool);
        // Nothing left to salvage the next time.
        let spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 0);
        assert!(spool.is_empty());
    }

    #[test]
    fn corruption_found_while_reading_loses_only_the_bad_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        let recs: Vec<Vec<u8>> = (0..4).map(|i| rec(i, 200)).collect();
        spool.append(&recs).unwrap();
        let seg = last_segment(dir.path());
        let mut bytes = fs::read(&seg).unwrap();
        bytes[208 + 8 + 10] ^= 0xff;
        fs::write(&seg, &bytes).unwrap();
        // Only the bad record is lost: the ones behind it are kept (moved
        // to the end of the spool, and read on).
        let batch = spool.read(10, usize::MAX).unwrap();
        let kept = vec![recs[0].clone(), recs[2].clone(), recs[3].clone()];
        assert_eq!(payloads(&batch), kept);
        assert_eq!(spool.corrupt(), 1);
        assert_eq!(spool.len(), 3);
        // New records go to a fresh segment and follow.
        spool.append(&[rec(8, 10)]).unwrap();
        assert_eq!(
            drain(&mut spool),
            vec![
                recs[0].clone(),
                recs[2].clone(),
                recs[3].clone(),
                rec(8, 10)
            ]
        );
    }

    #[test]
    fn corrupt_head_file_redelivers_from_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let recs: Vec<Vec<u8>> = (0..3).map(|i| rec(i, 100)).collect();
        {
            let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
            spool.append(&recs).unwrap();
            let batch = spool.read(1, usize::MAX).unwrap();
            spool.commit(batch[0].0).unwrap();
        }
        fs::write(dir.path().join(HEAD_FILE), b"nonsense").unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.corrupt(), 1);
        assert_eq!(drain(&mut spool), recs);
    }

    #[test]
    fn segments_rotate_and_consumed_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), 1024 * 1024).unwrap(); // 256 KiB segments
        let recs: Vec<Vec<u8>> = (0..600).map(|i| rec(i, 1000)).collect();
        for chunk in recs.chunks(50) {
            spool.append(chunk).unwrap();
        }
        // 600 * 1008 bytes over 256 KiB segments: 3 segments.
        assert_eq!(segment_files(dir.path()).len(), 3);
        assert_eq!(spool.bytes(), 600 * 1008);
        // A read spans segments.
        let batch = spool.read(400, usize::MAX).unwrap();
        assert_eq!(payloads(&batch), recs[..400].to_vec());
        spool.commit(batch[399].0).unwrap();
        assert_eq!(segment_files(dir.path()).len(), 2);
        assert_eq!(spool.len(), 200);
        drop(spool);
        let mut spool = Spool::open(dir.path(), 1024 * 1024).unwrap();
        assert_eq!(spool.len(), 200);
        assert_eq!(drain(&mut spool), recs[400..].to_vec());
        // The last segment stays to be appended to; the others are gone.
        assert_eq!(segment_files(dir.path()).len(), 1);
        spool.append(&[rec(1, 10)]).unwrap();
        assert_eq!(drain(&mut spool), vec![rec(1, 10)]);
    }

    #[test]
    fn over_budget_drops_the_oldest_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap(); // 64 KiB segments
        let recs: Vec<Vec<u8>> = (0..400).map(|i| rec(i, 1000)).collect();
        // Commit a few so the head sits inside the first segment when it goes.
        spool.append(&recs[..10]).unwrap();
        let batch = spool.read(3, usize::MAX).unwrap();
        spool.commit(batch[2].0).unwrap();
        for chunk in recs[10..].chunks(20) {
            spool.append(chunk).unwrap();
        }
        assert!(spool.bytes() <= BUDGET, "{} bytes", spool.bytes());
        // 65 records of 1008 bytes fit a 64 KiB segment.
        let per_segment = (64 * 1024 / 1008) as u64;
        assert!(spool.dropped() > 0);
        assert_eq!(spool.dropped() % per_segment, per_segment - 3);
        assert_eq!(spool.len() + spool.dropped(), 397);
        let first_kept = (3 + spool.dropped()) as usize;
        let pending = spool.len();
        drop(spool);
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        assert_eq!(spool.len(), pending);
        assert_eq!(drain(&mut spool), recs[first_kept..].to_vec());
    }

    #[test]
    fn oversized_record_is_refused_and_nothing_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        let limit = spool.max_record_bytes() as usize;
        assert_eq!(limit, 64 * 1024);
        spool.append(&[vec![1u8; limit]]).unwrap();
        let err = spool
            .append(&[vec![2u8; 10], vec![3u8; limit + 1]])
            .unwrap_err();
        assert!(matches!(err, SpoolError::RecordTooLarge { index: 1, .. }));
        assert_eq!(spool.len(), 1);
        assert_eq!(drain(&mut spool), vec![vec![1u8; limit]]);
    }

    #[test]
    fn foreign_position_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path(), BUDGET).unwrap();
        spool.append(&[rec(0, 10)]).unwrap();
        let bogus = Position {
            seg: 99,
            end: 18,
            n: 1,
        };
        assert!(matches!(
            spool.commit(bogus),
            Err(SpoolError::InvalidPosition(_))
        ));
        assert_eq!(spool.len(), 1);
    }

    /// A tmpfs of `bytes` on a fresh directory (the test runs as root, as
    /// the project's test suite does), unmounted on drop.
    struct SmallFs(tempfile::TempDir);

    impl SmallFs {
        fn mount(bytes: u64) -> SmallFs {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting a tmpfs needs root");
            SmallFs(dir)
        }
    }

    impl Drop for SmallFs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    #[test]
    fn on_a_full_disk_commits_free_segments_and_appends_resume() {
        // 192 KiB of disk for a 1 MiB budget: the disk fills first.
        let fs = SmallFs::mount(192 * 1024);
        let mut spool = Spool::open(fs.0.path(), 1024 * 1024).unwrap();
        let mut appended = 0;
        let full = loop {
            match spool.append(&[rec(appended, 4000)]) {
                Ok(()) => appended += 1,
                Err(e) => break e,
            }
            assert!(appended < 1000, "the disk never filled");
        };
        assert!(full.to_string().contains("write"), "{full}");
        // Everything appended is there; a failed append left no trace.
        let batch = spool.read(usize::MAX, usize::MAX).unwrap();
        assert_eq!(batch.len(), appended);
        // Committing all of it frees the consumed segments even though the
        // head file cannot be written first on the full disk...
        let _ = spool.commit(batch.last().unwrap().0);
        assert!(spool.is_empty());
        // ...so appends work again, and nothing is read twice.
        spool.append(&[rec(9999, 4000)]).unwrap();
        assert_eq!(drain(&mut spool), vec![rec(9999, 4000)]);
    }

    #[tokio::test]
    async fn shared_spool_wakes_the_consumer() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SharedSpool::open(dir.path().to_path_buf(), BUDGET)
            .await
            .unwrap();
        let consumer = {
            let shared = shared.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                while got.len() < 3 {
                    shared.wait_for_records().await.unwrap();
                    let batch = shared.read(10, usize::MAX).await.unwrap();
                    shared.commit(batch.last().unwrap().0).await.unwrap();
                    got.extend(payloads(&batch));
                }
                got
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        shared.append(vec![b"a".to_vec()]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        shared
            .append(vec![b"b".to_vec(), b"c".to_vec()])
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), consumer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let stats = shared.stats().await.unwrap();
        assert_eq!(stats.pending, 0);
    }
}

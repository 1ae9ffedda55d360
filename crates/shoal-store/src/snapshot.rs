//! Snapshot files: the whole state machine at one applied log id, written from a redb read
//! transaction straight to a file and read back from a file straight into a write
//! transaction, so neither side ever holds a full copy in memory. The same file is what a
//! leader streams to a new or lagging member.
//!
//! Layout: `SHOALSNP`, then frames `tag u8, len u32, payload`: one header (JSON: the raft
//! snapshot meta, revision, compaction point, removed members), then every key record, every
//! retained history event, every kept event (compacted puts that retained updates name) and
//! every remembered write outcome, then an end frame carrying a CRC-32 of all bytes before it.
//! A file that fails the checksum, ends early or has an unknown frame is refused before
//! anything it holds is committed.
//!
//! Files live in `DIR/snapshots/`: `<id>.snap` when complete, `*.partial` while being written
//! or received. Only the newest complete one is kept.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::SnapshotMeta;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::DiskError;
use crate::codec::{CorruptRecord, check_record};
use crate::raft::Member;
use crate::state_machine::{HISTORY, KEPT, KV, OPS};

const MAGIC: &[u8; 8] = b"SHOALSNP";
const HEADER: u8 = 1;
const KEY: u8 = 2;
const EVENT: u8 = 3;
const OUTCOME: u8 = 4;
const KEPT_EVENT: u8 = 5;
const END: u8 = 0;

/// What a snapshot says besides its records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SnapshotHeader {
    pub meta: SnapshotMeta<u64, Member>,
    pub revision: u64,
    pub compacted: u64,
    pub removed: BTreeSet<u64>,
}

struct CrcWriter<W: Write> {
    inner: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> CrcWriter<W> {
    fn frame(&mut self, tag: u8, parts: &[&[u8]]) -> std::io::Result<()> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let len = u32::try_from(len).map_err(std::io::Error::other)?;
        self.put(&[tag])?;
        self.put(&len.to_le_bytes())?;
        for p in parts {
            self.put(p)?;
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.crc.update(bytes);
        self.inner.write_all(bytes)
    }
}

fn len_prefixed(bytes: &[u8]) -> [u8; 4] {
    (bytes.len() as u32).to_le_bytes()
}

/// Writes the state seen by `txn` to `path` (fsynced), described by `header`.
pub fn write(txn: &ReadTransaction, header: &SnapshotHeader, path: &Path) -> Result<(), DiskError> {
    let file = File::create(path)?;
    let mut w = CrcWriter {
        inner: BufWriter::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    w.put(MAGIC)?;
    w.frame(HEADER, &[&serde_json::to_vec(header)?])?;
    let kv = txn.open_table(KV)?;
    for item in kv.iter()? {
        let (k, v) = item?;
        let key = k.value().as_bytes();
        w.frame(KEY, &[&len_prefixed(key), key, v.value()])?;
    }
    let history = txn.open_table(HISTORY)?;
    for item in history.iter()? {
        let (rev, v) = item?;
        w.frame(EVENT, &[&rev.value().to_le_bytes(), v.value()])?;
    }
    let kept = txn.open_table(KEPT)?;
    for item in kept.iter()? {
        let (k, v) = item?;
        let key = k.value().as_bytes();
        w.frame(KEPT_EVENT, &[&len_prefixed(key), key, v.value()])?;
    }
    let ops = txn.open_table(OPS)?;
    for item in ops.iter()? {
        let (id, v) = item?;
        w.frame(OUTCOME, &[&id.value().to_le_bytes(), v.value()])?;
    }
    let sum = w.crc.clone().finalize();
    w.inner.write_all(&[END])?;
    w.inner.write_all(&4u32.to_le_bytes())?;
    w.inner.write_all(&sum.to_le_bytes())?;
    let file = w.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(())
}

struct CrcReader<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> CrcReader<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), DiskError> {
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                DiskError::from(CorruptRecord("snapshot ends early"))
            } else {
                DiskError::Io(e)
            }
        })?;
        self.crc.update(buf);
        Ok(())
    }

    /// The next frame's tag and payload (into `buf`), checking the end frame's checksum.
    fn frame(&mut self, buf: &mut Vec<u8>) -> Result<u8, DiskError> {
        let mut head = [0u8; 5];
        let before = self.crc.clone();
        self.exact(&mut head)?;
        let tag = head[0];
        let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
        // Frames are at most one key record plus framing; anything bigger is damage.
        if len > crate::MAX_VALUE_BYTES + (1 << 20) {
            return Err(CorruptRecord("snapshot frame too large").into());
        }
        buf.clear();
        buf.resize(len, 0);
        self.exact(buf)?;
        if tag == END {
            let want = before.finalize();
            if buf.len() != 4 || u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) != want {
                return Err(CorruptRecord("snapshot checksum mismatch").into());
            }
        }
        Ok(tag)
    }
}

fn split_u32(buf: &[u8]) -> Result<(&[u8], &[u8]), CorruptRecord> {
    if buf.len() < 4 {
        return Err(CorruptRecord("snapshot frame too short"));
    }
    let (len, rest) = buf.split_at(4);
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(CorruptRecord("snapshot frame too short"));
    }
    Ok(rest.split_at(len))
}

fn fixed<const N: usize>(buf: &[u8]) -> Result<([u8; N], &[u8]), CorruptRecord> {
    if buf.len() < N {
        return Err(CorruptRecord("snapshot frame too short"));
    }
    let (head, rest) = buf.split_at(N);
    let mut a = [0u8; N];
    a.copy_from_slice(head);
    Ok((a, rest))
}

fn open_reader(file: File) -> Result<(CrcReader<BufReader<File>>, SnapshotHeader), DiskError> {
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(CorruptRecord("not a shoal snapshot").into());
    }
    let mut buf = Vec::new();
    if r.frame(&mut buf)? != HEADER {
        return Err(CorruptRecord("snapshot has no header").into());
    }
    let header = serde_json::from_slice(&buf)?;
    Ok((r, header))
}

/// The header of the snapshot in `file`, without reading the rest.
pub fn read_header(file: File) -> Result<SnapshotHeader, DiskError> {
    Ok(open_reader(file)?.1)
}

/// Replaces the tables of `txn` with the snapshot in `file`. The caller commits only on `Ok`:
/// nothing of a damaged file is kept.
pub fn load(file: File, txn: &WriteTransaction) -> Result<SnapshotHeader, DiskError> {
    let (mut r, header) = open_reader(file)?;
    let mut kv = txn.open_table(KV)?;
    let mut history = txn.open_table(HISTORY)?;
    let mut kept = txn.open_table(KEPT)?;
    let mut ops = txn.open_table(OPS)?;
    kv.retain(|_, _| false)?;
    history.retain(|_, _| false)?;
    kept.retain(|_, _| false)?;
    ops.retain(|_, _| false)?;
    let mut buf = Vec::new();
    loop {
        match r.frame(&mut buf)? {
            END => break,
            KEY => {
                let (key, record) = split_u32(&buf)?;
                let key = std::str::from_utf8(key)
                    .map_err(|_| CorruptRecord("snapshot key is not utf-8"))?;
                check_record(key, record)?;
                kv.insert(key, record)?;
            }
            EVENT => {
                let (rev, event) = fixed::<8>(&buf)?;
                history.insert(u64::from_le_bytes(rev), event)?;
            }
            KEPT_EVENT => {
                let (key, event) = split_u32(&buf)?;
                let key = std::str::from_utf8(key)
                    .map_err(|_| CorruptRecord("snapshot key is not utf-8"))?;
                kept.insert(key, event)?;
            }
            OUTCOME => {
                let (id, outcome) = fixed::<16>(&buf)?;
                ops.insert(u128::from_le_bytes(id), outcome)?;
            }
            _ => return Err(CorruptRecord("unknown snapshot frame").into()),
        }
    }
    Ok(header)
}

/// Path of the complete snapshot `id` in `dir`.
pub fn path_of(dir: &Path, id: &str) -> PathBuf {
    // Ids are made by this crate from numbers and dashes; keep them file-name safe anyway.
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.snap"))
}

/// Removes every complete snapshot but `keep`, and with `partial` also the files being
/// written or received (only safe when none is: at start).
pub fn clean(dir: &Path, keep: Option<&Path>, partial: bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let stale = match path.extension().and_then(|e| e.to_str()) {
            Some("partial") => partial,
            Some("snap") => Some(path.as_path()) != keep,
            _ => false,
        };
        if stale && let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "removing an old snapshot failed");
        }
    }
}

/// The newest complete snapshot in `dir` with a readable header, if any.
pub fn newest(dir: &Path) -> Option<(SnapshotHeader, PathBuf)> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut best: Option<(SnapshotHeader, PathBuf)> = None;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("snap") {
            continue;
        }
        let header = match File::open(&path)
            .map_err(DiskError::from)
            .and_then(read_header)
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring an unreadable snapshot");
                continue;
            }
        };
        if best
            .as_ref()
            .is_none_or(|(b, _)| b.meta.last_log_id < header.meta.last_log_id)
        {
            best = Some((header, path));
        }
    }
    best
}

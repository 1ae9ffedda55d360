//! Writing container output in the CRI log format, as a runtime does for the kubelet.
//!
//! One record per line: `2026-11-23T19:00:00.123456789Z stdout F text`. Output without a
//! newline is buffered until one arrives, written as a `P` (partial) record when it grows past
//! [`MAX_LINE`], and written as a final `F` record when the container ends (the [`LogFile`] is
//! dropped). Readers (the agent's `kubectl logs` endpoint) reassemble partial records.
//!
//! Writes are synchronous file appends: call them from the container's own thread, never from an
//! async executor thread that other work shares.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use jiff::Timestamp;

/// Output longer than this without a newline is written as a partial (`P`) record.
pub const MAX_LINE: usize = 16 * 1024;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// RFC 3339 with nanoseconds, always nine digits, as CRI log files have them.
pub fn format_timestamp(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%S.%9fZ").to_string()
}

/// Splits raw output chunks into CRI log records.
#[derive(Debug, Default)]
pub struct LineFramer {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineFramer {
    /// Frames `chunk` and returns the complete records to append (possibly none).
    pub fn push(&mut self, stream: LogStream, chunk: &[u8], timestamp: &str) -> Vec<u8> {
        let buffer = match stream {
            LogStream::Stdout => &mut self.stdout,
            LogStream::Stderr => &mut self.stderr,
        };
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            buffer.extend_from_slice(&rest[..pos]);
            write_record(&mut out, timestamp, stream, 'F', buffer);
            buffer.clear();
            rest = &rest[pos + 1..];
        }
        buffer.extend_from_slice(rest);
        while buffer.len() >= MAX_LINE {
            let tail = buffer.split_off(MAX_LINE);
            write_record(&mut out, timestamp, stream, 'P', buffer);
            *buffer = tail;
        }
        out
    }

    /// Flushes what is buffered without a newline as final records (the container ended).
    pub fn finish(&mut self, timestamp: &str) -> Vec<u8> {
        let mut out = Vec::new();
        for (stream, buffer) in [
            (LogStream::Stdout, &mut self.stdout),
            (LogStream::Stderr, &mut self.stderr),
        ] {
            if !buffer.is_empty() {
                write_record(&mut out, timestamp, stream, 'F', buffer);
                buffer.clear();
            }
        }
        out
    }
}

fn write_record(out: &mut Vec<u8>, timestamp: &str, stream: LogStream, tag: char, content: &[u8]) {
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.push(tag as u8);
    out.push(b' ');
    out.extend_from_slice(content);
    out.push(b'\n');
}

struct State {
    file: std::fs::File,
    framer: LineFramer,
    failed: bool,
}

/// The log file of one container run, opened for appending. Dropping it writes what is still
/// buffered. A write error is logged once and further output dropped: the container keeps
/// running, as with a full disk under the kubelet.
pub struct LogFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl std::fmt::Debug for LogFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl LogFile {
    /// Opens `path` for appending, creating it and its directory.
    pub fn open(path: &Path) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(LogFile {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                file,
                framer: LineFramer::default(),
                failed: false,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the complete records `chunk` makes.
    pub fn write(&self, stream: LogStream, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let timestamp = format_timestamp(Timestamp::now());
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let framed = state.framer.push(stream, chunk, &timestamp);
        self.append(&framed, &mut state);
    }

    fn append(&self, bytes: &[u8], state: &mut State) {
        if bytes.is_empty() || state.failed {
            return;
        }
        if let Err(error) = state.file.write_all(bytes) {
            state.failed = true;
            eprintln!(
                "shoal: cannot write container log {}: {error}; further output is dropped",
                self.path.display()
            );
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let framed = state.framer.finish(&format_timestamp(Timestamp::now()));
        self.append(&framed, &mut state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;

    const TS: &str = "2026-11-23T19:00:00.000000001Z";

    #[test]
    fn framing_buffers_partial_lines() {
        let mut framer = LineFramer::default();
        let mut out = Vec::new();
        out.extend(framer.push(LogStream::Stdout, b"hel", TS));
        out.extend(framer.push(LogStream::Stderr, b"oops\n", TS));
        out.extend(framer.push(LogStream::Stdout, b"lo\nworld\n\nnext", TS));
        out.extend(framer.finish(TS));
        expect![[r#"
            2026-11-23T19:00:00.000000001Z stderr F oops
            2026-11-23T19:00:00.000000001Z stdout F hello
            2026-11-23T19:00:00.000000001Z stdout F world
            2026-11-23T19:00:00.000000001Z stdout F 
            2026-11-23T19:00:00.000000001Z stdout F next
        "#]]
        .assert_eq(&String::from_utf8_lossy(&out));
    }

    #[test]
    fn long_lines_become_partial_records() {
        let mut framer = LineFramer::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut file = framer.push(LogStream::Stdout, &long, TS);
        file.extend(framer.push(LogStream::Stdout, b"\n", TS));
        let tags: Vec<u8> = file
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| l[TS.len() + 8])
            .collect();
        assert_eq!(tags, b"PF");
    }

    #[test]
    fn timestamps_have_nine_digits() {
        let ts: Timestamp = "2026-11-23T19:00:00.5Z".parse().expect("ts");
        assert_eq!(format_timestamp(ts), "2026-11-23T19:00:00.500000000Z");
    }

    #[test]
    fn a_dropped_log_file_flushes_its_last_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c").join("0.log");
        let log = LogFile::open(&path).expect("open");
        log.write(LogStream::Stdout, b"one\ntw");
        let written = std::fs::read_to_string(&path).expect("read");
        assert!(written.ends_with(" stdout F one\n"), "{written}");
        drop(log);
        let written = std::fs::read_to_string(&path).expect("read");
        assert!(written.ends_with(" stdout F tw\n"), "{written}");
        assert_eq!(written.lines().count(), 2);
    }
}

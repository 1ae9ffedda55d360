//! Container logs: reading the CRI log files the runtimes write (tail, since, timestamps,
//! previous, limit, follow), and the agent's HTTP endpoint that serves them to the API server's
//! `pods/log` proxy.
//!
//! Files live at `<root>/<namespace>_<pod>_<uid>/<container>/<restartCount>.log` (the agent
//! names the path, the runtime writes it; see `shoal_runtime::cri_log`), one line per log record:
//! `2026-11-23T19:00:00.123456789Z stdout F text`. A follower polls the file for growth while
//! the pod worker marks the run as live ([`LogStore::live`]), and ends once the run has ended and
//! everything is read. This module does not rotate files nor delete them: they go with the pod's
//! directory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use jiff::Timestamp;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::watch;
use tracing::warn;

/// One record of a CRI log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub timestamp: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line of a CRI log file (without its newline).
pub fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let timestamp = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    Some(Record {
        timestamp,
        stream,
        partial: tag.first() == Some(&b'P'),
        content,
    })
}

/// Options of `GET /containerLogs`, as the `pods/log` subresource has them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    pub since_time: Option<Timestamp>,
    pub limit_bytes: Option<u64>,
}

impl LogOptions {
    fn since(&self, now: Timestamp) -> Option<Timestamp> {
        let by_seconds = self.since_seconds.and_then(|s| {
            let secs = i64::try_from(s).ok()?;
            now.checked_sub(jiff::SignedDuration::from_secs(secs)).ok()
        });
        match (by_seconds, self.since_time) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A log message reassembled from its records: partial records joined, newline included.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    timestamp: String,
    text: Vec<u8>,
}

/// Assembles messages from complete lines of a log file. Keeps partial records across calls.
#[derive(Debug, Default)]
struct Assembler {
    pending: HashMap<String, Message>,
}

impl Assembler {
    fn push_line(&mut self, line: &[u8], out: &mut Vec<Message>) {
        let Some(record) = parse_record(line) else {
            return;
        };
        let entry = self
            .pending
            .entry(record.stream.to_owned())
            .or_insert_with(|| Message {
                timestamp: record.timestamp.to_owned(),
                text: Vec::new(),
            });
        entry.text.extend_from_slice(record.content);
        if !record.partial {
            let mut message = self
                .pending
                .remove(record.stream)
                .expect("entry inserted above");
            message.text.push(b'\n');
            out.push(message);
        }
    }

    /// Feeds the complete lines of `data`; returns the bytes after the last newline.
    fn push<'a>(&mut self, data: &'a [u8], out: &mut Vec<Message>) -> &'a [u8] {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|b| *b == b'\n') {
            self.push_line(&rest[..pos], out);
            rest = &rest[pos + 1..];
        }
        rest
    }
}

fn passes(message: &Message, since: Option<Timestamp>) -> bool {
    match since {
        None => true,
        Some(since) => message
            .timestamp
            .parse::<Timestamp>()
            .map(|ts| ts >= since)
            .unwrap_or(true),
    }
}

fn render_message(message: &Message, timestamps: bool, out: &mut Vec<u8>) {
    if timestamps {
        out.extend_from_slice(message.timestamp.as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(&message.text);
}

/// Renders the content of a log file per `options` (everything but `follow`). Returns the bytes
/// and whether `limitBytes` was reached.
pub fn render_log(file: &[u8], options: &LogOptions, now: Timestamp) -> (Vec<u8>, bool) {
    let mut messages = Vec::new();
    Assembler::default().push(file, &mut messages);
    let since = options.since(now);
    messages.retain(|m| passes(m, since));
    if let Some(tail) = options.tail_lines {
        let keep = usize::try_from(tail).unwrap_or(usize::MAX);
        let skip = messages.len().saturating_sub(keep);
        messages.drain(..skip);
    }
    let mut out = Vec::new();
    for message in &messages {
        render_message(message, options.timestamps, &mut out);
    }
    limit(out, options.limit_bytes)
}

fn limit(mut out: Vec<u8>, limit_bytes: Option<u64>) -> (Vec<u8>, bool) {
    match limit_bytes.and_then(|l| usize::try_from(l).ok()) {
        Some(max) if out.len() >= max => {
            out.truncate(max);
            (out, true)
        }
        _ => (out, false),
    }
}

/// How often a follower looks for new output.
const FOLLOW_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// The log files of this node: where they live and which are being written.
#[derive(Debug)]
pub struct LogStore {
    root: PathBuf,
    /// Files of running containers; the value turns true when the run ends.
    live: Mutex<HashMap<PathBuf, watch::Receiver<bool>>>,
}

/// The directory of one pod's logs.
pub fn pod_log_dir(root: &Path, namespace: &str, pod: &str, uid: &str) -> PathBuf {
    root.join(format!("{namespace}_{pod}_{uid}"))
}

/// Marks a log file as written by a running container until dropped.
#[derive(Debug)]
pub struct LiveLog {
    path: PathBuf,
    ended: watch::Sender<bool>,
    store: Arc<LogStore>,
}

impl Drop for LiveLog {
    fn drop(&mut self) {
        self.ended.send_replace(true);
        let mut live = self.store.live.lock().unwrap_or_else(|e| e.into_inner());
        if live
            .get(&self.path)
            .is_some_and(|rx| rx.same_channel(&self.ended.subscribe()))
        {
            live.remove(&self.path);
        }
    }
}

impl LogStore {
    /// Log files under `root` (the agent's `data_dir/pods`).
    pub fn new(root: PathBuf) -> Arc<LogStore> {
        Arc::new(LogStore {
            root,
            live: Mutex::new(HashMap::new()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Followers of `path` keep reading until the returned guard is dropped (the run ended and
    /// the runtime flushed its output).
    pub fn live(self: &Arc<Self>, path: &Path) -> LiveLog {
        let (ended, rx) = watch::channel(false);
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), rx);
        LiveLog {
            path: path.to_path_buf(),
            ended,
            store: Arc::clone(self),
        }
    }

    fn subscribe(&self, path: &Path) -> Option<watch::Receiver<bool>> {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .cloned()
    }

    /// The log file to serve: the current run of the container, or the previous one.
    pub fn find(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        previous: bool,
    ) -> Result<PathBuf, LogError> {
        let prefix = format!("{namespace}_{pod}_");
        let mut best: Option<(std::time::SystemTime, PathBuf)> = None;
        let entries = std::fs::read_dir(&self.root).map_err(|_| LogError::PodNotFound {
            namespace: namespace.to_owned(),
            pod: pod.to_owned(),
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(uid) = name.strip_prefix(&prefix) else {
                continue;
            };
            if uid.contains('_') {
                continue;
            }
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(t, _)| modified > *t) {
                best = Some((modified, entry.path()));
            }
        }
        let Some((_, pod_dir)) = best else {
            return Err(LogError::PodNotFound {
                namespace: namespace.to_owned(),
                pod: pod.to_owned(),
            });
        };
        let container_dir = pod_dir.join(container);
        let mut runs: Vec<u64> = std::fs::read_dir(&container_dir)
            .map_err(|_| LogError::ContainerNotFound {
                container: container.to_owned(),
                pod: pod.to_owned(),
            })?
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".log")?
                    .parse::<u64>()
                    .ok()
            })
            .collect();
        runs.sort_unstable();
        let pick = if previous {
            runs.len().checked_sub(2).map(|i| runs[i])
        } else {
            runs.last().copied()
        };
        match pick {
            Some(run) => Ok(container_dir.join(format!("{run}.log"))),
            None if previous => Err(LogError::PreviousNotFound {
                container: container.to_owned(),
                pod: pod.to_owned(),
            }),
            None => Err(LogError::ContainerNotFound {
                container: container.to_owned(),
                pod: pod.to_owned(),
            }),
        }
    }

    /// Reads a log file per `options`; with `follow`, the stream goes on with new records
    /// until the container run ends or the reader goes away.
    pub async fn read(
        self: &Arc<Self>,
        path: PathBuf,
        options: LogOptions,
        now: Timestamp,
    ) -> Result<impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static, LogError>
    {
        // Subscribe before reading so that nothing written in between is missed.
        let ended = if options.follow {
            self.subscribe(&path)
        } else {
            None
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| LogError::Read(path.display().to_string(), e))?;
        let mut content = Vec::new();
        file.read_to_end(&mut content)
            .await
            .map_err(|e| LogError::Read(path.display().to_string(), e))?;
        // Only complete lines: a record being appended right now is picked up by the follower.
        let complete = content
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |p| p + 1);
        let (first, limit_reached) = render_log(&content[..complete], &options, now);
        let remaining = options
            .limit_bytes
            .map(|l| l.saturating_sub(first.len() as u64));
        let follower = match ended {
            Some(ended) if !limit_reached => Some(Follower {
                file,
                offset: complete as u64,
                ended,
                assembler: Assembler::default(),
                carry: Vec::new(),
                since: options.since(now),
                timestamps: options.timestamps,
                remaining,
            }),
            _ => None,
        };
        let head = futures::stream::once(async move { Ok(Bytes::from(first)) });
        let tail = futures::stream::unfold(follower, |follower| async move {
            let mut follower = follower?;
            match follower.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(follower))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        });
        Ok(futures::StreamExt::chain(head, tail))
    }
}

struct Follower {
    file: tokio::fs::File,
    offset: u64,
    ended: watch::Receiver<bool>,
    assembler: Assembler,
    carry: Vec<u8>,
    since: Option<Timestamp>,
    timestamps: bool,
    remaining: Option<u64>,
}

impl Follower {
    /// The next rendered chunk, or `None` once the container run ended and all is read.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.remaining == Some(0) {
                return Ok(None);
            }
            // Read before looking at the end mark: output written before the run ended is
            // on disk by the time the mark is set.
            let marked = *self.ended.borrow_and_update();
            let ended = marked || self.ended.has_changed().is_err();
            self.file
                .seek(std::io::SeekFrom::Start(self.offset))
                .await?;
            let mut buf = Vec::new();
            self.file.read_to_end(&mut buf).await?;
            if !buf.is_empty() {
                self.offset += buf.len() as u64;
                self.carry.extend_from_slice(&buf);
                let mut messages = Vec::new();
                let carry = std::mem::take(&mut self.carry);
                self.carry = self.assembler.push(&carry, &mut messages).to_vec();
                let mut out = Vec::new();
                for message in messages.iter().filter(|m| passes(m, self.since)) {
                    render_message(message, self.timestamps, &mut out);
                }
                if let Some(remaining) = self.remaining {
                    let (limited, _) = limit(out, Some(remaining));
                    out = limited;
                    self.remaining = Some(remaining - out.len() as u64);
                }
                if !out.is_empty() {
                    return Ok(Some(Bytes::from(out)));
                }
                continue;
            }
            if ended {
                return Ok(None);
            }
            tokio::select! {
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = self.ended.changed() => {}
            }
        }
    }
}

/// Why logs cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("pod {namespace}/{pod} has no logs on this node")]
    PodNotFound { namespace: String, pod: String },
    #[error("container {container} is not valid for pod {pod}")]
    ContainerNotFound { container: String, pod: String },
    #[error("previous terminated container {container} in pod {pod} not found")]
    PreviousNotFound { container: String, pod: String },
    #[error("invalid parameter {0}")]
    BadRequest(String),
    #[error("cannot read log file {0}")]
    Read(String, #[source] std::io::Error),
}

impl IntoResponse for LogError {
    fn into_response(self) -> Response {
        let status = match &self {
            LogError::BadRequest(_) => StatusCode::BAD_REQUEST,
            LogError::Read(_, error) => {
                warn!(%error, "cannot read container log");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::NOT_FOUND,
        };
        (status, self.to_string()).into_response()
    }
}

/// Query of `GET /containerLogs/...`; values are parsed leniently (`true`, `1`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogQuery {
    follow: Option<String>,
    previous: Option<String>,
    timestamps: Option<String>,
    tail_lines: Option<String>,
    since_seconds: Option<String>,
    since_time: Option<String>,
    limit_bytes: Option<String>,
}

fn parse_bool(name: &str, value: Option<&str>) -> Result<bool, LogError> {
    match value {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(LogError::BadRequest(format!("{name}={other}"))),
    }
}

fn parse_number(name: &str, value: Option<&str>) -> Result<Option<u64>, LogError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => match v.parse::<i64>() {
            // A negative tail means "all", as in kubectl.
            Ok(n) if n < 0 => Ok(None),
            Ok(n) => Ok(Some(n.unsigned_abs())),
            Err(_) => Err(LogError::BadRequest(format!("{name}={v}"))),
        },
    }
}

impl TryFrom<LogQuery> for LogOptions {
    type Error = LogError;

    fn try_from(q: LogQuery) -> Result<LogOptions, LogError> {
        Ok(LogOptions {
            follow: parse_bool("follow", q.follow.as_deref())?,
            previous: parse_bool("previous", q.previous.as_deref())?,
            timestamps: parse_bool("timestamps", q.timestamps.as_deref())?,
            tail_lines: parse_number("tailLines", q.tail_lines.as_deref())?,
            since_seconds: parse_number("sinceSeconds", q.since_seconds.as_deref())?,
            since_time: match q.since_time.as_deref() {
                None | Some("") => None,
                Some(t) => Some(
                    t.parse::<Timestamp>()
                        .map_err(|_| LogError::BadRequest(format!("sinceTime={t}")))?,
                ),
            },
            limit_bytes: parse_number("limitBytes", q.limit_bytes.as_deref())?,
        })
    }
}

async fn container_logs(
    State(store): State<Arc<LogStore>>,
    UrlPath((namespace, pod, container)): UrlPath<(String, String, String)>,
    Query(query): Query<LogQuery>,
) -> Result<Response, LogError> {
    let options = LogOptions::try_from(query)?;
    let path = store.find(&namespace, &pod, &container, options.previous)?;
    let stream = store.read(path, options, Timestamp::now()).await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// The agent's HTTP API: `GET /containerLogs/{namespace}/{pod}/{container}` and `GET /healthz`.
/// Users whose client certificate may read logs from this agent, besides `system:masters`:
/// the apiserver's, as it proxies `kubectl logs`.
pub const AUTHORIZED_USERS: &[&str] = &["kube-apiserver-kubelet-client"];

/// Over TLS: serves only the apiserver and administrators; other nodes, even with a valid
/// certificate of the cluster, get 403 (the TLS layer already refused connections without
/// one).
pub async fn authorize(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let identity = request
        .extensions()
        .get::<shoal_tls::ConnectionInfo>()
        .and_then(|c| c.identity.clone());
    match identity {
        Some(id)
            if AUTHORIZED_USERS.contains(&id.user.as_str())
                || id.groups.iter().any(|g| g == "system:masters") =>
        {
            next.run(request).await
        }
        Some(id) => (
            StatusCode::FORBIDDEN,
            format!("{} may not read logs from this node\n", id.user),
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            "a client certificate of the cluster is required\n",
        )
            .into_response(),
    }
}

pub fn router(store: Arc<LogStore>) -> Router {
    Router::new()
        .route(
            "/containerLogs/{namespace}/{pod}/{container}",
            get(container_logs),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(store)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::expect;
    use futures::StreamExt;
    use shoal_runtime::cri_log::{LineFramer, LogFile, LogStream, MAX_LINE};
    use std::time::Duration;

    const TS: &str = "2026-11-23T19:00:00.000000001Z";

    #[test]
    fn long_lines_become_partial_records_and_reassemble() {
        let mut framer = LineFramer::default();
        let long = vec![b'x'; MAX_LINE + 10];
        let mut file = framer.push(LogStream::Stdout, &long, TS);
        file.extend(framer.push(LogStream::Stdout, b"\n", TS));
        let tags: Vec<bool> = file
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| parse_record(l).expect("record").partial)
            .collect();
        assert_eq!(tags, [true, false]);
        let (out, _) = render_log(&file, &LogOptions::default(), Timestamp::UNIX_EPOCH);
        assert_eq!(out.len(), MAX_LINE + 11);
    }

    fn sample_file() -> Vec<u8> {
        let lines = [
            "2026-11-23T19:00:00.000000000Z stdout F one",
            "2026-11-23T19:00:10.000000000Z stderr F two",
            "2026-11-23T19:00:20.000000000Z stdout P thr",
            "2026-11-23T19:00:21.000000000Z stdout F ee",
            "2026-11-23T19:00:30.000000000Z stdout F four",
        ];
        let mut file = lines.join("\n").into_bytes();
        file.push(b'\n');
        file
    }

    #[test]
    fn render_options() {
        let now: Timestamp = "2026-11-23T19:00:35Z".parse().expect("ts");
        let file = sample_file();
        let render = |options: LogOptions| {
            let (out, limited) = render_log(&file, &options, now);
            format!("{}|limited={limited}", String::from_utf8_lossy(&out))
        };
        expect![[r#"
            one
            two
            three
            four
            |limited=false"#]]
        .assert_eq(&render(LogOptions::default()));
        expect![[r#"
            2026-11-23T19:00:20.000000000Z three
            2026-11-23T19:00:30.000000000Z four
            |limited=false"#]]
        .assert_eq(&render(LogOptions {
            tail_lines: Some(2),
            timestamps: true,
            ..LogOptions::default()
        }));
        expect![[r#"
            three
            four
            |limited=false"#]]
        .assert_eq(&render(LogOptions {
            since_seconds: Some(20),
            ..LogOptions::default()
        }));
        expect!["one\ntw|limited=true"].assert_eq(&render(LogOptions {
            limit_bytes: Some(6),
            ..LogOptions::default()
        }));
        expect!["|limited=false"].assert_eq(&render(LogOptions {
            tail_lines: Some(0),
            ..LogOptions::default()
        }));
    }

    /// The log file of one run, as a runtime opens it where the agent says.
    fn open(
        store: &LogStore,
        namespace: &str,
        pod: &str,
        uid: &str,
        container: &str,
        run: u32,
    ) -> LogFile {
        let path = pod_log_dir(store.root(), namespace, pod, uid)
            .join(container)
            .join(format!("{run}.log"));
        LogFile::open(&path).expect("open")
    }

    async fn collect(stream: impl futures::Stream<Item = std::io::Result<Bytes>>) -> String {
        let chunks: Vec<_> = stream.collect().await;
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend_from_slice(&chunk.expect("chunk"));
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn write_then_read_current_and_previous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path().to_path_buf());
        for run in 0..2 {
            let log = open(&store, "ns", "web", "uid-1", "main", run);
            log.write(LogStream::Stdout, format!("run {run}\npartial").as_bytes());
        }
        let current = store.find("ns", "web", "main", false).expect("current");
        assert!(current.ends_with("ns_web_uid-1/main/1.log"), "{current:?}");
        let previous = store.find("ns", "web", "main", true).expect("previous");
        let text = collect(
            store
                .read(previous, LogOptions::default(), Timestamp::now())
                .await
                .expect("read"),
        )
        .await;
        assert_eq!(text, "run 0\npartial\n");
        let text = collect(
            store
                .read(current, LogOptions::default(), Timestamp::now())
                .await
                .expect("read"),
        )
        .await;
        assert_eq!(text, "run 1\npartial\n");

        let err = store
            .find("ns", "web", "other", false)
            .expect_err("missing");
        expect!["container other is not valid for pod web"].assert_eq(&err.to_string());
        let err = store
            .find("ns", "nope", "main", false)
            .expect_err("missing");
        expect!["pod ns/nope has no logs on this node"].assert_eq(&err.to_string());
        open(&store, "ns", "solo", "uid-2", "c", 0);
        let err = store
            .find("ns", "solo", "c", true)
            .expect_err("no previous");
        expect!["previous terminated container c in pod solo not found"]
            .assert_eq(&err.to_string());
    }

    #[tokio::test]
    async fn follow_streams_until_the_run_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path().to_path_buf());
        let log = open(&store, "ns", "web", "uid-1", "main", 0);
        let live = store.live(log.path());
        log.write(LogStream::Stdout, b"before\n");
        let path = store.find("ns", "web", "main", false).expect("find");
        let mut stream = Box::pin(
            store
                .read(
                    path,
                    LogOptions {
                        follow: true,
                        ..LogOptions::default()
                    },
                    Timestamp::now(),
                )
                .await
                .expect("read"),
        );
        let first = stream.next().await.expect("first").expect("ok");
        assert_eq!(&first[..], b"before\n");
        log.write(LogStream::Stdout, b"after");
        log.write(LogStream::Stdout, b" one\n");
        let next = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("in time")
            .expect("item")
            .expect("ok");
        assert_eq!(&next[..], b"after one\n");
        log.write(LogStream::Stderr, b"last words");
        // As a runtime does: the log is flushed before the run is known to have ended.
        drop(log);
        drop(live);
        let rest = tokio::time::timeout(Duration::from_secs(10), collect(stream))
            .await
            .expect("stream ends");
        assert_eq!(rest, "last words\n");
    }

    #[tokio::test]
    async fn http_endpoint() {
        use tower::ServiceExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::new(dir.path().to_path_buf());
        open(&store, "ns", "web", "uid-1", "main", 0).write(LogStream::Stdout, b"a\nb\nc\n");
        let app = router(store);
        let get = |uri: &str| {
            axum::http::Request::builder()
                .uri(uri)
                .body(Body::empty())
                .expect("request")
        };
        let body = |response: Response| async move {
            let status = response.status();
            let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .expect("body");
            format!("{} {}", status.as_u16(), String::from_utf8_lossy(&bytes))
        };
        let r = app.clone().oneshot(get("/healthz")).await.expect("call");
        assert_eq!(body(r).await, "200 ok");
        let r = app
            .clone()
            .oneshot(get("/containerLogs/ns/web/main?tailLines=2&follow=true"))
            .await
            .expect("call");
        assert_eq!(body(r).await, "200 b\nc\n");
        let r = app
            .clone()
            .oneshot(get("/containerLogs/ns/web/main?previous=true"))
            .await
            .expect("call");
        assert_eq!(
            body(r).await,
            "404 previous terminated container main in pod web not found"
        );
        let r = app
            .oneshot(get("/containerLogs/ns/web/main?tailLines=x"))
            .await
            .expect("call");
        assert_eq!(body(r).await, "400 invalid parameter tailLines=x");
    }
}

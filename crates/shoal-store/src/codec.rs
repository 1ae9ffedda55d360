//! Byte encodings of what the store keeps on disk: key records, watch history events and raft
//! log entries.
//!
//! Values are opaque bytes that can reach 1.5 MiB, so they are written raw (length-prefixed)
//! rather than through a self-describing format; raft metadata (log ids, membership) is small
//! and goes through `serde_json`. This module does no IO.

use bytes::Bytes;
use openraft::{Entry, EntryPayload, LogId, Membership};
use serde::{Deserialize, Serialize};

use crate::raft::{Request, TypeConfig};
use crate::{KeyValue, WatchEvent};

/// A record that could not be decoded: the file is damaged or from another version.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct CorruptRecord(pub &'static str);

/// `serde(with = ...)` helper that keeps `Bytes` compact in binary formats.
pub(crate) mod bytes_serde {
    use bytes::Bytes;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        Vec::<u8>::deserialize(d).map(Bytes::from)
    }
}

pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Writer(Vec::with_capacity(n))
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        // Values are bounded by MAX_VALUE_BYTES and keys by the apiserver: u32 is ample.
        self.0.extend_from_slice(&(v.len() as u32).to_le_bytes());
        self.0.extend_from_slice(v);
    }
}

pub(crate) struct Reader<'a>(pub(crate) &'a [u8]);

impl<'a> Reader<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptRecord> {
        if self.0.len() < n {
            return Err(CorruptRecord("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, CorruptRecord> {
        Ok(self.take(1)?[0])
    }
    pub(crate) fn u64(&mut self) -> Result<u64, CorruptRecord> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    pub(crate) fn bytes(&mut self) -> Result<&'a [u8], CorruptRecord> {
        let b = self.take(4)?;
        let mut a = [0u8; 4];
        a.copy_from_slice(b);
        self.take(u32::from_le_bytes(a) as usize)
    }
    pub(crate) fn string(&mut self) -> Result<String, CorruptRecord> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| CorruptRecord("key is not utf-8"))
    }
}

/// The value of a key record: `create_revision`, `mod_revision`, then the value bytes.
pub fn encode_record(create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(16 + value.len());
    w.u64(create_revision);
    w.u64(mod_revision);
    w.0.extend_from_slice(value);
    w.0
}

pub fn decode_record(key: &str, raw: &[u8]) -> Result<KeyValue, CorruptRecord> {
    let mut r = Reader(raw);
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(r.0),
        create_revision,
        mod_revision,
    })
}

/// Only the `mod_revision` of a key record, without copying the value.
pub fn record_mod_revision(raw: &[u8]) -> Result<u64, CorruptRecord> {
    let mut r = Reader(raw);
    r.u64()?;
    r.u64()
}

fn write_kv_body(w: &mut Writer, kv: &KeyValue) {
    w.u64(kv.create_revision);
    w.u64(kv.mod_revision);
    w.bytes(&kv.value);
}

fn read_kv_body(r: &mut Reader<'_>, key: &str) -> Result<KeyValue, CorruptRecord> {
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    let value = Bytes::copy_from_slice(r.bytes()?);
    Ok(KeyValue {
        key: key.to_owned(),
        value,
        create_revision,
        mod_revision,
    })
}

pub fn encode_event(event: &WatchEvent) -> Vec<u8> {
    match event {
        WatchEvent::Put { kv, prev } => {
            let mut w = Writer::with_capacity(
                64 + kv.key.len() + kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len()),
            );
            w.u8(0);
            w.bytes(kv.key.as_bytes());
            write_kv_body(&mut w, kv);
            match prev {
                None => w.u8(0),
                Some(p) => {
                    w.u8(1);
                    write_kv_body(&mut w, p);
                }
            }
            w.0
        }
        WatchEvent::Delete { prev, revision } => {
            let mut w = Writer::with_capacity(48 + prev.key.len() + prev.value.len());
            w.u8(1);
            w.bytes(prev.key.as_bytes());
            w.u64(*revision);
            write_kv_body(&mut w, prev);
            w.0
        }
    }
}

pub fn decode_event(raw: &[u8]) -> Result<WatchEvent, CorruptRecord> {
    let mut r = Reader(raw);
    let tag = r.u8()?;
    let key = r.string()?;
    match tag {
        0 => {
            let kv = read_kv_body(&mut r, &key)?;
            let prev = match r.u8()? {
                0 => None,
                _ => Some(read_kv_body(&mut r, &key)?),
            };
            Ok(WatchEvent::Put { kv, prev })
        }
        1 => {
            let revision = r.u64()?;
            let prev = read_kv_body(&mut r, &key)?;
            Ok(WatchEvent::Delete { prev, revision })
        }
        _ => Err(CorruptRecord("unknown event tag")),
    }
}

/// A log entry's id and kind; a write's request follows it in binary.
#[derive(Serialize, Deserialize)]
struct EntryHead {
    log_id: LogId<u64>,
    payload: PayloadHead,
}

#[derive(Serialize, Deserialize)]
enum PayloadHead {
    Blank,
    Membership(Membership<u64, openraft::BasicNode>),
    Normal,
}

fn write_expected(w: &mut Writer, expected: Option<u64>) {
    match expected {
        None => w.u8(0),
        Some(e) => {
            w.u8(1);
            w.u64(e);
        }
    }
}

fn read_expected(r: &mut Reader<'_>) -> Result<Option<u64>, CorruptRecord> {
    Ok(match r.u8()? {
        0 => None,
        _ => Some(r.u64()?),
    })
}

fn write_request(w: &mut Writer, req: &Request) {
    match req {
        Request::Create { key, value } => {
            w.u8(0);
            w.bytes(key.as_bytes());
            w.bytes(value);
        }
        Request::Update {
            key,
            value,
            expected,
        } => {
            w.u8(1);
            w.bytes(key.as_bytes());
            w.bytes(value);
            write_expected(w, *expected);
        }
        Request::Delete { key, expected } => {
            w.u8(2);
            w.bytes(key.as_bytes());
            write_expected(w, *expected);
        }
        Request::Compact { keep } => {
            w.u8(3);
            w.u64(*keep);
        }
        Request::Batch(requests) => {
            w.u8(4);
            w.u64(requests.len() as u64);
            for r in requests {
                write_request(w, r);
            }
        }
    }
}

fn read_request(r: &mut Reader<'_>) -> Result<Request, CorruptRecord> {
    Ok(match r.u8()? {
        0 => Request::Create {
            key: r.string()?,
            value: Bytes::copy_from_slice(r.bytes()?),
        },
        1 => Request::Update {
            key: r.string()?,
            value: Bytes::copy_from_slice(r.bytes()?),
            expected: read_expected(r)?,
        },
        2 => Request::Delete {
            key: r.string()?,
            expected: read_expected(r)?,
        },
        3 => Request::Compact { keep: r.u64()? },
        4 => {
            let n = r.u64()?;
            // Each request takes at least one byte: a bound against corrupt counts.
            if n > r.0.len() as u64 {
                return Err(CorruptRecord("batch count"));
            }
            let mut requests = Vec::with_capacity(n as usize);
            for _ in 0..n {
                requests.push(read_request(r)?);
            }
            Request::Batch(requests)
        }
        _ => return Err(CorruptRecord("unknown request tag")),
    })
}

fn request_size(req: &Request) -> usize {
    match req {
        Request::Create { key, value } | Request::Update { key, value, .. } => {
            32 + key.len() + value.len()
        }
        Request::Delete { key, .. } => 32 + key.len(),
        Request::Compact { .. } => 16,
        Request::Batch(requests) => 16 + requests.iter().map(request_size).sum::<usize>(),
    }
}

pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, serde_json::Error> {
    let (payload, request) = match &entry.payload {
        EntryPayload::Blank => (PayloadHead::Blank, None),
        EntryPayload::Membership(m) => (PayloadHead::Membership(m.clone()), None),
        EntryPayload::Normal(req) => (PayloadHead::Normal, Some(req)),
    };
    let head = serde_json::to_vec(&EntryHead {
        log_id: entry.log_id,
        payload,
    })?;
    let mut w = Writer::with_capacity(8 + head.len() + request.map_or(0, request_size));
    w.bytes(&head);
    if let Some(req) = request {
        write_request(&mut w, req);
    }
    Ok(w.0)
}

pub fn decode_entry(raw: &[u8]) -> Result<Entry<TypeConfig>, CorruptRecord> {
    let mut r = Reader(raw);
    let head: EntryHead =
        serde_json::from_slice(r.bytes()?).map_err(|_| CorruptRecord("bad log entry header"))?;
    let payload = match head.payload {
        PayloadHead::Blank => EntryPayload::Blank,
        PayloadHead::Membership(m) => EntryPayload::Membership(m),
        PayloadHead::Normal => EntryPayload::Normal(read_request(&mut r)?),
    };
    Ok(Entry {
        log_id: head.log_id,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str, c: u64, m: u64) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
            create_revision: c,
            mod_revision: m,
        }
    }

    #[test]
    fn events_round_trip() {
        let events = [
            WatchEvent::Put {
                kv: kv("/a", "x", 1, 1),
                prev: None,
            },
            WatchEvent::Put {
                kv: kv("/a", "yy", 1, 2),
                prev: Some(kv("/a", "x", 1, 1)),
            },
            WatchEvent::Delete {
                prev: kv("/a", "", 1, 2),
                revision: 3,
            },
        ];
        for e in events {
            let back = decode_event(&encode_event(&e)).expect("decodes");
            assert_eq!(back, e);
        }
    }

    #[test]
    fn records_round_trip() {
        let raw = encode_record(3, 7, b"hello");
        assert_eq!(
            decode_record("/k", &raw).expect("decodes"),
            kv("/k", "hello", 3, 7)
        );
        assert_eq!(record_mod_revision(&raw).expect("decodes"), 7);
        assert!(decode_record("/k", &raw[..5]).is_err());
    }

    #[test]
    fn entries_round_trip() {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(2, 1), 9);
        for req in [
            Request::Create {
                key: "/a".into(),
                value: Bytes::from_static(b"v1"),
            },
            Request::Update {
                key: "/a".into(),
                value: Bytes::from_static(b""),
                expected: Some(4),
            },
            Request::Delete {
                key: "/a".into(),
                expected: None,
            },
            Request::Compact { keep: 10 },
            Request::Batch(vec![
                Request::Delete {
                    key: "/b".into(),
                    expected: Some(1),
                },
                Request::Create {
                    key: "/c".into(),
                    value: Bytes::from_static(b"v"),
                },
            ]),
        ] {
            let entry = Entry::<TypeConfig> {
                log_id,
                payload: EntryPayload::Normal(req.clone()),
            };
            let back = decode_entry(&encode_entry(&entry).expect("encodes")).expect("decodes");
            assert_eq!(back.log_id, log_id);
            match back.payload {
                EntryPayload::Normal(r) => assert_eq!(r, req),
                _ => panic!("wrong payload"),
            }
        }
    }
}

//! Byte encodings of what the store keeps on disk and sends between members: key records,
//! watch history events, raft log entries and remembered write outcomes.
//!
//! Values are opaque bytes that can reach 1.5 MiB, so they are written raw (length-prefixed)
//! rather than through a self-describing format; raft metadata (log ids, membership) is small
//! and goes through `serde_json`. Every record, event and entry carries a CRC-32C-style
//! checksum (crc32fast) of its bytes (and, for key records, of the key): a flipped byte is
//! reported as corruption of that key, never served as data. This module does no IO.

use bytes::Bytes;
use openraft::{Entry, EntryPayload, LogId, Membership};
use serde::{Deserialize, Serialize};

use crate::raft::{Member, Op, OpId, Outcome, Request, TypeConfig, Write};
use crate::{KeyValue, WatchEvent};

/// A record that could not be decoded or failed its checksum: the file is damaged or from
/// another version.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record: {0}")]
pub struct CorruptRecord(pub &'static str);

/// `serde(with = ...)` helper that keeps `Bytes` compact in binary formats.
pub(crate) mod bytes_serde {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        serde_bytes_vec(d).map(Bytes::from)
    }

    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = a.next_element()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
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
    /// Appends the checksum of everything written so far (and of `extra`, e.g. the key).
    fn seal(mut self, extra: &[u8]) -> Vec<u8> {
        let sum = checksum(extra, &self.0);
        self.0.extend_from_slice(&sum.to_le_bytes());
        self.0
    }
}

fn checksum(extra: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(extra);
    h.update(body);
    h.finalize()
}

/// Checks and strips the trailing checksum of `raw` (computed over `extra` and the body).
fn unseal<'a>(extra: &[u8], raw: &'a [u8]) -> Result<&'a [u8], CorruptRecord> {
    if raw.len() < 4 {
        return Err(CorruptRecord("truncated"));
    }
    let (body, sum) = raw.split_at(raw.len() - 4);
    let mut a = [0u8; 4];
    a.copy_from_slice(sum);
    if u32::from_le_bytes(a) != checksum(extra, body) {
        return Err(CorruptRecord("checksum mismatch"));
    }
    Ok(body)
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

/// The value of a key record: `create_revision`, `mod_revision`, the value bytes, then a
/// checksum over the key and all of that.
pub fn encode_record(key: &str, create_revision: u64, mod_revision: u64, value: &[u8]) -> Vec<u8> {
    let mut w = Writer::with_capacity(20 + value.len());
    w.u64(create_revision);
    w.u64(mod_revision);
    w.0.extend_from_slice(value);
    w.seal(key.as_bytes())
}

pub fn decode_record(key: &str, raw: &[u8]) -> Result<KeyValue, CorruptRecord> {
    let mut r = Reader(unseal(key.as_bytes(), raw)?);
    let create_revision = r.u64()?;
    let mod_revision = r.u64()?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: Bytes::copy_from_slice(r.0),
        create_revision,
        mod_revision,
    })
}

/// Checks a key record without copying its value.
pub fn check_record(key: &str, raw: &[u8]) -> Result<(), CorruptRecord> {
    let mut r = Reader(unseal(key.as_bytes(), raw)?);
    r.u64()?;
    r.u64()?;
    Ok(())
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
            w.seal(&[])
        }
        WatchEvent::Delete { prev, revision } => {
            let mut w = Writer::with_capacity(48 + prev.key.len() + prev.value.len());
            w.u8(1);
            w.bytes(prev.key.as_bytes());
            w.u64(*revision);
            write_kv_body(&mut w, prev);
            w.seal(&[])
        }
    }
}

/// A history event as stored. An update names the value it replaced by that value's revision
/// (where the update before it is in history, or in the kept table once compacted) instead of
/// repeating it: without it every update would cost its value twice on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum StoredEvent {
    Full(WatchEvent),
    /// A put whose previous value is the put of the same key at `prev_revision`.
    PutAfter {
        kv: KeyValue,
        prev_revision: u64,
    },
}

/// An update stored as `StoredEvent::PutAfter`.
pub fn encode_put_after(kv: &KeyValue, prev_revision: u64) -> Vec<u8> {
    let mut w = Writer::with_capacity(64 + kv.key.len() + kv.value.len());
    w.u8(2);
    w.bytes(kv.key.as_bytes());
    write_kv_body(&mut w, kv);
    w.u64(prev_revision);
    w.seal(&[])
}

pub fn decode_event(raw: &[u8]) -> Result<StoredEvent, CorruptRecord> {
    let mut r = Reader(unseal(&[], raw)?);
    let tag = r.u8()?;
    let key = r.string()?;
    match tag {
        0 => {
            let kv = read_kv_body(&mut r, &key)?;
            let prev = match r.u8()? {
                0 => None,
                _ => Some(read_kv_body(&mut r, &key)?),
            };
            Ok(StoredEvent::Full(WatchEvent::Put { kv, prev }))
        }
        1 => {
            let revision = r.u64()?;
            let prev = read_kv_body(&mut r, &key)?;
            Ok(StoredEvent::Full(WatchEvent::Delete { prev, revision }))
        }
        2 => {
            let kv = read_kv_body(&mut r, &key)?;
            let prev_revision = r.u64()?;
            Ok(StoredEvent::PutAfter { kv, prev_revision })
        }
        _ => Err(CorruptRecord("unknown event tag")),
    }
}

/// A remembered write outcome. A delete's removed value is not repeated here: it is the
/// history event at the delete's revision, which lives at least as long.
pub fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    let mut w = Writer::with_capacity(24);
    match outcome {
        Outcome::Written {
            create_revision,
            mod_revision,
        } => {
            w.u8(0);
            w.u64(*create_revision);
            w.u64(*mod_revision);
        }
        Outcome::Deleted { revision, .. } => {
            w.u8(1);
            w.u64(*revision);
        }
        Outcome::AlreadyExists => w.u8(2),
        Outcome::NotFound => w.u8(3),
        Outcome::Conflict { current } => {
            w.u8(4);
            w.u64(*current);
        }
        Outcome::Expired => w.u8(5),
    }
    w.seal(&[])
}

/// A remembered outcome; a delete is returned as `Err(revision)`, for the caller to fetch
/// the removed value from history.
pub fn decode_outcome(raw: &[u8]) -> Result<Result<Outcome, u64>, CorruptRecord> {
    let mut r = Reader(unseal(&[], raw)?);
    Ok(Ok(match r.u8()? {
        0 => Outcome::Written {
            create_revision: r.u64()?,
            mod_revision: r.u64()?,
        },
        1 => return Ok(Err(r.u64()?)),
        2 => Outcome::AlreadyExists,
        3 => Outcome::NotFound,
        4 => Outcome::Conflict { current: r.u64()? },
        5 => Outcome::Expired,
        _ => return Err(CorruptRecord("unknown outcome tag")),
    }))
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
    Membership(Membership<u64, Member>),
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

fn write_op(w: &mut Writer, op: &Op) {
    w.u64(op.id.ticket);
    w.u64(op.id.nonce);
    match &op.write {
        Write::Create { key, value } => {
            w.u8(0);
            w.bytes(key.as_bytes());
            w.bytes(value);
        }
        Write::Update {
            key,
            value,
            expected,
        } => {
            w.u8(1);
            w.bytes(key.as_bytes());
            w.bytes(value);
            write_expected(w, *expected);
        }
        Write::Delete { key, expected } => {
            w.u8(2);
            w.bytes(key.as_bytes());
            write_expected(w, *expected);
        }
        Write::Put { key, value } => {
            w.u8(3);
            w.bytes(key.as_bytes());
            w.bytes(value);
        }
    }
}

fn read_op(r: &mut Reader<'_>) -> Result<Op, CorruptRecord> {
    let id = OpId {
        ticket: r.u64()?,
        nonce: r.u64()?,
    };
    let write = match r.u8()? {
        0 => Write::Create {
            key: r.string()?,
            value: Bytes::copy_from_slice(r.bytes()?),
        },
        1 => Write::Update {
            key: r.string()?,
            value: Bytes::copy_from_slice(r.bytes()?),
            expected: read_expected(r)?,
        },
        2 => Write::Delete {
            key: r.string()?,
            expected: read_expected(r)?,
        },
        3 => Write::Put {
            key: r.string()?,
            value: Bytes::copy_from_slice(r.bytes()?),
        },
        _ => return Err(CorruptRecord("unknown write tag")),
    };
    Ok(Op { id, write })
}

fn write_request(w: &mut Writer, req: &Request) {
    match req {
        Request::Ops(ops) => {
            w.u8(0);
            w.u64(ops.len() as u64);
            for op in ops {
                write_op(w, op);
            }
        }
        Request::Compact { keep } => {
            w.u8(1);
            w.u64(*keep);
        }
    }
}

fn read_request(r: &mut Reader<'_>) -> Result<Request, CorruptRecord> {
    Ok(match r.u8()? {
        0 => {
            let n = r.u64()?;
            // Each op takes at least 17 bytes: a bound against corrupt counts.
            if n > r.0.len() as u64 / 17 {
                return Err(CorruptRecord("op count"));
            }
            let mut ops = Vec::with_capacity(n as usize);
            for _ in 0..n {
                ops.push(read_op(r)?);
            }
            Request::Ops(ops)
        }
        1 => Request::Compact { keep: r.u64()? },
        _ => return Err(CorruptRecord("unknown request tag")),
    })
}

/// Approximate bytes `req` takes once encoded.
pub fn request_size(req: &Request) -> usize {
    match req {
        Request::Ops(ops) => 16 + ops.iter().map(|op| op.write.size()).sum::<usize>(),
        Request::Compact { .. } => 16,
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
    let mut w = Writer::with_capacity(12 + head.len() + request.map_or(0, request_size));
    w.bytes(&head);
    if let Some(req) = request {
        write_request(&mut w, req);
    }
    Ok(w.seal(&[]))
}

pub fn decode_entry(raw: &[u8]) -> Result<Entry<TypeConfig>, CorruptRecord> {
    let mut r = Reader(unseal(&[], raw)?);
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
            assert_eq!(back, StoredEvent::Full(e));
        }
        let after = encode_put_after(&kv("/a", "zz", 1, 9), 4);
        assert_eq!(
            decode_event(&after).expect("decodes"),
            StoredEvent::PutAfter {
                kv: kv("/a", "zz", 1, 9),
                prev_revision: 4
            }
        );
        for i in 0..after.len() {
            let mut bad = after.clone();
            bad[i] ^= 0x10;
            assert!(decode_event(&bad).is_err(), "put-after flip at {i}");
        }
    }

    #[test]
    fn records_round_trip() {
        let raw = encode_record("/k", 3, 7, b"hello");
        assert_eq!(
            decode_record("/k", &raw).expect("decodes"),
            kv("/k", "hello", 3, 7)
        );
        assert!(check_record("/k", &raw).is_ok());
        assert!(decode_record("/k", &raw[..5]).is_err());
    }

    #[test]
    fn every_flipped_byte_of_a_record_is_detected() {
        let raw = encode_record("/k", 3, 7, b"hello");
        for i in 0..raw.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = raw.clone();
                bad[i] ^= bit;
                assert!(decode_record("/k", &bad).is_err(), "flip at {i}");
            }
        }
        // A record moved under another key is detected too.
        assert!(decode_record("/other", &raw).is_err());
        let event = encode_event(&WatchEvent::Put {
            kv: kv("/a", "x", 1, 1),
            prev: None,
        });
        for i in 0..event.len() {
            let mut bad = event.clone();
            bad[i] ^= 0x10;
            assert!(decode_event(&bad).is_err(), "event flip at {i}");
        }
    }

    #[test]
    fn outcomes_round_trip() {
        for o in [
            Outcome::Written {
                create_revision: 3,
                mod_revision: 9,
            },
            Outcome::AlreadyExists,
            Outcome::NotFound,
            Outcome::Conflict { current: 4 },
            Outcome::Expired,
        ] {
            assert_eq!(decode_outcome(&encode_outcome(&o)).expect("decodes"), Ok(o));
        }
        let deleted = Outcome::Deleted {
            prev: kv("/a", "x", 1, 2),
            revision: 5,
        };
        assert_eq!(
            decode_outcome(&encode_outcome(&deleted)).expect("decodes"),
            Err(5)
        );
    }

    #[test]
    fn entries_round_trip() {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(2, 1), 9);
        let id = OpId {
            ticket: 7,
            nonce: 42,
        };
        for req in [
            Request::Ops(vec![Op {
                id,
                write: Write::Create {
                    key: "/a".into(),
                    value: Bytes::from_static(b"v1"),
                },
            }]),
            Request::Ops(vec![
                Op {
                    id,
                    write: Write::Update {
                        key: "/a".into(),
                        value: Bytes::from_static(b""),
                        expected: Some(4),
                    },
                },
                Op {
                    id,
                    write: Write::Delete {
                        key: "/b".into(),
                        expected: None,
                    },
                },
                Op {
                    id,
                    write: Write::Put {
                        key: "/c".into(),
                        value: Bytes::from_static(b"put"),
                    },
                },
            ]),
            Request::Compact { keep: 10 },
        ] {
            let entry = Entry::<TypeConfig> {
                log_id,
                payload: EntryPayload::Normal(req.clone()),
            };
            let raw = encode_entry(&entry).expect("encodes");
            let back = decode_entry(&raw).expect("decodes");
            assert_eq!(back.log_id, log_id);
            match back.payload {
                EntryPayload::Normal(r) => assert_eq!(r, req),
                _ => panic!("wrong payload"),
            }
            let mut bad = raw.clone();
            let mid = bad.len() / 2;
            bad[mid] ^= 1;
            assert!(decode_entry(&bad).is_err());
        }
    }
}

//! The openraft type configuration: who a member is (`Member`), what a log entry carries
//! (`Request`), and what applying it answers (`Response`).
//!
//! Every write is an [`Op`] with an [`OpId`] chosen by the member that first received it. A
//! member retries a write whose fate it could not learn (leader change, lost forward) with the
//! same id, and the state machine remembers the outcome of every id it applied, so a retried
//! write is answered with its first outcome instead of being applied twice.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::KeyValue;
use crate::codec::bytes_serde;

openraft::declare_raft_types!(
    /// Shoal's raft types: members are `u64` ids with a [`Member`] record; snapshots are files.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = Member,
        SnapshotData = tokio::fs::File,
);

/// A control-plane member as the cluster records it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Human name (the host name by default), shown by `shoal member list`.
    pub name: String,
    /// `host:port` of its member-to-member (raft) listener.
    pub raft_addr: String,
    /// `https://host:port` of its apiserver.
    pub api_url: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (raft {}, api {})",
            self.name, self.raft_addr, self.api_url
        )
    }
}

/// Identifies one write across retries. `ticket` is the store revision the first receiving
/// member had applied when it accepted the write: ids are forgotten together with the watch
/// history they are older than, and a write whose ticket is older than that is refused
/// (`Outcome::Expired`) rather than risk applying it twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OpId {
    pub ticket: u64,
    pub nonce: u64,
}

impl OpId {
    /// The key of this id in the state machine's table of outcomes (ordered by ticket).
    pub fn key(self) -> u128 {
        (u128::from(self.ticket) << 64) | u128::from(self.nonce)
    }
}

/// One key write. Conditions are checked when the entry is applied, so a failed condition is
/// decided at its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Write {
    Create {
        key: String,
        #[serde(with = "bytes_serde")]
        value: Bytes,
    },
    Update {
        key: String,
        #[serde(with = "bytes_serde")]
        value: Bytes,
        expected: Option<u64>,
    },
    Delete {
        key: String,
        expected: Option<u64>,
    },
    /// Create or overwrite, unconditionally (etcd's put).
    Put {
        key: String,
        #[serde(with = "bytes_serde")]
        value: Bytes,
    },
}

impl Write {
    /// Approximate bytes this write takes in a log entry.
    pub fn size(&self) -> usize {
        match self {
            Write::Create { key, value }
            | Write::Update { key, value, .. }
            | Write::Put { key, value } => 40 + key.len() + value.len(),
            Write::Delete { key, .. } => 40 + key.len(),
        }
    }
}

/// A write and its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    pub id: OpId,
    pub write: Write,
}

/// What one log entry asks of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Writes applied in order, each with its own outcome: many concurrent writes share one
    /// entry (and one fsync per member).
    Ops(Vec<Op>),
    /// Drop watch history (and remembered write ids) so that at least the last `keep`
    /// revisions remain.
    Compact { keep: u64 },
}

/// What applying one write answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A create or update took `mod_revision`; the key was created at `create_revision`.
    Written {
        create_revision: u64,
        mod_revision: u64,
    },
    /// A delete took `revision`; `prev` is the value it removed.
    Deleted {
        prev: KeyValue,
        revision: u64,
    },
    AlreadyExists,
    NotFound,
    Conflict {
        current: u64,
    },
    /// The write's id is older than the remembered ids: whether an earlier attempt was
    /// applied cannot be told, so this one was not.
    Expired,
}

/// What applying one entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// One outcome per op of `Request::Ops`.
    Ops(Vec<Outcome>),
    /// History up to and including `compacted` is gone.
    Compacted { compacted: u64 },
    /// A blank or membership entry.
    Empty,
}

//! The openraft type configuration: what a log entry carries (`Request`), what applying it
//! answers (`Response`), and the network of a one-member cluster.
//!
//! The network here reaches nobody: with one voter there is no peer to call, so every RPC
//! answers `Unreachable`. Replication to other members is not implemented yet.

use std::io::Cursor;

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use serde::{Deserialize, Serialize};

use crate::KeyValue;
use crate::codec::bytes_serde;

openraft::declare_raft_types!(
    /// Shoal's raft types: node ids are `u64`, nodes carry an address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The id the single member uses.
pub const NODE_ID: u64 = 1;

/// One write, as proposed to raft. Conditions are checked when the entry is applied, so a
/// failed condition is decided at its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
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
    /// Drop watch history, keeping at least the last `keep` revisions.
    Compact {
        keep: u64,
    },
    /// Several requests in one log entry, applied in order, each with its own response: the
    /// raft core appends one entry per fsync, so concurrent writes are grouped before it.
    Batch(Vec<Request>),
}

/// What applying one entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A create or update succeeded.
    Written(KeyValue),
    /// A delete succeeded at `revision`.
    Deleted {
        prev: KeyValue,
        revision: u64,
    },
    AlreadyExists,
    NotFound,
    Conflict {
        current: u64,
    },
    /// History up to and including `compacted` is gone.
    Compacted {
        compacted: u64,
    },
    /// A blank or membership entry.
    Empty,
    /// One response per request of a `Batch`.
    Batch(Vec<Response>),
}

/// Builds the (unreachable) connections to peers.
#[derive(Debug, Clone, Default)]
pub struct Network;

/// A connection to a peer that never answers.
#[derive(Debug)]
pub struct NoPeer {
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("node {0} is not reachable: shoal runs one raft member")]
struct NoPeerError(u64);

impl NoPeer {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoPeerError(self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        NoPeer { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}

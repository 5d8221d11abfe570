//! The history of client operations the checker judges: what each client
//! asked, when it asked, when it heard back and what it heard.

use super::host::Time;
use crate::hlc::Version;
use crate::net::codec::Expiry;

/// What an operation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A PUT of a value unique to this operation.
    Put,
    /// A DEL.
    Del,
    /// A GET.
    Get,
}

/// How an operation ended, as its client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet (the run ended first).
    Pending,
    /// A PUT or DEL was acknowledged.
    Acked,
    /// A GET found this value.
    Value(Vec<u8>),
    /// A GET found nothing.
    NotFound,
    /// The client gave up or was refused: the write may or may not land.
    Failed(String),
}

/// One operation of one client.
#[derive(Clone, Debug)]
pub struct Op {
    /// The client (index).
    pub client: usize,
    /// PUT, DEL or GET.
    pub kind: Kind,
    /// The key.
    pub key: Vec<u8>,
    /// A PUT's value (unique in the run).
    pub value: Option<Vec<u8>>,
    /// A PUT's expiry, as the client sent it.
    pub expiry: Expiry,
    /// When the client invoked it.
    pub invoke: Time,
    /// When the client heard the outcome (None while pending).
    pub end: Option<Time>,
    /// The node that coordinated it, if one answered.
    pub node: u32,
    /// The outcome.
    pub outcome: Outcome,
    /// The version a GET's value came with.
    pub seen: Option<Version>,
}

impl Op {
    /// True for an acknowledged PUT or DEL.
    pub fn acked(&self) -> bool {
        self.outcome == Outcome::Acked
    }

    /// True for a PUT or DEL.
    pub fn is_write(&self) -> bool {
        self.kind != Kind::Get
    }
}

/// Every operation of a run, in invocation order.
#[derive(Debug, Default)]
pub struct History {
    /// The operations; an index is an operation id.
    pub ops: Vec<Op>,
    /// Writes acknowledged since the world last looked (their ids).
    pub just_acked: Vec<usize>,
    /// GETs invoked since the world last looked.
    pub just_invoked: Vec<usize>,
    /// GETs that found a value since the world last looked.
    pub just_read: Vec<usize>,
}

impl History {
    /// Records an invocation; returns its id.
    pub fn invoke(&mut self, client: usize, kind: Kind, key: Vec<u8>, value: Option<Vec<u8>>, now: Time) -> usize {
        self.ops.push(Op {
            client,
            kind,
            key,
            value,
            expiry: Expiry::Never,
            invoke: now,
            seen: None,
            end: None,
            node: 0,
            outcome: Outcome::Pending,
        });
        if kind == Kind::Get {
            self.just_invoked.push(self.ops.len() - 1);
        }
        self.ops.len() - 1
    }

    /// Records the version a GET's value came with.
    pub fn set_seen(&mut self, id: usize, version: Version) {
        if let Some(op) = self.ops.get_mut(id) {
            op.seen = Some(version);
        }
    }

    /// Records the expiry operation `id` (a PUT) carries.
    pub fn set_expiry(&mut self, id: usize, expiry: Expiry) {
        if let Some(op) = self.ops.get_mut(id) {
            op.expiry = expiry;
        }
    }

    /// Records how operation `id` ended.
    pub fn complete(&mut self, id: usize, outcome: Outcome, node: u32, now: Time) {
        if outcome == Outcome::Acked {
            self.just_acked.push(id);
        }
        if matches!(outcome, Outcome::Value(_)) {
            self.just_read.push(id);
        }
        if let Some(op) = self.ops.get_mut(id) {
            debug_assert_eq!(op.outcome, Outcome::Pending, "an operation ends once");
            op.outcome = outcome;
            op.end = Some(now);
            op.node = node;
        }
    }
}

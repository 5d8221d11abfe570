//! Read floors: the least version a read begun in a settled cluster may
//! return.
//!
//! A read answers with the newest of R copies from the key's preference
//! list. When it begins in a settled cluster (every member up and running,
//! every node on the manager's table, no move pending, every replica's copy
//! of the sector complete), any R of the N replicas' copies include one at
//! least as new as the R-th oldest of them; copies only grow newer (a
//! tombstone or an expired value is reclaimed only once no older value is
//! left anywhere) unless a crash loses unsynced bytes or the table
//! changes. So such a read, ending before either, never returns a value
//! older than that copy: one would be a resurrection of a value a newer
//! write (an expired one, say) overwrote.

use std::collections::BTreeMap;

use super::checker;
use super::history::{History, Kind};
use super::host::Host;
use crate::hlc::Version;
use crate::manager::Manager;
use crate::net::Gate;
use crate::storage::Node;
use crate::table::NodeState;

/// What a read began with.
#[derive(Clone, Debug)]
struct Floor {
    /// The R-th oldest of the replicas' versions.
    version: Version,
    /// The table's epoch.
    epoch: u64,
    /// Crashes so far.
    crashes: u64,
}

/// The floors of the reads in flight, and what ends their validity.
#[derive(Debug, Default)]
pub struct Floors {
    floors: BTreeMap<usize, Floor>,
    crashes: u64,
}

type Nodes = BTreeMap<u32, Host<Gate<Node>>>;

impl Floors {
    /// A process crashed: no floor taken before holds any more.
    pub fn crashed(&mut self) {
        self.crashes += 1;
    }

    /// Read `id` began: takes its floor if the cluster is settled.
    pub fn begin(&mut self, id: usize, history: &History, manager: &Host<Gate<Manager>>, nodes: &Nodes) {
        let Some(op) = history.ops.get(id).filter(|o| o.kind == Kind::Get) else { return };
        let Some(epoch) = settled_epoch(manager, nodes) else { return };
        let Some(m) = manager.running() else { return };
        let t = m.table();
        let sector = t.sector_of(&op.key);
        let mut versions = Vec::new();
        for n in t.preference(sector) {
            let Some(node) = nodes.get(&n).and_then(|h| h.running()).filter(|node| node.holds_synced(sector)) else {
                return;
            };
            // No copy (never written, or reclaimed) is the oldest of all.
            let Ok(item) = node.store().get(sector, &op.key) else { return };
            versions.push(item.map(|i| i.version));
        }
        versions.sort();
        let Some(&Some(version)) = versions.get(t.read_quorum.max(1) as usize - 1) else { return };
        self.floors.insert(id, Floor { version, epoch, crashes: self.crashes });
    }

    /// Read `id` found a value: returns a violation if it is older than
    /// its floor, which still holds.
    pub fn end(
        &mut self,
        id: usize,
        history: &History,
        manager: &Host<Gate<Manager>>,
        nodes: &Nodes,
    ) -> Option<String> {
        let floor = self.floors.remove(&id)?;
        let op = history.ops.get(id)?;
        let seen = op.seen?;
        let holds = floor.crashes == self.crashes && settled_epoch(manager, nodes) == Some(floor.epoch);
        (holds && seen < floor.version).then(|| {
            format!(
                "{}: returned version {seen}, older than {} that R of the replicas held when it began \
                 (a settled cluster): a resurrection",
                checker::describe(op),
                floor.version
            )
        })
    }
}

/// The manager's epoch if the cluster is settled: no move pending, every
/// member up and running on that table.
fn settled_epoch(manager: &Host<Gate<Manager>>, nodes: &Nodes) -> Option<u64> {
    let m = manager.running()?;
    if m.pending().is_some() {
        return None;
    }
    let t = m.table();
    for member in &t.members {
        let node = nodes.get(&member.id).and_then(|h| h.running())?;
        let (table, pending) = node.tables();
        if member.state != NodeState::Up || pending.is_some() || table.is_none_or(|nt| nt.epoch != t.epoch) {
            return None;
        }
    }
    Some(t.epoch)
}

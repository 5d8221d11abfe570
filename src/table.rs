//! The partition table: which node holds which sector, under which epoch.
//!
//! The hash space is cut into `q` equal sectors; a key's sector is the
//! 64-bit FNV-1a hash of its bytes modulo `q` ([`sector_of`]). This hash is
//! part of the on-disk and wire contract and never changes. Each sector has
//! one owner; its preference list is the owner followed by the next distinct
//! nodes in ring order (sector `s`, `s+1`, … wrapping), `rep` nodes in all.
//! The manager changes the table ([`Table::assign_join`],
//! [`Table::assign_leave`]) and bumps the epoch on every change; nodes and
//! clients only read it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The stable 64-bit FNV-1a hash of `key`.
pub fn hash_key(key: &[u8]) -> u64 {
    key.iter().fold(FNV_OFFSET, |h, &b| (h ^ b as u64).wrapping_mul(FNV_PRIME))
}

/// The sector of `key` in a table of `q` sectors (`q` > 0).
pub fn sector_of(key: &[u8], q: u32) -> u32 {
    (hash_key(key) % q.max(1) as u64) as u32
}

/// How a member stands in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    /// Registered and holding its sectors.
    Up,
    /// Silent past the dead-after limit; its sectors are being re-replicated.
    Down,
}

impl NodeState {
    /// The one-byte wire code.
    pub fn code(self) -> u8 {
        match self {
            NodeState::Up => 1,
            NodeState::Down => 2,
        }
    }

    /// Decodes a wire code.
    pub fn from_code(code: u8) -> Option<NodeState> {
        match code {
            1 => Some(NodeState::Up),
            2 => Some(NodeState::Down),
            _ => None,
        }
    }

    /// The word `gtstore status` prints.
    pub fn name(self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The node id (`server<id>`).
    pub id: u32,
    /// Where the node listens, `HOST:PORT`.
    pub addr: String,
    /// Up or down.
    pub state: NodeState,
}

/// The partition table as the manager publishes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// Bumped on every change; newer tables replace older ones.
    pub epoch: u64,
    /// Replicas per key (N).
    pub rep: u32,
    /// Replies a read waits for (R).
    pub read_quorum: u32,
    /// Acknowledgements a write waits for (W).
    pub write_quorum: u32,
    /// Members sorted by id.
    pub members: Vec<Member>,
    /// The owner node id of each sector; `owners.len()` is Q.
    pub owners: Vec<u32>,
}

impl Table {
    /// An empty table of `q` sectors (owner 0 = nobody) at epoch 0.
    pub fn new(q: u32, rep: u32, read_quorum: u32, write_quorum: u32) -> Table {
        Table { epoch: 0, rep, read_quorum, write_quorum, members: Vec::new(), owners: vec![0; q as usize] }
    }

    /// Q, the number of sectors.
    pub fn sectors(&self) -> u32 {
        self.owners.len() as u32
    }

    /// The sector of `key` in this table.
    pub fn sector_of(&self, key: &[u8]) -> u32 {
        sector_of(key, self.sectors())
    }

    /// The member with id `id`.
    pub fn member(&self, id: u32) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The preference list of `sector`: its owner, then the next distinct
    /// owners in ring order, at most `rep` nodes.
    pub fn preference(&self, sector: u32) -> Vec<u32> {
        let q = self.owners.len();
        let want = (self.rep as usize).max(1);
        let mut list: Vec<u32> = Vec::with_capacity(want);
        for step in 0..q {
            let owner = self.owners[(sector as usize + step) % q];
            if owner != 0 && !list.contains(&owner) {
                list.push(owner);
                if list.len() == want {
                    break;
                }
            }
        }
        list
    }

    /// Every owner in ring order starting at `sector`, each once: the
    /// preference list, then the stand-ins for sloppy quorum.
    pub fn ring_from(&self, sector: u32) -> Vec<u32> {
        let q = self.owners.len();
        let mut list: Vec<u32> = Vec::new();
        for step in 0..q {
            let owner = self.owners[(sector as usize + step) % q];
            if owner != 0 && !list.contains(&owner) {
                list.push(owner);
            }
        }
        list
    }

    /// The sectors whose preference list includes `node`.
    pub fn sectors_held_by(&self, node: u32) -> Vec<u32> {
        (0..self.sectors()).filter(|&s| self.preference(s).contains(&node)).collect()
    }

    /// How many sectors `node` owns.
    pub fn owned_by(&self, node: u32) -> usize {
        self.owners.iter().filter(|&&o| o == node).count()
    }

    /// Adds or revives member `id` at `addr` and gives it about Q/n sectors
    /// taken one at a time from the most loaded owners, so that loads differ
    /// by at most one. Bumps the epoch.
    pub fn assign_join(&mut self, id: u32, addr: &str) {
        match self.members.iter_mut().find(|m| m.id == id) {
            Some(m) => {
                m.addr = addr.to_string();
                m.state = NodeState::Up;
            }
            None => {
                self.members.push(Member { id, addr: addr.to_string(), state: NodeState::Up });
                self.members.sort_by_key(|m| m.id);
            }
        }
        self.rebalance();
        self.epoch += 1;
    }

    /// Removes member `id` and spreads its sectors over the others so that
    /// loads differ by at most one. Bumps the epoch.
    pub fn assign_leave(&mut self, id: u32) {
        self.members.retain(|m| m.id != id);
        for owner in self.owners.iter_mut() {
            if *owner == id {
                *owner = 0;
            }
        }
        self.rebalance();
        self.epoch += 1;
    }

    /// Marks member `id` down and moves its sectors to the members that
    /// are up, so loads differ by at most one. Bumps the epoch.
    pub fn mark_down(&mut self, id: u32) {
        if let Some(m) = self.members.iter_mut().find(|m| m.id == id) {
            m.state = NodeState::Down;
        }
        self.rebalance();
        self.epoch += 1;
    }

    /// The up members that hold a sector under `next` that they do not
    /// hold under `self`: the nodes that must receive data before `next`
    /// can become the current table.
    pub fn gainers(&self, next: &Table) -> Vec<u32> {
        next.members
            .iter()
            .filter(|m| m.state == NodeState::Up)
            .map(|m| m.id)
            .filter(|&id| {
                let before = self.sectors_held_by(id);
                next.sectors_held_by(id).iter().any(|s| !before.contains(s))
            })
            .collect()
    }

    /// Gives unowned sectors to the least loaded members, then moves
    /// sectors from the most to the least loaded until loads differ by at
    /// most one. Moves as few sectors as that takes.
    fn rebalance(&mut self) {
        let ids: Vec<u32> = self.members.iter().filter(|m| m.state == NodeState::Up).map(|m| m.id).collect();
        if ids.is_empty() {
            // Nobody is up (the manager lost sight of everyone): sectors keep
            // their down owners, so whoever comes back first knows where the
            // data is; only owners that left the table are forgotten.
            let members: Vec<u32> = self.members.iter().map(|m| m.id).collect();
            self.owners.iter_mut().filter(|o| !members.contains(o)).for_each(|o| *o = 0);
            return;
        }
        // Loads of the up members, kept as sectors change hands: the whole
        // rebalance is O(Q log Q) plus O(n) per sector given or moved.
        let mut loads: BTreeMap<u32, usize> = ids.iter().map(|&id| (id, 0)).collect();
        for o in &self.owners {
            if let Some(l) = loads.get_mut(o) {
                *l += 1;
            }
        }
        let least = |loads: &BTreeMap<u32, usize>| loads.iter().min_by_key(|&(&id, &l)| (l, id)).map(|(&id, _)| id);
        let most =
            |loads: &BTreeMap<u32, usize>| loads.iter().max_by_key(|&(&id, &l)| (l, u32::MAX - id)).map(|(&id, _)| id);
        for s in 0..self.owners.len() {
            if !loads.contains_key(&self.owners[s]) {
                let to = least(&loads).unwrap_or(0);
                self.owners[s] = to;
                if let Some(l) = loads.get_mut(&to) {
                    *l += 1;
                }
            }
        }
        let mut far = Farthest::default();
        loop {
            let (Some(most), Some(least)) = (most(&loads), least(&loads)) else { return };
            if loads[&most] <= loads[&least] + 1 {
                return;
            }
            let Some(p) = far.take(&self.owners, most, least) else { return };
            self.owners[p] = least;
            far.gained(&self.owners, p);
            *loads.entry(most).or_insert(1) -= 1;
            *loads.entry(least).or_insert(0) += 1;
        }
    }
}

/// Finds, sector after sector, the sector of a donor furthest round the
/// ring from every sector of a receiver (the lowest such sector on ties):
/// moving that one spreads each node's sectors evenly, so the replicas of
/// preference lists spread evenly too. Distances to the receiver's
/// nearest sector are computed once per receiver and then only lowered
/// near each sector it gains; each donor's sectors sit in a max-heap by
/// distance whose stale entries are skipped when they surface.
#[derive(Default)]
struct Farthest {
    receiver: Option<u32>,
    dist: Vec<usize>,
    heaps: BTreeMap<u32, BinaryHeap<(usize, Reverse<usize>)>>,
}

impl Farthest {
    /// The sector of `donor` to give `receiver`, if `donor` has one.
    fn take(&mut self, owners: &[u32], donor: u32, receiver: u32) -> Option<usize> {
        if self.receiver != Some(receiver) {
            self.reset(owners, receiver);
        }
        let heap = self.heaps.get_mut(&donor)?;
        while let Some((d, Reverse(s))) = heap.pop() {
            if owners[s] == donor && self.dist[s] == d {
                return Some(s);
            }
        }
        None
    }

    fn reset(&mut self, owners: &[u32], receiver: u32) {
        let q = owners.len();
        self.receiver = Some(receiver);
        self.dist = vec![usize::MAX; q];
        // Two sweeps of the circle in each direction give each sector its
        // distance to the nearest sector of `receiver`.
        for pass in 0..2 {
            let mut last: Option<usize> = None;
            for i in 0..2 * q {
                let s = if pass == 0 { i % q } else { (2 * q - 1 - i) % q };
                if owners[s] == receiver {
                    last = Some(i);
                }
                if let Some(l) = last {
                    self.dist[s] = self.dist[s].min(i - l);
                }
            }
        }
        self.heaps.clear();
        for (s, &o) in owners.iter().enumerate() {
            self.heaps.entry(o).or_default().push((self.dist[s], Reverse(s)));
        }
    }

    /// Sector `p` now belongs to the receiver: the sectors around it whose
    /// nearest receiver sector it became get their new distance.
    fn gained(&mut self, owners: &[u32], p: usize) {
        let q = owners.len();
        for dir in [1, q - 1] {
            for k in 0..q {
                let s = (p + k * dir) % q;
                if self.dist[s] <= k && k > 0 {
                    break;
                }
                self.dist[s] = k;
                self.heaps.entry(owners[s]).or_default().push((k, Reverse(s)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ----- the linear rebalance makes the same choices as the first one -----

    /// The first, quadratic rebalance, kept as the reference.
    fn rebalance_reference(t: &mut Table) {
        let ids: Vec<u32> = t.members.iter().filter(|m| m.state == NodeState::Up).map(|m| m.id).collect();
        if ids.is_empty() {
            // Nobody is up (the manager lost sight of everyone): sectors keep
            // their down owners, so whoever comes back first knows where the
            // data is; only owners that left the table are forgotten.
            let members: Vec<u32> = t.members.iter().map(|m| m.id).collect();
            t.owners.iter_mut().filter(|o| !members.contains(o)).for_each(|o| *o = 0);
            return;
        }
        let load = |owners: &[u32], id: u32| owners.iter().filter(|&&o| o == id).count();
        for s in 0..t.owners.len() {
            if t.owners[s] == 0 || !ids.contains(&t.owners[s]) {
                let least = ids.iter().copied().min_by_key(|&id| (load(&t.owners, id), id));
                t.owners[s] = least.unwrap_or(0);
            }
        }
        loop {
            let most = ids.iter().copied().max_by_key(|&id| (load(&t.owners, id), u32::MAX - id));
            let least = ids.iter().copied().min_by_key(|&id| (load(&t.owners, id), id));
            let (Some(most), Some(least)) = (most, least) else {
                return;
            };
            if load(&t.owners, most) <= load(&t.owners, least) + 1 {
                return;
            }
            match farthest_reference(t, most, least) {
                Some(p) => t.owners[p] = least,
                None => return,
            }
        }
    }

    /// The sector of `donor` furthest round the ring from every sector of
    /// `receiver` (the lowest such sector on ties). Moving that one spreads
    /// each node's sectors evenly, so the replicas of preference lists
    /// spread evenly too.
    fn farthest_reference(t: &Table, donor: u32, receiver: u32) -> Option<usize> {
        let q = t.owners.len();
        let mut dist = vec![usize::MAX; q];
        // Two sweeps of the circle in each direction give each sector its
        // distance to the nearest sector of `receiver`.
        for pass in 0..2 {
            let mut last: Option<usize> = None;
            for i in 0..2 * q {
                let s = if pass == 0 { i % q } else { (2 * q - 1 - i) % q };
                if t.owners[s] == receiver {
                    last = Some(i);
                }
                if let Some(l) = last {
                    dist[s] = dist[s].min(i - l);
                }
            }
        }
        (0..q).filter(|&s| t.owners[s] == donor).max_by_key(|&s| (dist[s], std::cmp::Reverse(s)))
    }

    #[test]
    fn the_linear_rebalance_makes_the_same_choices_as_the_quadratic_one() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for q in [1u32, 2, 7, 16, 64, 1024] {
            let mut t = Table::new(q, 3, 2, 2);
            for _ in 0..60 {
                let id = 1 + next(9) as u32;
                let mut reference = t.clone();
                match next(3) {
                    0 => {
                        t.assign_join(id, "127.0.0.1:1");
                        match reference.members.iter_mut().find(|m| m.id == id) {
                            Some(m) => m.state = NodeState::Up,
                            None => {
                                reference.members.push(Member { id, addr: "127.0.0.1:1".into(), state: NodeState::Up });
                                reference.members.sort_by_key(|m| m.id);
                            }
                        }
                    }
                    1 => {
                        t.assign_leave(id);
                        reference.members.retain(|m| m.id != id);
                    }
                    _ => {
                        t.mark_down(id);
                        if let Some(m) = reference.members.iter_mut().find(|m| m.id == id) {
                            m.state = NodeState::Down;
                        }
                    }
                }
                rebalance_reference(&mut reference);
                assert_eq!(t.owners, reference.owners, "Q={q}, members {:?}", t.members);
            }
        }
    }

    #[test]
    fn joins_to_65536_sectors_are_fast_and_balanced() {
        let mut t = Table::new(65_536, 3, 2, 2);
        let started = std::time::Instant::now();
        for id in 1..=7 {
            t.assign_join(id, "127.0.0.1:1");
        }
        t.mark_down(3);
        t.assign_leave(3);
        let loads: Vec<usize> = (1..=7).filter(|&i| i != 3).map(|id| t.owned_by(id)).collect();
        assert!(loads.iter().max().unwrap() - loads.iter().min().unwrap() <= 1, "{loads:?}");
        // Quadratic, this took minutes; now it is well under a second (a debug build too).
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "{:?}", started.elapsed());
    }

    #[test]
    fn fnv1a_hash_is_stable() {
        assert_eq!(hash_key(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_key(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash_key(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(sector_of(b"key1", 1024), (hash_key(b"key1") % 1024) as u32);
    }

    #[test]
    fn keys_spread_evenly_over_sectors() {
        let q = 1024u32;
        let mut counts = vec![0u32; q as usize];
        for i in 0..200_000 {
            counts[sector_of(format!("key{i}").as_bytes(), q) as usize] += 1;
        }
        let max = *counts.iter().max().unwrap() as f64;
        let mean = 200_000.0 / q as f64;
        assert!(max < mean * 1.4, "max {max} mean {mean}");
    }

    #[test]
    fn joins_keep_loads_within_one_and_move_little() {
        let mut t = Table::new(1024, 3, 2, 2);
        for id in 1..=7 {
            let before = t.owners.clone();
            t.assign_join(id, &format!("127.0.0.1:{}", 7000 + id));
            let moved = before.iter().zip(&t.owners).filter(|(a, b)| a != b).count();
            let loads: Vec<usize> = (1..=id).map(|n| t.owned_by(n)).collect();
            let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(hi - lo <= 1, "loads {loads:?}");
            if id > 1 {
                assert!(moved <= 1024 / id as usize + 1, "moved {moved}");
            }
        }
        assert_eq!(t.epoch, 7);
    }

    #[test]
    fn preference_lists_are_distinct_and_full() {
        let mut t = Table::new(64, 3, 2, 2);
        for id in 1..=5 {
            t.assign_join(id, "127.0.0.1:1");
        }
        for s in 0..64 {
            let p = t.preference(s);
            assert_eq!(p.len(), 3);
            assert_eq!(p[0], t.owners[s as usize]);
            let mut d = p.clone();
            d.dedup();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
        }
        t.assign_leave(3);
        assert!(t.owners.iter().all(|&o| o != 3 && o != 0));
        assert_eq!(t.preference(0).len(), 3);
    }

    #[test]
    fn a_down_node_loses_its_sectors_and_gets_some_back_on_rejoin() {
        let mut t = Table::new(64, 2, 2, 1);
        for id in 1..=4 {
            t.assign_join(id, "127.0.0.1:1");
        }
        let before = t.clone();
        t.mark_down(2);
        assert_eq!(t.owned_by(2), 0);
        assert!(t.member(2).is_some());
        assert_eq!(before.gainers(&t).len(), 3);
        t.assign_join(2, "127.0.0.1:1");
        assert!(t.owned_by(2) >= 15);
    }

    #[test]
    fn replica_load_is_even_after_joins() {
        let mut t = Table::new(1024, 3, 2, 2);
        for id in 1..=7 {
            t.assign_join(id, "127.0.0.1:1");
        }
        let held: Vec<usize> = (1..=7).map(|id| t.sectors_held_by(id).len()).collect();
        let mean = 3.0 * 1024.0 / 7.0;
        assert!(held.iter().all(|&h| (h as f64) < mean * 1.15 && (h as f64) > mean * 0.85), "{held:?}");
    }

    #[test]
    fn fewer_nodes_than_replicas_gives_short_lists() {
        let mut t = Table::new(16, 3, 2, 2);
        t.assign_join(1, "a");
        assert_eq!(t.preference(5), vec![1]);
    }
}

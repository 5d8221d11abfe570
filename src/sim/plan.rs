//! What one seed draws: the cluster's shape, the network's latencies, the
//! clocks' skews and a schedule of faults (swarm testing: each seed turns
//! on its own subset of fault kinds, so different seeds stress different
//! mixes).

use std::collections::BTreeMap;

use super::host::Time;
use super::net::Proc;
use crate::net::SplitMix;

const MS: Time = 1000;
const SEC: Time = 1_000_000;

/// The largest clock skew between a node and true time (ms). Versions come
/// from wall clocks, so last-writer-wins assumes clocks this close.
pub const MAX_SKEW_MS: i64 = 50;

/// One fault or healing step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Kill -9 a node: unsynced bytes are lost.
    Crash(u32),
    /// Start a crashed node again on its data.
    Restart(u32),
    /// The node runs nothing for a while; its input queues (SIGSTOP).
    Stall(u32, Time),
    /// The manager stalls.
    StallManager(Time),
    /// These processes are cut off from all others (both ways).
    Isolate(Vec<Proc>),
    /// Messages from the first to the second are held (one-way partition).
    OneWay(Proc, Proc),
    /// A random connection is reset.
    Reset,
    /// A new node joins.
    Join(u32),
    /// A node leaves gracefully (SIGTERM).
    Leave(u32),
    /// The manager crashes.
    CrashManager,
    /// The manager restarts on its state.
    RestartManager,
    /// The node's disk fails writes and fsyncs (EIO, ENOSPC) at these
    /// rates per million (0, 0: healthy again).
    DiskFaults(u32, u32, u32),
    /// Every partition and stall ends; crashed processes restart.
    Heal,
}

/// The fault kinds a seed may turn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Crash and restart.
    Crash,
    /// Stalls.
    Stall,
    /// Partitions (one node, a minority, the manager alone, one-way).
    Partition,
    /// Connection resets.
    Reset,
    /// Joins and leaves.
    Membership,
    /// Manager crash and restart.
    Manager,
    /// Clock skew.
    Skew,
    /// Disk write and fsync errors.
    Disk,
}

const KINDS: [FaultKind; 8] = [
    FaultKind::Crash,
    FaultKind::Stall,
    FaultKind::Partition,
    FaultKind::Reset,
    FaultKind::Membership,
    FaultKind::Manager,
    FaultKind::Skew,
    FaultKind::Disk,
];

/// Everything a seed decides.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// Storage nodes at the start (ids 1..=n).
    pub nodes: u32,
    /// Replicas per key.
    pub rep: u32,
    /// Sectors (Q).
    pub sectors: u32,
    /// Clients.
    pub clients: usize,
    /// Keys in the key space.
    pub keys: u64,
    /// Mean think time of a client between operations.
    pub think: Time,
    /// Network latency floor and jitter.
    pub min_latency: Time,
    /// Extra latency, up to.
    pub jitter: Time,
    /// A connect across a partition fails after this.
    pub connect_timeout: Time,
    /// Clock skew per node (ms).
    pub skew_ms: BTreeMap<u32, i64>,
    /// When clients start.
    pub clients_start: Time,
    /// When every fault ends.
    pub heal_at: Time,
    /// When clients start no new operation: some seeds stop them early,
    /// so that faults after a key's last write are not hidden by later ones.
    pub clients_until: Time,
    /// The fault kinds turned on.
    pub kinds: Vec<FaultKind>,
    /// The schedule, by time.
    pub faults: Vec<(Time, Fault)>,
    /// The nodes' tombstone grace (`--tombstone-grace`): short, so that
    /// tombstones are reaped while faults run.
    pub tombstone_grace: Time,
    /// The nodes' `--max-output`: small on half the seeds, so that a
    /// stalled peer's backlog passes it and the peer counts as unreachable;
    /// too large to be reached on the others, as on real nodes at this load
    /// (the kernel's socket buffers take what a silent peer does not read),
    /// so that requests queue on a silent link until their ops time out.
    pub max_output: usize,
    /// A client's put carries an expiry one time in this many (0: never;
    /// see `ttl`): half the seeds exercise key expiry.
    pub ttl_one_in: u64,
}

impl Plan {
    /// The plan of `seed`.
    pub fn draw(seed: u64) -> Plan {
        let mut r = SplitMix::new(seed);
        let nodes = 3 + r.below(7) as u32;
        let rep = 1 + r.below(3.min(u64::from(nodes))) as u32;
        let kinds: Vec<FaultKind> = KINDS.iter().copied().filter(|_| r.below(2) == 0).collect();
        let mut skew_ms = BTreeMap::new();
        let max_id = nodes + 3;
        if kinds.contains(&FaultKind::Skew) {
            for id in 1..=max_id {
                skew_ms.insert(id, r.below(2 * MAX_SKEW_MS as u64 + 1) as i64 - MAX_SKEW_MS);
            }
        }
        let clients_start = 2 * SEC;
        let window = 10 * SEC + r.below(20 * SEC);
        let heal_at = clients_start + window;
        let clients_until = match r.below(3) {
            0 => clients_start + window / 4 + r.below(window / 2),
            _ => heal_at + 5 * SEC,
        };
        let mut plan = Plan {
            seed,
            nodes,
            rep,
            sectors: [16, 32, 64][r.below(3) as usize],
            clients: 2 + r.below(7) as usize,
            keys: 3 + r.below(14),
            think: MS * (1 + r.below(50)),
            min_latency: 50 + r.below(500),
            jitter: r.below(5 * MS),
            connect_timeout: SEC + r.below(2 * SEC),
            skew_ms,
            clients_start,
            heal_at,
            clients_until,
            kinds,
            faults: Vec::new(),
            // Drawn apart from the rest, so a seed's schedule is what it was
            // before tombstones were reaped.
            tombstone_grace: SEC + SplitMix::new(seed ^ 0x7047_5241_4345).below(7 * SEC),
            // Drawn apart from the rest too.
            max_output: [4 << 10, 16 << 20][SplitMix::new(seed ^ 0x4d41_584f_5554).below(2) as usize],
            // And this: a seed without TTLs draws what it drew before them.
            ttl_one_in: [0, 0, 2, 5][SplitMix::new(seed ^ 0x0054_544c_5f6f_6e65).below(4) as usize],
        };
        plan.draw_faults(&mut r, window);
        plan
    }

    /// The ids of the nodes that start the run.
    pub fn initial_nodes(&self) -> std::ops::RangeInclusive<u32> {
        1..=self.nodes
    }

    fn draw_faults(&mut self, r: &mut SplitMix, window: Time) {
        let start = self.clients_start;
        let at = |r: &mut SplitMix| start + r.below(window);
        let mut members: Vec<u32> = self.initial_nodes().collect();
        let mut next_id = self.nodes + 1;
        let mut faults = Vec::new();
        let n_faults = if self.kinds.is_empty() { 0 } else { 2 + r.below(10) };
        for _ in 0..n_faults {
            let kind = self.kinds[r.below(self.kinds.len() as u64) as usize];
            let t = at(r);
            let node = members[r.below(members.len() as u64) as usize];
            let dur = 100 * MS + r.below(4 * SEC);
            match kind {
                FaultKind::Crash => {
                    faults.push((t, Fault::Crash(node)));
                    faults.push((t + dur, Fault::Restart(node)));
                }
                FaultKind::Stall if r.below(4) == 0 => faults.push((t, Fault::StallManager(dur))),
                FaultKind::Stall => faults.push((t, Fault::Stall(node, dur))),
                FaultKind::Partition => {
                    let f = match r.below(4) {
                        0 => Fault::Isolate(vec![Proc::Node(node)]),
                        1 => Fault::Isolate(vec![Proc::Manager]),
                        2 => {
                            let k = (members.len() as u64 - 1) / 2;
                            let mut side: Vec<Proc> = Vec::new();
                            for _ in 0..k.max(1) {
                                let n = members[r.below(members.len() as u64) as usize];
                                if !side.contains(&Proc::Node(n)) {
                                    side.push(Proc::Node(n));
                                }
                            }
                            Fault::Isolate(side)
                        }
                        _ => {
                            let other = members[r.below(members.len() as u64) as usize];
                            let to = if other == node { Proc::Manager } else { Proc::Node(other) };
                            Fault::OneWay(Proc::Node(node), to)
                        }
                    };
                    faults.push((t, f));
                    faults.push((t + dur, Fault::Heal));
                }
                FaultKind::Reset => {
                    for k in 0..1 + r.below(5) {
                        faults.push((t + k * 10 * MS, Fault::Reset));
                    }
                }
                FaultKind::Membership => {
                    if r.below(2) == 0 && members.len() as u32 > self.rep.max(2) {
                        members.retain(|&m| m != node);
                        faults.push((t, Fault::Leave(node)));
                    } else if next_id <= self.nodes + 3 {
                        faults.push((t, Fault::Join(next_id)));
                        if r.below(3) == 0 {
                            // The manager dies early in the join (issue #9's real-process hang).
                            let early = t + 5 * MS + r.below(100 * MS);
                            faults.push((early, Fault::CrashManager));
                            faults.push((early + 200 * MS + r.below(SEC), Fault::RestartManager));
                        }
                        members.push(next_id);
                        next_id += 1;
                    }
                }
                FaultKind::Manager => {
                    faults.push((t, Fault::CrashManager));
                    faults.push((t + dur.min(3 * SEC), Fault::RestartManager));
                }
                FaultKind::Skew => {} // drawn per node above, for the whole run
                FaultKind::Disk => {
                    let (w, f) = (r.below(20_000) as u32, r.below(50_000) as u32);
                    faults.push((t, Fault::DiskFaults(node, w, f)));
                    faults.push((t + dur, Fault::DiskFaults(node, 0, 0)));
                }
            }
        }
        faults.push((self.heal_at, Fault::Heal));
        faults.retain(|(t, _)| *t <= self.heal_at);
        faults.sort_by_key(|(t, _)| *t);
        self.faults = faults;
    }

    /// One line: the shape and the mix.
    pub fn summary(&self) -> String {
        format!(
            "{} nodes, N={}, Q={}, {} clients, {} keys, faults {:?}, {} scheduled, heal at {}, tombstone grace {}, \
             max output {} KiB{}",
            self.nodes,
            self.rep,
            self.sectors,
            self.clients,
            self.keys,
            self.kinds,
            self.faults.len(),
            super::checker::ms(self.heal_at),
            super::checker::ms(self.tombstone_grace),
            self.max_output >> 10,
            if self.ttl_one_in == 0 { String::new() } else { format!(", ttl 1 put in {}", self.ttl_one_in) }
        )
    }
}

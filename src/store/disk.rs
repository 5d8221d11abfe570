//! The disk seam: every file-system call the store (and the manager's state
//! file) makes goes through the [`Disk`] and [`DiskFile`] traits.
//!
//! This module owns those two traits and their two implementations.
//! [`OsDisk`] is the real file system and makes exactly the system calls the
//! store made before the seam existed (`pwrite`, `pread`, `fdatasync`,
//! `ftruncate`, `fsync` of an opened directory, `rename`, ...). [`SimDisk`]
//! is an in-memory file system for the deterministic simulator: it keeps
//! what was written apart from what was made durable (file bytes by
//! `sync_data`, directory entries by `sync_dir` of their directory), loses
//! or tears the undurable part at [`SimDisk::crash`], and fails writes and
//! fsyncs on demand or at a seeded rate. It also holds the small helpers
//! built on the traits: [`read_file`], [`write_file_durably`] and
//! [`SeqReader`].

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path};
use std::rc::Rc;

/// How [`Disk::open`] opens a file. Every mode but `Read` opens it for
/// reading and writing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// Read only; the file must exist.
    Read,
    /// Read and write; the file must exist.
    Write,
    /// Read and write; created empty if missing, kept as it is otherwise.
    Create,
    /// Read and write; created if missing, emptied otherwise.
    Truncate,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    /// The entry's name inside its directory.
    pub name: OsString,
    /// Whether it is a directory (a symbolic link counts as what it points to).
    pub is_dir: bool,
}

/// The file-system operations of the store. Object safe: the store holds
/// one as `Rc<dyn Disk>`.
pub trait Disk: fmt::Debug {
    /// Creates `path` and any missing parents (like `fs::create_dir_all`).
    /// The new entries are not durable until their directories are synced.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Opens the file at `path`; see [`OpenMode`].
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>>;

    /// The entries of directory `path`, in no particular order.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>>;

    /// Removes the file at `path`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;

    /// Removes directory `path` and everything under it.
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;

    /// Renames `from` to `to`, replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Makes the entries of directory `path` (creations, removals,
    /// renames) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;

    /// Whether `path` is a directory; false on any error (like `Path::is_dir`).
    fn is_dir(&self, path: &Path) -> bool;
}

/// An open file. Reads and writes are positioned: a file has no cursor.
#[allow(clippy::len_without_is_empty)] // a file's length is a syscall; nothing asks for emptiness
pub trait DiskFile: fmt::Debug {
    /// Writes all of `buf` at offset `pos` (the file grows as needed). On
    /// an error part of `buf` may have been written.
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;

    /// Reads from offset `pos` into `buf`; returns the bytes read, fewer
    /// than `buf.len()` only at the end of the file (0 at or past it).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;

    /// Makes the file's bytes and length durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;

    /// The file's length in bytes.
    fn len(&self) -> io::Result<u64>;

    /// Cuts or extends (with zeros) the file to `len` bytes.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// Reads the whole file at `path`; `None` if it does not exist.
pub fn read_file(disk: &dyn Disk, path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match disk.open(path, OpenMode::Read) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = usize::try_from(file.len()?).map_err(|_| io::Error::new(io::ErrorKind::OutOfMemory, "file too large"))?;
    let mut bytes = vec![0u8; len];
    let n = file.read_at(&mut bytes, 0)?;
    bytes.truncate(n);
    Ok(Some(bytes))
}

/// Replaces `dir/name` with `bytes` so that a crash leaves either the old
/// file or the new one: writes `dir/name.tmp`, syncs it, renames it over
/// `name` and syncs `dir`.
pub fn write_file_durably(disk: &dyn Disk, dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let file = disk.open(&tmp, OpenMode::Truncate)?;
    file.write_at(bytes, 0)?;
    file.sync_data()?;
    drop(file);
    disk.rename(&tmp, &dir.join(name))?;
    disk.sync_dir(dir)
}

/// Sequential reading of a [`DiskFile`] from its start through positioned
/// reads, for `io::Read` consumers (wrap it in a `BufReader`). The file
/// must not grow while it is read: after a short read it reports the end
/// without asking the file again.
#[derive(Debug)]
pub struct SeqReader {
    file: Box<dyn DiskFile>,
    pos: u64,
    at_end: bool,
}

impl SeqReader {
    /// Reads `file` from offset 0.
    pub fn new(file: Box<dyn DiskFile>) -> SeqReader {
        SeqReader { file, pos: 0, at_end: false }
    }

    /// The file back, once reading is done.
    pub fn into_inner(self) -> Box<dyn DiskFile> {
        self.file
    }
}

impl Read for SeqReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at_end || buf.is_empty() {
            return Ok(0);
        }
        let n = self.file.read_at(buf, self.pos)?;
        self.pos = self.pos.saturating_add(n as u64);
        self.at_end = n < buf.len();
        Ok(n)
    }
}

/// The real file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsDisk;

impl Disk for OsDisk {
    /// New directories are 0700 (before the umask): the data is nobody
    /// else's to read.
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(path)
    }

    /// New files are 0600 (before the umask).
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        let rw = || {
            let mut o = OpenOptions::new();
            o.read(true).write(true).mode(0o600);
            o
        };
        let file = match mode {
            OpenMode::Read => File::open(path)?,
            OpenMode::Write => rw().open(path)?,
            OpenMode::Create => rw().create(true).truncate(false).open(path)?,
            OpenMode::Truncate => rw().create(true).truncate(true).open(path)?,
        };
        Ok(Box::new(OsFile(file)))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            // The type comes with the listing (no stat) unless it is a link.
            let kind = entry.file_type()?;
            let is_dir = match kind.is_symlink() {
                true => entry.path().is_dir(),
                false => kind.is_dir(),
            };
            out.push(DirEntry { name: entry.file_name(), is_dir });
        }
        Ok(out)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir_all(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn is_dir(&self, path: &Path) -> bool {
        path.is_dir()
    }
}

/// A real open file.
#[derive(Debug)]
struct OsFile(File);

impl DiskFile for OsFile {
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let mut n = 0usize;
        while let Some(rest) = buf.get_mut(n..) {
            if rest.is_empty() {
                break;
            }
            match self.0.read_at(rest, pos.saturating_add(n as u64)) {
                Ok(0) => break,
                Ok(k) => n = n.saturating_add(k),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

/// An in-memory file system with power cuts and failing writes, for the
/// deterministic simulator.
///
/// A clone is another handle on the same disk: the simulator keeps one while
/// the store owns another. Durability follows POSIX at its weakest: a
/// file's bytes and length are durable only after its `sync_data`, and a
/// directory's entries (a file or directory created, removed or renamed in
/// it) only after `sync_dir` of that directory; a rename is an entry change
/// in each of the two directories. [`SimDisk::crash`] is a power cut: every
/// directory goes back to its durable entries and every file to its durable
/// bytes, except that a file whose current bytes extend its durable ones
/// may keep a random prefix of the unsynced tail (a torn write). Handles
/// from before a crash are dead: every call through them fails, so a store
/// dropped after the crash cannot write anything. Killing a process without
/// a power cut is dropping (or forgetting) its store without calling
/// `crash`: everything written stays.
///
/// Nothing depends on hash order, time or a global random generator: the
/// same calls and seeds give the same disk.
#[derive(Clone, Default)]
pub struct SimDisk {
    state: Rc<RefCell<SimState>>,
    /// The crash epoch this handle belongs to (see [`SimState::epoch`]).
    epoch: Cell<u64>,
}

impl fmt::Debug for SimDisk {
    /// A summary: the contents would drown any log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state.try_borrow() {
            Ok(s) => write!(f, "SimDisk {{ inodes: {}, epoch: {}/{} }}", s.nodes.len(), self.epoch.get(), s.epoch),
            Err(_) => f.write_str("SimDisk { (in use) }"),
        }
    }
}

/// An inode number of the simulated disk; the root directory is 0.
type Ino = u64;

/// The root directory's inode.
const ROOT: Ino = 0;

/// One simulated directory: its entries now and as last synced.
#[derive(Clone, Debug, Default)]
struct SimDir {
    live: BTreeMap<OsString, Ino>,
    durable: BTreeMap<OsString, Ino>,
}

/// One simulated file: its bytes now and as last synced.
#[derive(Clone, Debug, Default)]
struct SimFileData {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// `data` and `durable` agree on their first `same` bytes.
    same: usize,
    /// Open handles (an unlinked file lives while one is open).
    open: u32,
}

/// One inode.
#[derive(Clone, Debug)]
enum Node {
    Dir(SimDir),
    File(SimFileData),
}

/// The shared state of a [`SimDisk`].
#[derive(Debug)]
struct SimState {
    nodes: BTreeMap<Ino, Node>,
    next_ino: Ino,
    /// Bumped by every crash; handles of an older epoch are dead.
    epoch: u64,
    faults: Faults,
}

impl Default for SimState {
    fn default() -> SimState {
        let mut nodes = BTreeMap::new();
        nodes.insert(ROOT, Node::Dir(SimDir::default()));
        SimState { nodes, next_ino: ROOT + 1, epoch: 0, faults: Faults::default() }
    }
}

/// Injected failures.
#[derive(Clone, Debug, Default)]
struct Faults {
    write_per_million: u32,
    fsync_per_million: u32,
    fail_next_write: bool,
    fail_next_fsync: bool,
    rng: SplitMix,
}

/// splitmix64: a small, fast, seedable generator.
#[derive(Clone, Debug, Default)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    fn upto(&mut self, max: u64) -> u64 {
        match max.checked_add(1) {
            Some(n) => self.next() % n,
            None => self.next(),
        }
    }

    /// True with probability `per_million` / 1e6.
    fn chance(&mut self, per_million: u32) -> bool {
        per_million > 0 && self.next() % 1_000_000 < u64::from(per_million)
    }
}

fn os_error(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

fn not_found() -> io::Error {
    os_error(libc::ENOENT)
}

fn dead_handle() -> io::Error {
    io::Error::other("simulated disk: handle from before a crash")
}

/// The names along `path`, resolved lexically (`.` skipped, `..` pops).
fn components(path: &Path) -> Vec<&OsStr> {
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(name) => out.push(name),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl SimState {
    fn dir(&self, ino: Ino) -> io::Result<&SimDir> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(os_error(libc::ENOTDIR)),
            None => Err(not_found()),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> io::Result<&mut SimDir> {
        match self.nodes.get_mut(&ino) {
            Some(Node::Dir(d)) => Ok(d),
            Some(Node::File(_)) => Err(os_error(libc::ENOTDIR)),
            None => Err(not_found()),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> io::Result<&mut SimFileData> {
        match self.nodes.get_mut(&ino) {
            Some(Node::File(f)) => Ok(f),
            Some(Node::Dir(_)) => Err(os_error(libc::EISDIR)),
            None => Err(not_found()),
        }
    }

    /// The inode at `names`, following current entries.
    fn lookup(&self, names: &[&OsStr]) -> io::Result<Ino> {
        let mut ino = ROOT;
        for name in names {
            ino = *self.dir(ino)?.live.get(*name).ok_or_else(not_found)?;
        }
        Ok(ino)
    }

    /// The parent directory's inode and the last name of `path`.
    fn parent_of<'a>(&self, path: &'a Path) -> io::Result<(Ino, &'a OsStr)> {
        let names = components(path);
        let Some((last, parents)) = names.split_last() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the root has no parent"));
        };
        Ok((self.lookup(parents)?, last))
    }

    fn new_node(&mut self, node: Node) -> Ino {
        let ino = self.next_ino;
        self.next_ino = self.next_ino.saturating_add(1);
        self.nodes.insert(ino, node);
        ino
    }

    /// Draws an injected failure for a write or an fsync, if one is due.
    fn fault(&mut self, fsync: bool) -> Option<io::Error> {
        let f = &mut self.faults;
        let (next, rate) = match fsync {
            true => (&mut f.fail_next_fsync, f.fsync_per_million),
            false => (&mut f.fail_next_write, f.write_per_million),
        };
        let fail = std::mem::take(next) || f.rng.chance(rate);
        if !fail {
            return None;
        }
        Some(os_error(if f.rng.next() & 1 == 0 { libc::EIO } else { libc::ENOSPC }))
    }

    /// Frees every inode no directory entry (current or durable) reaches
    /// and no open handle holds.
    fn collect_garbage(&mut self, keep_open: bool) {
        let mut reached = BTreeSet::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            if !reached.insert(ino) {
                continue;
            }
            if let Some(Node::Dir(d)) = self.nodes.get(&ino) {
                todo.extend(d.live.values().chain(d.durable.values()).copied());
            }
        }
        self.nodes
            .retain(|ino, node| reached.contains(ino) || (keep_open && matches!(node, Node::File(f) if f.open > 0)));
    }
}

impl SimDisk {
    /// A new, empty disk (only the root directory exists, durably).
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Borrows the state if this handle is still alive.
    fn state(&self) -> io::Result<std::cell::RefMut<'_, SimState>> {
        let state = self.state.try_borrow_mut().map_err(|_| io::Error::other("simulated disk: reentrant call"))?;
        match state.epoch == self.epoch.get() {
            true => Ok(state),
            false => Err(dead_handle()),
        }
    }

    /// A power cut. Every directory goes back to its durable entries, every
    /// file to its durable bytes; a file whose current bytes only extend
    /// its durable ones keeps a random prefix (`seed` decides) of the
    /// extension, possibly cut in the middle of a record. Files and
    /// directories no durable entry reaches are gone. Every handle but this
    /// one (and its later clones) is dead from now on.
    pub fn crash(&self, seed: u64) {
        let mut rng = SplitMix(seed);
        let mut state = self.state.borrow_mut();
        for node in state.nodes.values_mut() {
            match node {
                Node::Dir(d) => d.live = d.durable.clone(),
                Node::File(f) => {
                    let durable_len = f.durable.len();
                    let extends = f.same == durable_len && f.data.len() > durable_len;
                    let tail = if extends { f.data.len() - durable_len } else { 0 };
                    let kept = match (tail, rng.next() % 3) {
                        (0, _) | (_, 0) => 0,
                        (_, 1) => tail,
                        (_, _) => rng.upto(tail as u64) as usize,
                    };
                    // The torn prefix is what the platter holds now.
                    let torn = f.data.get(durable_len..durable_len.saturating_add(kept)).unwrap_or_default();
                    f.durable.extend_from_slice(torn);
                    f.data = f.durable.clone();
                    f.same = f.data.len();
                    f.open = 0;
                }
            }
        }
        state.collect_garbage(false);
        state.epoch = state.epoch.wrapping_add(1);
        self.epoch.set(state.epoch);
    }

    /// Makes writes fail with `write_per_million` / 1e6 probability and
    /// fsyncs (of files and directories) with `fsync_per_million`, drawn
    /// from a generator seeded with `seed`. A failing call fails with EIO
    /// or ENOSPC; a failed write may have written part of its bytes, a
    /// failed fsync makes nothing durable. Zero rates turn faults off.
    pub fn set_faults(&self, write_per_million: u32, fsync_per_million: u32, seed: u64) {
        let mut state = self.state.borrow_mut();
        let f = &mut state.faults;
        f.write_per_million = write_per_million;
        f.fsync_per_million = fsync_per_million;
        f.rng = SplitMix(seed);
    }

    /// Makes the next fsync (file or directory) fail.
    pub fn fail_next_fsync(&self) {
        self.state.borrow_mut().faults.fail_next_fsync = true;
    }

    /// Makes the next write fail.
    pub fn fail_next_write(&self) {
        self.state.borrow_mut().faults.fail_next_write = true;
    }

    /// The current bytes of the file at `path` (what a read sees), for
    /// tests and the simulator's checks.
    pub fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.state()?;
        let ino = state.lookup(&components(path))?;
        Ok(state.file_mut(ino)?.data.clone())
    }

    /// The bytes of the file at `path` that would survive a crash now
    /// (its durable bytes, under current entries), for tests.
    pub fn durable_contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut state = self.state()?;
        let ino = state.lookup(&components(path))?;
        Ok(state.file_mut(ino)?.durable.clone())
    }
}

impl Disk for SimDisk {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        let mut ino = ROOT;
        for name in components(path) {
            let found = state.dir(ino)?.live.get(name).copied();
            ino = match found {
                Some(child) => child,
                None => {
                    let child = state.new_node(Node::Dir(SimDir::default()));
                    state.dir_mut(ino)?.live.insert(name.to_os_string(), child);
                    child
                }
            };
        }
        state.dir(ino).map(|_| ())
    }

    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Box<dyn DiskFile>> {
        let mut state = self.state()?;
        let (parent, name) = state.parent_of(path)?;
        let found = state.dir(parent)?.live.get(name).copied();
        let ino = match (found, mode) {
            (Some(ino), _) => ino,
            (None, OpenMode::Read | OpenMode::Write) => return Err(not_found()),
            (None, OpenMode::Create | OpenMode::Truncate) => {
                let ino = state.new_node(Node::File(SimFileData::default()));
                state.dir_mut(parent)?.live.insert(name.to_os_string(), ino);
                ino
            }
        };
        let file = state.file_mut(ino)?;
        file.open = file.open.saturating_add(1);
        drop(state);
        let handle = SimFile { disk: self.clone(), ino, writable: mode != OpenMode::Read };
        if mode == OpenMode::Truncate {
            handle.set_len(0)?;
        }
        Ok(Box::new(handle))
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<DirEntry>> {
        let state = self.state()?;
        let dir = state.dir(state.lookup(&components(path))?)?;
        Ok(dir
            .live
            .iter()
            .map(|(name, ino)| DirEntry {
                name: name.clone(),
                is_dir: matches!(state.nodes.get(ino), Some(Node::Dir(_))),
            })
            .collect())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        let (parent, name) = state.parent_of(path)?;
        let ino = *state.dir(parent)?.live.get(name).ok_or_else(not_found)?;
        if matches!(state.nodes.get(&ino), Some(Node::Dir(_))) {
            return Err(os_error(libc::EISDIR));
        }
        state.dir_mut(parent)?.live.remove(name);
        state.collect_garbage(true);
        Ok(())
    }

    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        let (parent, name) = state.parent_of(path)?;
        let ino = *state.dir(parent)?.live.get(name).ok_or_else(not_found)?;
        state.dir(ino)?;
        // The subtree goes with its entry; a crash before the parent is
        // synced brings it back with its durable entries.
        state.dir_mut(parent)?.live.remove(name);
        state.collect_garbage(true);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        let (from_dir, from_name) = state.parent_of(from)?;
        let (to_dir, to_name) = state.parent_of(to)?;
        let ino = *state.dir(from_dir)?.live.get(from_name).ok_or_else(not_found)?;
        let moving_dir = matches!(state.nodes.get(&ino), Some(Node::Dir(_)));
        let target = state.dir(to_dir)?.live.get(to_name).copied();
        if target == Some(ino) {
            return Ok(()); // the same file: nothing to do
        }
        if moving_dir && is_inside(&components(from), &components(to)) {
            return Err(os_error(libc::EINVAL));
        }
        match target.and_then(|t| state.nodes.get(&t)) {
            Some(Node::Dir(_)) if !moving_dir => return Err(os_error(libc::EISDIR)),
            Some(Node::Dir(d)) if !d.live.is_empty() => return Err(os_error(libc::ENOTEMPTY)),
            Some(Node::File(_)) if moving_dir => return Err(os_error(libc::ENOTDIR)),
            _ => {}
        }
        state.dir_mut(from_dir)?.live.remove(from_name);
        state.dir_mut(to_dir)?.live.insert(to_name.to_os_string(), ino);
        state.collect_garbage(true);
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut state = self.state()?;
        let ino = state.lookup(&components(path))?;
        state.dir(ino)?;
        if let Some(e) = state.fault(true) {
            return Err(e);
        }
        let dir = state.dir_mut(ino)?;
        dir.durable = dir.live.clone();
        state.collect_garbage(true);
        Ok(())
    }

    fn is_dir(&self, path: &Path) -> bool {
        let Ok(state) = self.state() else { return false };
        state.lookup(&components(path)).is_ok_and(|ino| state.dir(ino).is_ok())
    }
}

/// Whether the path `to` is strictly under `from` (moving a directory
/// into itself).
fn is_inside(from: &[&OsStr], to: &[&OsStr]) -> bool {
    to.len() > from.len() && to.starts_with(from)
}

/// An open file of a [`SimDisk`].
#[derive(Debug)]
struct SimFile {
    disk: SimDisk,
    ino: Ino,
    writable: bool,
}

impl SimFile {
    /// Runs `f` on the file's data, if this handle is alive.
    fn with<T>(&self, f: impl FnOnce(&mut SimState, Ino) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.disk.state()?;
        f(&mut state, self.ino)
    }

    fn check_writable(&self) -> io::Result<()> {
        match self.writable {
            true => Ok(()),
            false => Err(os_error(libc::EBADF)),
        }
    }
}

impl DiskFile for SimFile {
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with(|state, ino| {
            let fault = state.fault(false);
            // A failed write may have written a prefix of its bytes.
            let n = match fault {
                Some(_) => state.faults.rng.upto(buf.len() as u64) as usize,
                None => buf.len(),
            };
            let start = usize::try_from(pos).map_err(|_| os_error(libc::EFBIG))?;
            let end = start.checked_add(n).ok_or_else(|| os_error(libc::EFBIG))?;
            let file = state.file_mut(ino)?;
            if n > 0 {
                if file.data.len() < end {
                    file.same = file.same.min(file.data.len());
                    file.data.resize(end, 0);
                }
                if let (Some(dst), Some(src)) = (file.data.get_mut(start..end), buf.get(..n)) {
                    dst.copy_from_slice(src);
                }
                file.same = file.same.min(start);
            }
            match fault {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }

    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        self.with(|state, ino| {
            let file = state.file_mut(ino)?;
            let start = usize::try_from(pos).unwrap_or(usize::MAX).min(file.data.len());
            let src = file.data.get(start..).unwrap_or_default();
            let n = src.len().min(buf.len());
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), src.get(..n)) {
                dst.copy_from_slice(src);
            }
            Ok(n)
        })
    }

    fn sync_data(&self) -> io::Result<()> {
        self.with(|state, ino| {
            state.file_mut(ino)?;
            if let Some(e) = state.fault(true) {
                return Err(e);
            }
            let file = state.file_mut(ino)?;
            // Only the bytes changed since the last sync are copied.
            let same = file.same.min(file.durable.len()).min(file.data.len());
            file.durable.truncate(same);
            file.durable.extend_from_slice(file.data.get(same..).unwrap_or_default());
            file.same = file.data.len();
            Ok(())
        })
    }

    fn len(&self) -> io::Result<u64> {
        self.with(|state, ino| Ok(state.file_mut(ino)?.data.len() as u64))
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_writable()?;
        self.with(|state, ino| {
            let len = usize::try_from(len).map_err(|_| os_error(libc::EFBIG))?;
            let file = state.file_mut(ino)?;
            file.same = file.same.min(len).min(file.data.len());
            file.data.resize(len, 0);
            Ok(())
        })
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        // A dead handle's inode was reset by the crash; nothing to release.
        if let Ok(mut state) = self.disk.state() {
            if let Ok(file) = state.file_mut(self.ino) {
                file.open = file.open.saturating_sub(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_dir::TestDir;

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    /// A disk with `/d` created and synced into the root.
    fn disk_with_dir() -> SimDisk {
        let disk = SimDisk::new();
        disk.create_dir_all(p("/d")).unwrap();
        disk.sync_dir(p("/")).unwrap();
        disk
    }

    fn read_all(disk: &dyn Disk, path: &str) -> Option<Vec<u8>> {
        read_file(disk, p(path)).unwrap()
    }

    #[test]
    fn synced_data_survives_a_crash() {
        let disk = disk_with_dir();
        let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
        f.write_at(b"hello world", 0).unwrap();
        f.sync_data().unwrap();
        disk.sync_dir(p("/d")).unwrap();
        drop(f);
        disk.crash(1);
        assert_eq!(read_all(&disk, "/d/f"), Some(b"hello world".to_vec()));
        assert!(disk.is_dir(p("/d")));
    }

    #[test]
    fn an_unsynced_tail_is_lost_or_torn() {
        let (mut lost, mut whole, mut torn) = (0, 0, 0);
        for seed in 0..60 {
            let disk = disk_with_dir();
            let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
            f.write_at(b"synced|", 0).unwrap();
            f.sync_data().unwrap();
            disk.sync_dir(p("/d")).unwrap();
            f.write_at(b"not synced", 7).unwrap();
            assert_eq!(disk.durable_contents(p("/d/f")).unwrap(), b"synced|");
            disk.crash(seed);
            let got = read_all(&disk, "/d/f").unwrap();
            assert!(b"synced|not synced".starts_with(&got) && got.len() >= 7, "seed {seed}: {got:?}");
            match got.len() {
                7 => lost += 1,
                17 => whole += 1,
                _ => torn += 1,
            }
        }
        assert!(lost > 0 && whole > 0 && torn > 0, "{lost} {whole} {torn}");
    }

    #[test]
    fn an_unsynced_overwrite_is_undone_whole() {
        for seed in 0..10 {
            let disk = disk_with_dir();
            let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
            f.write_at(b"0123456789", 0).unwrap();
            f.sync_data().unwrap();
            disk.sync_dir(p("/d")).unwrap();
            f.set_len(4).unwrap();
            f.write_at(b"abcdefghijklmn", 2).unwrap();
            disk.crash(seed);
            assert_eq!(read_all(&disk, "/d/f"), Some(b"0123456789".to_vec()), "seed {seed}");
        }
    }

    #[test]
    fn a_file_created_in_an_unsynced_directory_disappears() {
        let disk = disk_with_dir();
        let f = disk.open(p("/d/new"), OpenMode::Create).unwrap();
        f.write_at(b"data", 0).unwrap();
        f.sync_data().unwrap(); // the bytes are durable, the entry is not
        disk.create_dir_all(p("/d/sub/deeper")).unwrap();
        disk.sync_dir(p("/d/sub")).unwrap(); // its parent /d is not synced
        disk.crash(7);
        assert_eq!(read_all(&disk, "/d/new"), None);
        assert!(!disk.is_dir(p("/d/sub")));
        assert!(disk.read_dir(p("/d")).unwrap().is_empty());
        // A synced entry stays; its unsynced bytes are at most torn.
        let f = disk.open(p("/d/kept"), OpenMode::Create).unwrap();
        f.write_at(b"lost bytes", 0).unwrap();
        f.set_len(4).unwrap();
        disk.sync_dir(p("/d")).unwrap();
        drop(f);
        disk.crash(0);
        let kept = read_all(&disk, "/d/kept").unwrap();
        assert!(b"lost".starts_with(&kept), "at most a torn prefix: {kept:?}");
    }

    #[test]
    fn a_rename_is_durable_after_its_directory_is_synced() {
        let disk = disk_with_dir();
        write_file_durably(&disk, p("/d"), "state", b"old").unwrap();
        // The new file is synced and renamed, but the directory is not synced.
        let f = disk.open(p("/d/state.tmp"), OpenMode::Truncate).unwrap();
        f.write_at(b"new", 0).unwrap();
        f.sync_data().unwrap();
        drop(f);
        disk.rename(p("/d/state.tmp"), p("/d/state")).unwrap();
        assert_eq!(read_all(&disk, "/d/state"), Some(b"new".to_vec()));
        disk.crash(3);
        assert_eq!(read_all(&disk, "/d/state"), Some(b"old".to_vec()));
        assert_eq!(read_all(&disk, "/d/state.tmp"), None);

        write_file_durably(&disk, p("/d"), "state", b"new").unwrap();
        disk.crash(4);
        assert_eq!(read_all(&disk, "/d/state"), Some(b"new".to_vec()));
        let names: Vec<OsString> = disk.read_dir(p("/d")).unwrap().into_iter().map(|e| e.name).collect();
        assert_eq!(names, vec![OsString::from("state")]);
    }

    #[test]
    fn a_failed_fsync_is_an_error_and_makes_nothing_durable() {
        let disk = disk_with_dir();
        let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
        disk.sync_dir(p("/d")).unwrap();
        f.write_at(b"abc", 0).unwrap();
        disk.fail_next_fsync();
        let err = f.sync_data().unwrap_err();
        assert!(matches!(err.raw_os_error(), Some(libc::EIO | libc::ENOSPC)), "{err}");
        assert!(disk.durable_contents(p("/d/f")).unwrap().is_empty());
        drop(f);
        disk.crash(0);
        // Not durable: a crash may keep a prefix, never more.
        assert!(b"abc".starts_with(&read_all(&disk, "/d/f").unwrap()));

        disk.create_dir_all(p("/d/sub")).unwrap();
        disk.fail_next_fsync();
        assert!(disk.sync_dir(p("/d")).is_err());
        disk.crash(0);
        assert!(!disk.is_dir(p("/d/sub")));
    }

    #[test]
    fn a_failed_write_is_an_error_and_may_leave_a_prefix() {
        let disk = disk_with_dir();
        let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
        disk.fail_next_write();
        assert!(f.write_at(b"0123456789", 0).is_err());
        let got = disk.contents(p("/d/f")).unwrap();
        assert!(b"0123456789".starts_with(&got));
        f.write_at(b"ok", 0).unwrap();
    }

    #[test]
    fn fault_rates_are_deterministic_per_seed() {
        let run = |seed| {
            let disk = disk_with_dir();
            disk.set_faults(200_000, 300_000, seed);
            let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
            (0..200u64).map(|i| (f.write_at(b"x", i).is_ok(), f.sync_data().is_ok())).collect::<Vec<_>>()
        };
        let a = run(9);
        assert_eq!(a, run(9));
        assert_ne!(a, run(10));
        let failed_writes = a.iter().filter(|r| !r.0).count();
        let failed_syncs = a.iter().filter(|r| !r.1).count();
        assert!((20..80).contains(&failed_writes), "{failed_writes}");
        assert!((30..100).contains(&failed_syncs), "{failed_syncs}");
    }

    #[test]
    fn handles_from_before_a_crash_are_dead() {
        let disk = disk_with_dir();
        let old = Rc::new(disk.clone()) as Rc<dyn Disk>;
        let f = old.open(p("/d/f"), OpenMode::Create).unwrap();
        disk.crash(0);
        assert!(f.write_at(b"late", 0).is_err());
        assert!(old.create_dir_all(p("/d/x")).is_err());
        drop(f);
        // The crashing handle and its clones live on.
        let fresh = disk.clone();
        assert!(fresh.read_dir(p("/d")).unwrap().is_empty());
        fresh.open(p("/d/g"), OpenMode::Create).unwrap().write_at(b"ok", 0).unwrap();
    }

    #[test]
    fn files_read_back_short_at_the_end_and_unlinked_files_stay_open() {
        let disk = disk_with_dir();
        let f = disk.open(p("/d/f"), OpenMode::Create).unwrap();
        f.write_at(b"abc", 2).unwrap();
        assert_eq!(f.len().unwrap(), 5);
        let mut buf = [9u8; 8];
        assert_eq!(f.read_at(&mut buf, 0).unwrap(), 5);
        assert_eq!(&buf[..5], b"\0\0abc");
        assert_eq!(f.read_at(&mut buf, 10).unwrap(), 0);
        assert!(disk.open(p("/d/f"), OpenMode::Read).unwrap().write_at(b"x", 0).is_err());
        disk.remove_file(p("/d/f")).unwrap();
        assert!(disk.open(p("/d/f"), OpenMode::Read).is_err());
        assert_eq!(f.read_at(&mut buf, 2).unwrap(), 3);
        assert!(disk.remove_file(p("/d")).is_err());
        disk.remove_dir_all(p("/d")).unwrap();
        assert!(!disk.is_dir(p("/d")));
    }

    #[test]
    fn the_real_disk_does_the_same() -> io::Result<()> {
        let dir = TestDir::new("disk-os");
        let disk = OsDisk;
        let sub = dir.path().join("a/b");
        disk.create_dir_all(&sub)?;
        assert!(disk.is_dir(&sub));
        write_file_durably(&disk, &sub, "state", b"one")?;
        write_file_durably(&disk, &sub, "state", b"two")?;
        assert_eq!(read_file(&disk, &sub.join("state"))?, Some(b"two".to_vec()));
        assert_eq!(read_file(&disk, &sub.join("missing"))?, None);
        let f = disk.open(&sub.join("f"), OpenMode::Create)?;
        f.write_at(b"abc", 2)?;
        f.sync_data()?;
        let mut buf = [0u8; 8];
        assert_eq!(f.read_at(&mut buf, 0)?, 5);
        f.set_len(1)?;
        assert_eq!(f.len()?, 1);
        let mut names: Vec<(OsString, bool)> =
            disk.read_dir(dir.path().join("a").as_path())?.into_iter().map(|e| (e.name, e.is_dir)).collect();
        names.sort();
        assert_eq!(names, vec![(OsString::from("b"), true)]);
        disk.remove_file(&sub.join("f"))?;
        disk.remove_dir_all(&dir.path().join("a"))?;
        assert!(!disk.is_dir(&sub));
        Ok(())
    }

    #[test]
    fn a_seq_reader_reads_the_file_in_order() -> io::Result<()> {
        let disk = disk_with_dir();
        let f = disk.open(p("/d/f"), OpenMode::Create)?;
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        f.write_at(&bytes, 0)?;
        let mut got = Vec::new();
        io::BufReader::with_capacity(4096, SeqReader::new(f)).read_to_end(&mut got)?;
        assert_eq!(got, bytes);
        Ok(())
    }
}

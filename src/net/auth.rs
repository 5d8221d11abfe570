//! Who may speak on a connection: the cluster key, the client key, and the
//! challenge-response by which a peer proves it holds one.
//!
//! A daemon started with `--cluster-key FILE` accepts internal verbs
//! (REGISTER, HEARTBEAT, STORE, PULL, ...) only on connections whose peer
//! proved it holds that key; with `--client-key FILE` (nodes) client verbs
//! (PUT, GET, DEL, ...) need a proof of the client key or of the cluster
//! key. The proof never puts the key on the wire (`gtstore-protocol(5)`,
//! "Authentication"):
//!
//! ```text
//! initiator                                   responder
//!   AUTH      kind, Ni (32 random bytes)  ->
//!                                         <-  CHALLENGE Nr, HMAC(K, "responder" kind Ni Nr)
//!   PROVE     HMAC(K, "initiator" kind Ni Nr) ->
//! ```
//!
//! Both sides check the other's proof in constant time, so each side knows
//! the other holds K, and a recorded exchange cannot be replayed: the other
//! side's nonce is fresh each time. The initiator may pipeline requests
//! right after PROVE; a bad PROVE is answered ERROR AUTH and the connection
//! closes. This module holds the keys and the proofs; [`super::gate`]
//! runs the exchange on each connection and enforces the verb classes.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::codec::Body;

/// Bytes of each side's nonce.
pub const NONCE_LEN: usize = 32;
/// Bytes of a proof (an HMAC-SHA256 tag).
pub const PROOF_LEN: usize = 32;
/// Shortest key file accepted (128 bits).
pub const MIN_KEY_LEN: usize = 16;
/// Longest key file accepted.
pub const MAX_KEY_LEN: usize = 4096;
/// Domain separation of every proof, with the protocol's version.
const LABEL: &[u8] = b"gtstore-auth-1";

/// A nonce or a proof on the wire.
pub type Nonce = [u8; NONCE_LEN];
/// An HMAC-SHA256 tag.
pub type Proof = [u8; PROOF_LEN];

/// Which key a peer proves it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// Daemons of one cluster: every verb.
    Cluster,
    /// Clients of a node started with `--client-key`: client verbs only.
    Client,
}

impl KeyKind {
    /// The byte on the wire.
    pub fn wire(self) -> u8 {
        match self {
            KeyKind::Cluster => 0,
            KeyKind::Client => 1,
        }
    }

    /// The kind for a wire byte.
    pub fn from_wire(b: u8) -> Option<KeyKind> {
        match b {
            0 => Some(KeyKind::Cluster),
            1 => Some(KeyKind::Client),
            _ => None,
        }
    }

    /// The word for messages: "cluster" or "client".
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Cluster => "cluster",
            KeyKind::Client => "client",
        }
    }
}

/// A shared secret read from a key file. Its `Debug` shows no bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// A key of these bytes: [`MIN_KEY_LEN`] to [`MAX_KEY_LEN`] of them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Key, String> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(format!("a key is {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes, not {}", bytes.len()));
        }
        Ok(Key(bytes.to_vec()))
    }

    /// Reads a key file: every byte of it is the key (`head -c 32
    /// /dev/urandom` makes one). Refused: a symlink, a file that is not
    /// regular, one that group or others may read or write (as ssh does),
    /// and one outside the length bounds.
    pub fn load(path: &Path) -> Result<Key, String> {
        let what = |e: std::io::Error| format!("key file {}: {e}", path.display());
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .map_err(what)?;
        let meta = file.metadata().map_err(what)?;
        if !meta.is_file() {
            return Err(format!("key file {}: not a regular file", path.display()));
        }
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "key file {}: mode {:04o} lets others read it; chmod 600 it",
                path.display(),
                meta.mode() & 0o7777
            ));
        }
        let mut bytes = Vec::with_capacity(MAX_KEY_LEN + 1);
        file.take(MAX_KEY_LEN as u64 + 1).read_to_end(&mut bytes).map_err(what)?;
        Key::from_bytes(&bytes).map_err(|e| format!("key file {}: {e}", path.display()))
    }

    /// True if `password` is this key (a RESP client's `AUTH`, as Redis's
    /// requirepass): the key file's bytes, one trailing newline aside. The
    /// two are compared as HMACs, in constant time.
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let text = self.0.strip_suffix(b"\n").map_or(&self.0[..], |t| t.strip_suffix(b"\r").unwrap_or(t));
        let tag = |bytes: &[u8]| {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
            m.update(b"gtstore-resp-auth-1");
            m.update(bytes);
            m
        };
        let want = tag(text).finalize().into_bytes();
        tag(password).verify_slice(&want).is_ok()
    }

    fn mac(&self, side: &[u8], kind: KeyKind, initiator: &Nonce, responder: &Nonce) -> Hmac<Sha256> {
        // new_from_slice accepts any key length; the length is checked in from_bytes.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        for part in [LABEL, side, &[kind.wire()], initiator, responder] {
            m.update(part);
        }
        m
    }

    /// The responder's proof for the nonces of one exchange.
    pub fn responder_proof(&self, kind: KeyKind, initiator: &Nonce, responder: &Nonce) -> Proof {
        self.mac(b"responder", kind, initiator, responder).finalize().into_bytes().into()
    }

    /// The initiator's proof for the nonces of one exchange.
    pub fn initiator_proof(&self, kind: KeyKind, initiator: &Nonce, responder: &Nonce) -> Proof {
        self.mac(b"initiator", kind, initiator, responder).finalize().into_bytes().into()
    }

    /// Checks the responder's proof, in constant time.
    pub fn check_responder(&self, kind: KeyKind, initiator: &Nonce, responder: &Nonce, proof: &Proof) -> bool {
        self.mac(b"responder", kind, initiator, responder).verify_slice(proof).is_ok()
    }

    /// Checks the initiator's proof, in constant time.
    pub fn check_initiator(&self, kind: KeyKind, initiator: &Nonce, responder: &Nonce, proof: &Proof) -> bool {
        self.mac(b"initiator", kind, initiator, responder).verify_slice(proof).is_ok()
    }
}

/// The keys a daemon accepts proofs of, and which one it proves itself
/// with when it connects out.
#[derive(Clone, Debug, Default)]
pub struct Keys {
    /// `--cluster-key`: peers proving it may use every verb.
    pub cluster: Option<Key>,
    /// `--client-key`: client verbs need a proof of it (or of the cluster key).
    pub client: Option<Key>,
    /// What this process proves on the connections it opens: the cluster
    /// key for daemons, the client key for clients and the benchmark.
    pub outbound: Option<(KeyKind, Key)>,
}

impl Keys {
    /// The key of `kind` this process accepts, if it has one.
    pub fn accepted(&self, kind: KeyKind) -> Option<&Key> {
        match kind {
            KeyKind::Cluster => self.cluster.as_ref(),
            KeyKind::Client => self.client.as_ref(),
        }
    }

    /// Keys for a daemon: it accepts both and proves the cluster key.
    pub fn daemon(cluster: Option<Key>, client: Option<Key>) -> Keys {
        let outbound = cluster.clone().map(|k| (KeyKind::Cluster, k));
        Keys { cluster, client, outbound }
    }

    /// Whether a peer that has proved `proved` (None: nothing) may send `body`.
    pub fn allows(&self, proved: Option<KeyKind>, body: &Body) -> bool {
        if crate::bugs::planted(crate::bugs::Bug::GateOpen) {
            return true;
        }
        match VerbClass::of(body) {
            VerbClass::Handshake => true,
            VerbClass::Internal => self.cluster.is_none() || proved == Some(KeyKind::Cluster),
            VerbClass::Client => self.client.is_none() || proved.is_some(),
            VerbClass::Frontend => true,
        }
    }
}

/// What a verb lets its sender do, for the key checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerbClass {
    /// AUTH, CHALLENGE, PROVE.
    Handshake,
    /// What a client may ask (reads, writes, status, the table).
    Client,
    /// Everything between daemons, replies included.
    Internal,
    /// A RESP command or an HTTP request, on a port of its own framing: it
    /// can carry no internal verb, and the RESP front end asks for the
    /// client key itself (`AUTH`), as Redis does.
    Frontend,
}

impl VerbClass {
    /// The class of a message's verb. Unknown verbs are client verbs: they
    /// are answered with an error and change nothing.
    pub fn of(body: &Body) -> VerbClass {
        match body {
            Body::Auth { .. } | Body::Challenge { .. } | Body::Prove { .. } => VerbClass::Handshake,
            Body::Put { .. }
            | Body::Get { .. }
            | Body::Del { .. }
            | Body::Inspect { .. }
            | Body::StatsReq
            | Body::Hello
            | Body::GetTable
            | Body::Unknown(_) => VerbClass::Client,
            Body::Resp(_) | Body::Http(_) | Body::Raw(_) => VerbClass::Frontend,
            _ => VerbClass::Internal,
        }
    }
}

/// Fills `buf` from the kernel's generator (getrandom(2)); nonces come
/// from here in the real daemons, never from the seeded generator.
pub fn os_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: the pointer and length describe the writable slice `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> Key {
        Key::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn proofs_check_only_with_the_same_key_nonces_kind_and_side() {
        let (ni, nr) = ([1u8; 32], [2u8; 32]);
        let k = key(7);
        let p = k.responder_proof(KeyKind::Cluster, &ni, &nr);
        assert!(k.check_responder(KeyKind::Cluster, &ni, &nr, &p));
        assert!(!key(8).check_responder(KeyKind::Cluster, &ni, &nr, &p), "another key");
        assert!(!k.check_responder(KeyKind::Client, &ni, &nr, &p), "another kind");
        assert!(!k.check_responder(KeyKind::Cluster, &nr, &ni, &p), "nonces swapped");
        assert!(!k.check_initiator(KeyKind::Cluster, &ni, &nr, &p), "the responder's proof is not the initiator's");
        let q = k.initiator_proof(KeyKind::Cluster, &ni, &nr);
        assert!(k.check_initiator(KeyKind::Cluster, &ni, &nr, &q));
        assert_ne!(p, q);
    }

    #[test]
    fn key_files_are_checked() {
        let dir = std::env::temp_dir().join(format!("gtstore-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k");
        std::fs::write(&path, [9u8; 32]).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Key::load(&path).unwrap_err().contains("chmod 600"));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(Key::load(&path).unwrap(), key(9));
        std::fs::write(&path, [9u8; 8]).unwrap();
        assert!(Key::load(&path).unwrap_err().contains("16 to 4096"));
        let link = dir.join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(Key::load(&link).is_err(), "a symlink is not followed");
        assert!(Key::load(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn verb_classes_gate_what_each_proof_allows() {
        let put = Body::Put { key: b"k".to_vec(), value: b"v".to_vec(), expiry: Default::default() };
        let reg = Body::Register { id: 1, addr: "127.0.0.1:1".into() };
        let open = Keys::default();
        assert!(open.allows(None, &put) && open.allows(None, &reg), "no keys: loopback, all open");
        let cluster = Keys::daemon(Some(key(1)), None);
        assert!(cluster.allows(None, &put));
        assert!(!cluster.allows(None, &reg));
        assert!(!cluster.allows(Some(KeyKind::Client), &reg));
        assert!(cluster.allows(Some(KeyKind::Cluster), &reg));
        let both = Keys::daemon(Some(key(1)), Some(key(2)));
        assert!(!both.allows(None, &put));
        assert!(both.allows(Some(KeyKind::Client), &put));
        assert!(both.allows(Some(KeyKind::Cluster), &put));
        assert!(both.allows(None, &Body::Auth { kind: KeyKind::Client, nonce: [0; 32] }));
    }
}

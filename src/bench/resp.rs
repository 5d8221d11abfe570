//! `gtstore-bench --resp`: the load of [`super::load`] sent to RESP2
//! servers (Redis, Valkey, or GTStore nodes' `--resp-listen` ports) as
//! `SET key value` and `GET key`. With several servers (the nodes of one
//! cluster) client `c` talks to server `c mod N` only.
//!
//! RESP replies carry no request id: a server answers each connection's
//! commands in the order they came. [`Outstanding`] is that order for one
//! connection, the commands sent and not yet answered, and it turns each
//! reply into what it means for the operation it answers ([`Answer`]).
//! An operation may take more than one command: with `--wait-cmd` a SET is
//! followed on the same connection by, say, `WAITAOF 1 1 0`, and the write
//! is done only when that reply arrives. A connection may start with AUTH.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;

use crate::net::resp::Value;

/// The largest password file `--resp-password-file` reads.
pub const MAX_PASSWORD: usize = 64 * 1024;

/// The servers and the commands every connection sends besides GET and SET.
#[derive(Clone, Debug)]
pub struct RespTarget {
    /// The servers (at least one): client `c` talks to `addrs[c % len]`.
    pub addrs: Vec<SocketAddr>,
    /// `AUTH <password>`, sent first on each connection.
    pub auth: Option<Value>,
    /// Sent after each SET (`--wait-cmd`); the write ends with its reply.
    pub wait: Option<Value>,
}

/// `--wait-cmd TEXT` as a command: its words, split on blanks.
pub fn wait_command(text: &str) -> Result<Value, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return Err("--wait-cmd: no command given".into());
    }
    Ok(crate::net::resp::command(words))
}

/// `AUTH <password>` from the file `path`. A text file loses one trailing
/// line ending (as `echo secret > FILE` writes it); a file that is not
/// text (a GTStore client key of random bytes) is the password as it is.
pub fn auth_command(path: &Path) -> Result<Value, String> {
    use std::io::Read;
    let what = |e: std::io::Error| format!("--resp-password-file {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(what)?;
    let mut bytes = Vec::new();
    file.take(MAX_PASSWORD as u64 + 1).read_to_end(&mut bytes).map_err(what)?;
    if bytes.len() > MAX_PASSWORD {
        return Err(format!("--resp-password-file {}: longer than {MAX_PASSWORD} bytes", path.display()));
    }
    let password = strip_line_end(&bytes);
    if password.is_empty() {
        return Err(format!("--resp-password-file {}: empty", path.display()));
    }
    Ok(crate::net::resp::command([b"AUTH".to_vec(), password.to_vec()]))
}

/// `bytes` without one trailing `\n` or `\r\n`, if they are text (UTF-8
/// with no other control character); binary bytes as they are.
fn strip_line_end(bytes: &[u8]) -> &[u8] {
    let body = bytes.strip_suffix(b"\n").map(|b| b.strip_suffix(b"\r").unwrap_or(b)).unwrap_or(bytes);
    match std::str::from_utf8(body) {
        Ok(text) if !text.chars().any(char::is_control) => body,
        _ => bytes,
    }
}

/// What one command awaiting its reply belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The connection's AUTH.
    Auth,
    /// The GET of operation `req`.
    Get(u64),
    /// The SET of operation `req`; `waited`: its wait command follows.
    Set { req: u64, waited: bool },
    /// The wait command after the SET of operation `req`.
    Wait(u64),
}

/// What a reply means.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// AUTH was accepted.
    Authed,
    /// AUTH was refused, with the server's reason: no operation can succeed.
    AuthRefused(String),
    /// Operation `req` is not done yet: its wait command's reply follows.
    Partial,
    /// Operation `req` is done: `Ok(true)` a GET that found a value or a
    /// write, `Ok(false)` a GET that found none (nil), `Err` why it failed.
    Done { req: u64, result: Result<bool, String> },
    /// A reply when no command awaits one: the connection is out of step.
    Unasked,
}

/// The commands sent on one connection and not yet answered, oldest first.
#[derive(Debug, Default)]
pub struct Outstanding {
    steps: VecDeque<Step>,
    /// Why the SET of the operation at the head failed, while its wait
    /// command's reply is still to come (the two are always adjacent).
    failed: Option<String>,
}

impl Outstanding {
    /// AUTH was sent.
    pub fn auth(&mut self) {
        self.steps.push_back(Step::Auth);
    }

    /// Operation `req`'s GET was sent.
    pub fn get(&mut self, req: u64) {
        self.steps.push_back(Step::Get(req));
    }

    /// Operation `req`'s SET was sent, and its wait command after it if `waited`.
    pub fn set(&mut self, req: u64, waited: bool) {
        self.steps.push_back(Step::Set { req, waited });
        if waited {
            self.steps.push_back(Step::Wait(req));
        }
    }

    /// Commands awaiting a reply.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True when no command awaits a reply.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The next reply, `v`, answers the oldest command.
    pub fn on_reply(&mut self, v: Value) -> Answer {
        let Some(step) = self.steps.pop_front() else { return Answer::Unasked };
        match (step, v) {
            (Step::Auth, Value::Error(e)) => Answer::AuthRefused(e),
            (Step::Auth, _) => Answer::Authed,
            (Step::Get(req), v) => Answer::Done { req, result: get_result(v) },
            (Step::Set { req, waited }, v) => {
                let result = set_result(v);
                if !waited {
                    return Answer::Done { req, result };
                }
                self.failed = result.err();
                Answer::Partial
            }
            (Step::Wait(req), v) => {
                let result = match (self.failed.take(), v) {
                    (Some(why), _) => Err(why),
                    (None, Value::Error(e)) => Err(format!("wait command: {e}")),
                    (None, _) => Ok(true),
                };
                Answer::Done { req, result }
            }
        }
    }
}

/// A GET's reply: a value, nil, or why it failed.
fn get_result(v: Value) -> Result<bool, String> {
    match v {
        Value::Bulk(_) => Ok(true),
        Value::Nil | Value::Null => Ok(false),
        Value::Error(e) => Err(format!("GET: {e}")),
        other => Err(format!("GET: unexpected reply {}", kind(&other))),
    }
}

/// A SET's reply: `+OK`, or why it failed.
fn set_result(v: Value) -> Result<bool, String> {
    match v {
        Value::Simple(s) if s == "OK" => Ok(true),
        Value::Error(e) => Err(format!("SET: {e}")),
        other => Err(format!("SET: unexpected reply {}", kind(&other))),
    }
}

/// A reply's type, for messages (never its contents, which may be long).
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Simple(_) => "simple string",
        Value::Error(_) => "error",
        Value::Integer(_) => "integer",
        Value::Bulk(_) => "bulk string",
        Value::Nil => "nil",
        Value::Array(_) => "array",
        Value::NilArray => "nil array",
        Value::Null => "null",
        Value::Map(_) => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Value {
        Value::ok()
    }

    fn err(text: &str) -> Value {
        Value::Error(text.into())
    }

    #[test]
    fn replies_are_matched_to_commands_in_order() {
        let mut o = Outstanding::default();
        o.get(1);
        o.set(2, false);
        o.get(3);
        o.get(4);
        assert_eq!(o.len(), 4);
        assert_eq!(o.on_reply(Value::bulk("v")), Answer::Done { req: 1, result: Ok(true) });
        assert_eq!(o.on_reply(ok()), Answer::Done { req: 2, result: Ok(true) });
        assert_eq!(o.on_reply(Value::Nil), Answer::Done { req: 3, result: Ok(false) });
        assert_eq!(o.on_reply(err("ERR boom")), Answer::Done { req: 4, result: Err("GET: ERR boom".into()) });
        assert!(o.is_empty());
        assert_eq!(o.on_reply(ok()), Answer::Unasked);
    }

    #[test]
    fn a_waited_write_ends_with_the_wait_reply() {
        let mut o = Outstanding::default();
        o.set(7, true);
        o.get(8);
        assert_eq!(o.len(), 3);
        assert_eq!(o.on_reply(ok()), Answer::Partial);
        let waitaof = Value::Array(vec![Value::Integer(1), Value::Integer(1)]);
        assert_eq!(o.on_reply(waitaof), Answer::Done { req: 7, result: Ok(true) });
        assert_eq!(o.on_reply(Value::bulk("x")), Answer::Done { req: 8, result: Ok(true) });
        assert!(o.is_empty());
    }

    #[test]
    fn a_failed_set_or_wait_fails_the_write_and_keeps_the_order() {
        let mut o = Outstanding::default();
        o.set(1, true);
        o.set(2, true);
        o.get(3);
        // The SET fails; its wait command still answers, and must be consumed.
        assert_eq!(o.on_reply(err("OOM no")), Answer::Partial);
        assert_eq!(o.on_reply(ok()), Answer::Done { req: 1, result: Err("SET: OOM no".into()) });
        // The SET succeeds, its wait fails.
        assert_eq!(o.on_reply(ok()), Answer::Partial);
        let done = o.on_reply(err("ERR WAITAOF cannot be used when numlocal is set but appendonly is disabled."));
        assert!(matches!(done, Answer::Done { req: 2, result: Err(ref e) } if e.starts_with("wait command: ERR")));
        // The failure does not leak into the next operation.
        assert_eq!(o.on_reply(Value::Nil), Answer::Done { req: 3, result: Ok(false) });
    }

    #[test]
    fn auth_comes_first_and_a_refusal_is_told() {
        let mut o = Outstanding::default();
        o.auth();
        o.get(1);
        assert_eq!(o.on_reply(ok()), Answer::Authed);
        assert_eq!(o.on_reply(Value::Nil), Answer::Done { req: 1, result: Ok(false) });
        o.auth();
        assert_eq!(o.on_reply(err("WRONGPASS invalid")), Answer::AuthRefused("WRONGPASS invalid".into()));
    }

    #[test]
    fn replies_of_the_wrong_type_are_errors_not_successes() {
        let mut o = Outstanding::default();
        o.get(1);
        o.set(2, false);
        o.set(3, false);
        assert_eq!(
            o.on_reply(ok()),
            Answer::Done { req: 1, result: Err("GET: unexpected reply simple string".into()) }
        );
        assert_eq!(o.on_reply(Value::Nil), Answer::Done { req: 2, result: Err("SET: unexpected reply nil".into()) });
        let other = o.on_reply(Value::Simple("QUEUED".into()));
        assert_eq!(other, Answer::Done { req: 3, result: Err("SET: unexpected reply simple string".into()) });
    }

    #[test]
    fn wait_command_splits_on_blanks() {
        let v = wait_command("  WAITAOF 1\t1 0 ").unwrap();
        assert_eq!(v, crate::net::resp::command(["WAITAOF", "1", "1", "0"]));
        assert!(wait_command(" \t").is_err());
    }

    #[test]
    fn a_text_password_loses_its_line_end_and_binary_is_kept() {
        assert_eq!(strip_line_end(b"secret\n"), b"secret");
        assert_eq!(strip_line_end(b"secret\r\n"), b"secret");
        assert_eq!(strip_line_end(b"secret"), b"secret");
        assert_eq!(strip_line_end(b"two\nlines\n"), b"two\nlines\n");
        let key = [0x8f, 0x00, 0x41, b'\n'];
        assert_eq!(strip_line_end(&key), &key);
    }

    #[test]
    fn password_files_are_read_with_limits() {
        let dir = std::env::temp_dir().join(format!("gtstore-bench-resp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "hunter2\n").unwrap();
        assert_eq!(auth_command(&good).unwrap(), crate::net::resp::command(["AUTH", "hunter2"]));
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        assert!(auth_command(&empty).unwrap_err().contains("empty"));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; MAX_PASSWORD + 1]).unwrap();
        assert!(auth_command(&big).unwrap_err().contains("longer than"));
        assert!(auth_command(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

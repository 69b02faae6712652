//! Lua scripts sent by their SHA-1 (`EVALSHA`), so the script body crosses the network only when a server does
//! not know it yet (first use, restart, failover) — then `EVAL` sends it and the server keeps it.

use redis::{Cmd, ToRedisArgs};

/// A Lua script, its SHA-1 computed once.
#[derive(Debug)]
pub(crate) struct LuaScript {
    /// The `command` label of its metrics and spans (`EVAL <name>`).
    pub(crate) label: &'static str,
    source: &'static str,
    sha: String,
}

impl LuaScript {
    /// `source` under the metric label `label`.
    pub(crate) fn new(label: &'static str, source: &'static str) -> Self {
        LuaScript { label, source, sha: redis::Script::new(source).get_hash().to_string() }
    }

    /// `EVALSHA sha numkeys keys... args...`.
    pub(crate) fn by_sha<A: ToRedisArgs>(&self, keys: &[&str], args: &A) -> Cmd {
        Self::command("EVALSHA", &self.sha, keys, args)
    }

    /// `EVAL source numkeys keys... args...`: runs the script and makes the server keep it.
    pub(crate) fn by_source<A: ToRedisArgs>(&self, keys: &[&str], args: &A) -> Cmd {
        Self::command("EVAL", self.source, keys, args)
    }

    fn command<A: ToRedisArgs>(verb: &str, script: &str, keys: &[&str], args: &A) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(script).arg(keys.len()).arg(keys).arg(args);
        cmd
    }
}

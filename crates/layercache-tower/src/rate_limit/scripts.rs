//! The three Lua scripts, one per algorithm. Each touches exactly one key (`KEYS[1]`), so a Redis
//! Cluster runs it on the key's node without `CROSSSLOT`, and answers in one round trip:
//! `{allowed (0 or 1), remaining, reset_ms, retry_after_ms}`.
//!
//! [`Invocation`] sends them: it writes each request's `EVALSHA` straight into the command
//! redis-rs sends (the key from its two parts, the arguments formatted once at build), where
//! `Script::invoke_async` would first copy the key and every argument into vectors of their own.

use std::io::Write as _;
use std::sync::LazyLock;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind, RedisResult, RedisWrite as _, Script, ServerErrorKind, Value};

/// Fixed window: `INCR`, and `PEXPIRE` when the count has no expiry yet (the key's first request
/// of a window). The window starts at a key's first request and ends when Redis expires the key,
/// so no clock but Redis's own is involved. ARGV: limit, window (ms).
pub(crate) static FIXED_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  ttl = tonumber(ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ttl)
end
local limit = tonumber(ARGV[1])
if count > limit then
  return {0, 0, ttl, ttl}
end
return {1, limit - count, ttl, 0}
",
    )
});

/// Sliding window, the weighted two-window counter: one hash (`w` the current window's index,
/// `c` its count, `p` the previous window's count). A request is admitted when
/// `p * (time left in the window) / window + c + 1 <= limit`. Windows are aligned on the server's
/// `TIME`. ARGV: limit, window (ms).
pub(crate) static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = math.floor(now / window)
local left = window - (now - w * window)
local stored = redis.call('HMGET', KEYS[1], 'w', 'c', 'p')
local sw = tonumber(stored[1])
local cur, prev = 0, 0
if sw == w then
  cur = tonumber(stored[2]) or 0
  prev = tonumber(stored[3]) or 0
elseif sw == w - 1 then
  prev = tonumber(stored[2]) or 0
end
local estimate = prev * left / window + cur
if estimate + 1 <= limit then
  cur = cur + 1
  redis.call('HSET', KEYS[1], 'w', w, 'c', cur, 'p', prev)
  redis.call('PEXPIRE', KEYS[1], left + window)
  return {1, math.floor(limit - estimate - 1), left, 0}
end
local retry
local room = limit - 1 - cur
if room >= 0 and prev > 0 then
  retry = math.ceil(left - room * window / prev)
else
  local next_wait = 0
  if cur > 0 then
    next_wait = window - (limit - 1) * window / cur
    if next_wait < 0 then next_wait = 0 end
  end
  retry = left + math.ceil(next_wait)
end
if retry < 1 then retry = 1 end
local reset = left
if retry > reset then reset = retry end
return {0, 0, reset, retry}
",
    )
});

/// GCRA: one string holding the theoretical arrival time (µs of the server's `TIME`, written
/// with `%.0f` so no digit is lost). A request is admitted when the new arrival time is at most
/// `limit` emission intervals ahead of now. ARGV: limit, emission interval (µs).
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local limit = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local burst = limit * interval
local ahead = tat + interval - now
if ahead > burst then
  return {0, 0, math.ceil((tat - now) / 1000), math.ceil((ahead - burst) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', math.ceil(ahead / 1000))
return {1, math.floor((burst - ahead) / interval), math.ceil(ahead / 1000), 0}
",
    )
});

/// What a limiter sends per request, minus the key: the script and its two arguments, formatted
/// once.
#[derive(Debug)]
pub(crate) struct Invocation {
    script: &'static Script,
    /// `<prefix><algorithm>:`, the start of every key.
    key_prefix: String,
    /// `ARGV[1]`, the limit.
    limit: String,
    /// `ARGV[2]`: the window (ms), or GCRA's emission interval (µs).
    second: String,
}

impl Invocation {
    pub(crate) fn new(
        script: &'static Script,
        key_prefix: String,
        limit: u64,
        second: u64,
    ) -> Self {
        Invocation {
            script,
            key_prefix,
            limit: limit.to_string(),
            second: second.to_string(),
        }
    }

    pub(crate) fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// `EVALSHA <sha1> 1 <prefix><key> <limit> <second>`, in one buffer sized up front.
    pub(crate) fn command(&self, key: &str) -> std::io::Result<Cmd> {
        let hash = self.script.get_hash();
        let size = "EVALSHA".len()
            + hash.len()
            + 1
            + self.key_prefix.len()
            + key.len()
            + self.limit.len()
            + self.second.len();
        let mut cmd = Cmd::with_capacity(6, size);
        cmd.arg("EVALSHA").arg(hash).arg("1");
        {
            let mut full_key = cmd.writer_for_next_arg();
            full_key.write_all(self.key_prefix.as_bytes())?;
            full_key.write_all(key.as_bytes())?;
        }
        cmd.arg(self.limit.as_str()).arg(self.second.as_str());
        Ok(cmd)
    }

    /// Runs `cmd`; when the server does not know the script (`NOSCRIPT`: a restart, a
    /// `SCRIPT FLUSH`, a new cluster node), loads it and runs `cmd` again, as
    /// `Script::invoke_async` does.
    pub(crate) async fn run<C: ConnectionLike>(
        &self,
        conn: &mut C,
        cmd: &Cmd,
    ) -> RedisResult<Value> {
        match send(conn, cmd).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(conn).await?;
                send(conn, cmd).await
            }
            answer => answer,
        }
    }
}

/// `Cmd::query_async` without its walk of the reply for nested errors, which rebuilds every
/// array: a script's error (`NOSCRIPT`, a Lua error) is the whole reply, never an element.
async fn send<C: ConnectionLike>(conn: &mut C, cmd: &Cmd) -> RedisResult<Value> {
    match conn.req_packed_command(cmd).await? {
        Value::ServerError(error) => Err(error.into()),
        value => Ok(value),
    }
}

/// The script's answer, `{allowed, remaining, reset_ms, retry_after_ms}`, read in place.
pub(crate) fn answer(value: &Value) -> Option<[i64; 4]> {
    let Value::Array(items) = value else {
        return None;
    };
    let [allowed, remaining, reset, retry] = items.as_slice() else {
        return None;
    };
    let int = |v: &Value| match v {
        Value::Int(n) => Some(*n),
        _ => None,
    };
    Some([int(allowed)?, int(remaining)?, int(reset)?, int(retry)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_is_the_evalsha_of_script_invoke() {
        let invocation = Invocation::new(&GCRA, "app:gcra:".to_owned(), 100, 10_000);
        let ours = invocation
            .command("client-7")
            .map(|cmd| cmd.get_packed_command());
        // What `ScriptInvocation::eval_cmd` writes: EVALSHA, the hash, the number of keys, the
        // keys, the arguments.
        let expected = redis::cmd("EVALSHA")
            .arg(GCRA.get_hash())
            .arg(1)
            .arg("app:gcra:client-7")
            .arg(100)
            .arg(10_000)
            .get_packed_command();
        assert_eq!(ours.ok(), Some(expected));
    }

    #[test]
    fn answers_are_four_integers() {
        let ints = |v: &[i64]| Value::Array(v.iter().copied().map(Value::Int).collect());
        assert_eq!(answer(&ints(&[1, 99, 10, 0])), Some([1, 99, 10, 0]));
        assert_eq!(answer(&ints(&[1, 99, 10])), None);
        assert_eq!(answer(&Value::Int(1)), None);
        let text = Value::Array(vec![Value::SimpleString("1".to_owned()); 4]);
        assert_eq!(answer(&text), None);
    }
}

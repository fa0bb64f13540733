//! The three Lua scripts, one per algorithm. Each touches exactly one key (`KEYS[1]`), so a Redis
//! Cluster runs it on the key's node without `CROSSSLOT`, and answers in one round trip:
//! `{allowed (0 or 1), remaining, reset_ms, retry_after_ms}`.

use std::sync::LazyLock;

use redis::Script;

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

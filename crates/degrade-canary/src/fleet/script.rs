//! The keys of one fleet rollout and the Lua scripts that change them. Every key of a
//! rollout shares one hash tag (`<prefix>:{<name>}:...`), so on a Redis Cluster they live on
//! one node and each script runs there whole.

/// Takes or keeps the lease. KEYS: lease, token. ARGV: holder, lease in ms. Returns the
/// fencing token of the holder's term when it kept the lease, minus a new token (one higher
/// than any before) when it took a free lease — a new term even if the number is the same as
/// before (after Redis lost its data) — or 0 when someone else holds it.
pub(crate) const LEASE_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  local t = redis.call('GET', KEYS[2])
  if t then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(t)
  end
  return 0
elseif not cur then
  local t = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return -t
end
return 0
";

/// Writes the rollout's state only for the holder of the latest token, and with it the
/// commands it applied. KEYS: token, state, commands, audit. ARGV: the writer's token, the
/// state, the number of pending commands it read (-1: none, leave the list alone), the most
/// pending commands, the audit cap, then one audit entry tail per command. Returns 1 if
/// written (the commands it read removed, their outcomes in the audit list), 0 if refused (a
/// deposed leader: someone took the lease since), 2 if a command was issued after the writer
/// read the list (nothing written: it computes again with every command).
pub(crate) const WRITE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[3])
if n >= 0 then
  if n < tonumber(ARGV[4]) and redis.call('LLEN', KEYS[3]) ~= n then
    return 2
  end
  redis.call('LTRIM', KEYS[3], n, -1)
end
redis.call('SET', KEYS[2], ARGV[2])
if #ARGV > 5 then
  local t = redis.call('TIME')
  local now = string.format('%.0f', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  for i = 6, #ARGV do
    redis.call('LPUSH', KEYS[4], now .. '\t' .. ARGV[i])
  end
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]) - 1)
end
return 1
";

/// Adds one instance's increments for one interval, once. KEYS: stats, applied. ARGV:
/// instance, run (random per process), seq, then field, count pairs. An interval already
/// applied (the same run and a seq not above the last applied) is skipped, so a retry after a
/// lost reply adds nothing. Returns 1 if added, 0 if it was already there. Memory: one field
/// per instance in `applied`, the fleet's sums in `stats`.
pub(crate) const ADD_LUA: &str = r"
local last = redis.call('HGET', KEYS[2], ARGV[1])
if last then
  local run, seq = string.match(last, '^(%x+):(%d+)$')
  if run == ARGV[2] and tonumber(seq) >= tonumber(ARGV[3]) then
    return 0
  end
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. ARGV[3])
return 1
";

/// The keys of one rollout.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) state: String,
    pub(crate) lease: String,
    pub(crate) token: String,
    pub(crate) stats: String,
    pub(crate) applied: String,
    pub(crate) commands: String,
    pub(crate) audit: String,
    pub(crate) seq: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, name: &str) -> Self {
        let base = format!("{prefix}:{{{name}}}");
        Self {
            state: format!("{base}:state"),
            lease: format!("{base}:lease"),
            token: format!("{base}:token"),
            stats: format!("{base}:stats"),
            applied: format!("{base}:applied"),
            commands: format!("{base}:commands"),
            audit: format!("{base}:audit"),
            seq: format!("{base}:command-seq"),
        }
    }
}

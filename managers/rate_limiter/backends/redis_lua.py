"""The Redis limiter: one Lua script, loaded once and called by EVALSHA, per call: the gate.

The script reads the server's clock (TIME, microseconds), so every worker shares one clock,
and checks the revocation markers, the ban, every limit, the strike counter, a new ban and
the idempotency claim in one round trip, atomically. It mirrors ``MemoryLimiter.evaluate``
step for step; ``gcra.py`` explains the integer TATs. Keys expire a little after their
time has passed; the script never relies on that, it compares the times stored in the
values.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from core.base.store import KeyValueStore
from managers.rate_limiter.backends.base import (
    BAN_PREFIX,
    BanRecord,
    Check,
    Outcome,
    Status,
    ban_key,
    decode_identity,
    encode_identity,
    level_key,
    strike_key,
    subject_of,
)
from managers.rate_limiter.backends.gcra import MICROS, Limit, Tat

SCRIPT = """
-- KEYS[1] ban, KEYS[2] strikes, KEYS[3] ban level, then one TAT per limit, then the keys
-- that must be absent, then the claim's key (when there is a claim).
-- ARGV[1] cost, ARGV[2] ban threshold (0: never), ARGV[3] strike window, ARGV[4] first ban,
-- ARGV[5] longest ban (microseconds), ARGV[6] identity, ARGV[7] limits n, ARGV[8] absent
-- keys m, ARGV[9] claim ttl (ms, 0: no claim), ARGV[10] claim value, ARGV[11] 1: the ban
-- applies (0: limits are off for this call), ARGV[12] 1: the last key is the client IP's
-- ban, which refuses the call too, then per limit: count, period (us), whole, rest
-- (period = whole * count + rest).
-- Reply: {status, now, banned_until, level, revoked, taken, tat_us_1, tat_frac_1, ...}.
-- Status 1 allowed (TATs after the request; taken: the record holding the claim's key, or
-- false), 0 limited or 3 limited and banned now (TATs as found), 2 banned, 4 revoked
-- (revoked: the index of the absent key found).
local function int(x) return string.format('%.0f', x) end
local function pair(key)
  local value = redis.call('GET', key)
  if not value then return nil end
  local a, b = string.match(value, '^(%d+):(%d+)')
  if not a then return nil end
  return tonumber(a), tonumber(b)
end
local function px(us) return math.floor(us / 1000) + 1 end

local n, m = tonumber(ARGV[7]), tonumber(ARGV[8])
for j = 1, m do
  if redis.call('EXISTS', KEYS[3 + n + j]) == 1 then return {4, 0, 0, 0, j, false} end
end

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

if ARGV[11] == '1' then
  local ban_end, ban_level = pair(KEYS[1])
  if ban_end and now < ban_end then return {2, now, ban_end, ban_level, 0, false} end
  if ARGV[12] == '1' then
    ban_end, ban_level = pair(KEYS[#KEYS])
    if ban_end and now < ban_end then return {2, now, ban_end, ban_level, 0, false} end
  end
end

local cost = tonumber(ARGV[1])
local found, after, ok = {}, {}, true
for i = 1, n do
  local at = 12 + 4 * (i - 1)
  local count, period = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local whole, rest = tonumber(ARGV[at + 3]), tonumber(ARGV[at + 4])
  local us, frac = pair(KEYS[3 + i])
  if not us or us < now then us, frac = now, 0 end
  found[i] = {us, frac}
  if cost > count then
    ok = false
  else
    local total = frac + rest * cost
    local carry = math.floor(total / count)
    local new_us, new_frac = us + whole * cost + carry, total - carry * count
    local ahead = new_us - now
    if ahead > period or (ahead == period and new_frac > 0) then ok = false end
    after[i] = {new_us, new_frac}
  end
end

local reply
if ok then
  local taken = false
  local ttl = tonumber(ARGV[9])
  if ttl > 0 then
    local claim = KEYS[3 + n + m + 1]
    if not redis.call('SET', claim, ARGV[10], 'PX', ttl, 'NX') then
      taken = redis.call('GET', claim)
    end
  end
  reply = {1, now, 0, 0, 0, taken}
  for i = 1, n do
    local tat = after[i]
    redis.call('SET', KEYS[3 + i], int(tat[1]) .. ':' .. int(tat[2]), 'PX', px(tat[1] - now))
    reply[#reply + 1] = tat[1]
    reply[#reply + 1] = tat[2]
  end
  return reply
end

local status, banned_until, level = 0, 0, 0
local threshold = tonumber(ARGV[2])
if threshold > 0 then
  local strikes, ends = pair(KEYS[2])
  if not strikes or now >= ends then strikes, ends = 0, now + tonumber(ARGV[3]) end
  strikes = strikes + 1
  if strikes <= threshold then
    redis.call('SET', KEYS[2], int(strikes) .. ':' .. int(ends), 'PX', px(ends - now))
  else
    local first, longest = tonumber(ARGV[4]), tonumber(ARGV[5])
    local previous, forgotten = pair(KEYS[3])
    if not previous or now >= forgotten then previous = 0 end
    local ttl = math.min(first, longest)
    level = 1
    while level <= previous and ttl < longest do
      level = level + 1
      ttl = math.min(ttl * 2, longest)
    end
    banned_until = now + ttl
    status = 3
    redis.call('SET', KEYS[1], int(banned_until) .. ':' .. int(level) .. ':' .. ARGV[6],
      'PX', px(ttl))
    redis.call('SET', KEYS[3], int(level) .. ':' .. int(banned_until + longest),
      'PX', px(ttl + longest))
    redis.call('DEL', KEYS[2])
  end
end
reply = {status, now, banned_until, level, 0, false}
for i = 1, n do
  reply[#reply + 1] = found[i][1]
  reply[#reply + 1] = found[i][2]
end
return reply
"""

_STATUS: dict[int, Status] = {
    1: "allowed",
    0: "limited",
    3: "banned",
    2: "banned",
    4: "revoked",
}

Runner = Callable[[Sequence[str], Sequence[Any]], Any]


@runtime_checkable
class ScriptingStore(Protocol):
    """A store that runs Lua scripts (``RedisStore.script``)."""

    def script(self, source: str) -> Runner: ...


@functools.lru_cache(maxsize=1024)
def _limit_args(limits: tuple[Limit, ...]) -> tuple[int, ...]:
    """Per limit: count, period (us), whole, rest (period = whole * count + rest)."""
    args: list[int] = []
    for limit in limits:
        whole, rest = divmod(limit.period_us, limit.count)
        args += [limit.count, limit.period_us, whole, rest]
    return tuple(args)


class RedisLimiter:
    """``LimiterBackend`` on the Redis server behind ``store``."""

    name = "redis"

    def __init__(self, store: KeyValueStore, scripting: ScriptingStore) -> None:
        self._store = store
        self._run = scripting.script(SCRIPT)

    def evaluate(self, check: Check) -> Outcome:
        policy = check.ban
        claim = check.claim
        args: list[Any] = [
            check.cost,
            policy.threshold,
            policy.window_us,
            policy.ttl_us,
            policy.max_ttl_us,
            encode_identity(check.identity),
            len(check.limits),
            len(check.absent),
            claim.ttl_ms if claim is not None else 0,
            claim.value if claim is not None else "",
            1 if check.limited else 0,
            1 if check.ip_subject else 0,
        ]
        args += _limit_args(check.limits)
        keys = [check.ban_key, check.strike_key, check.level_key, *check.keys, *check.absent]
        if claim is not None:
            keys.append(claim.key)
        if check.ip_subject:
            keys.append(ban_key(check.ip_subject))
        reply = self._run(keys, args)
        code, now, until, level, revoked = (int(value) for value in reply[:5])
        taken = reply[5] if isinstance(reply[5], bytes) else None
        tats = tuple(Tat(int(reply[i]), int(reply[i + 1])) for i in range(6, len(reply), 2))
        return Outcome(
            _STATUS[code],
            now,
            tats,
            until if code in (2, 3) else None,
            level,
            revoked - 1 if code == 4 else None,
            taken,
        )

    def bans(self) -> list[BanRecord]:
        found: list[BanRecord] = []
        keys = list(self._store.scan(BAN_PREFIX))
        now = round(self._store.time() * MICROS)
        for key in keys:
            value = self._store.get(key)
            if value is None:  # expired since the scan
                continue
            try:
                until, level, identity = value.split(b":", 2)
                ban = BanRecord(decode_identity(identity), int(until), int(level))
            except ValueError:  # not written by the script: nothing to report
                continue
            if now < ban.until:
                found.append(ban)
        return found

    def unban(self, identity: str) -> bool:
        subject = subject_of(identity)
        existed = self._store.delete(ban_key(subject)) > 0
        self._store.delete(strike_key(subject), level_key(subject))
        return existed

"""The pool's decisions, each one Lua script run atomically in Redis (Redis' own clock).

Keys under the pool's prefix ``P`` (a hash tag keeps them in one slot):

    P:inflight             zset  call id -> lease expiry (ms): the global cap
    P:key:<id>             hash  disabled, disabled_at, cool_until, cool_ms, streak, cw,
                                 calls, ok, failed, rejected, last, last_at
    P:key:<id>:inflight    zset  call id -> lease expiry: the key's load
    P:key:<id>:w<span>     zset  call id -> start (ms): the key's calls in a moving window
    P:rr, P:rr:last        the tie-break rotation; the key round robin picked last

ACQUIRE: drop expired leases; refuse past the global cap; among the keys that are neither
disabled, cooling nor full in any window, pick one by strategy and record the call in its
windows and leases, all in one step: two workers never both take a key's last slot.
Returns ``{1, id, 0}``, or ``{0, reason, wait_ms}`` with reason ``capacity``, ``rate``
(some key frees a slot in wait_ms), ``cooling`` (every usable key cools) or
``disabled`` (no usable key at all).

RELEASE: end a call's lease and record its outcome: ``ok`` (ends a fault streak),
``cool`` (429/5xx: cool down; the first fault of a streak ``min``, each later one after a
cool-down ended twice the last, at most ``max``; never shorter than Retry-After; a cool-down
only ever lengthens), ``auth`` (401/403: disabled until enabled), ``rejected`` and
``abandoned`` (only counted). Returns the key's ``cool_until`` (ms, 0 if none) and the
Redis time.
"""

from __future__ import annotations

ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local P, strategy = ARGV[1], ARGV[2]
local cap, lease, call, n = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local all = P .. 'inflight'
redis.call('ZREMRANGEBYSCORE', all, '-inf', now)
if redis.call('ZCARD', all) >= cap then
  local first = redis.call('ZRANGE', all, 0, 0, 'WITHSCORES')
  return {0, 'capacity', math.max(10, math.min(250, tonumber(first[2]) - now))}
end
local keys, i = {}, 7
for k = 1, n do
  local spec = {id = ARGV[i], weight = tonumber(ARGV[i + 1]), windows = {}}
  local nwin = tonumber(ARGV[i + 2])
  i = i + 3
  for w = 1, nwin do
    spec.windows[w] = {amount = tonumber(ARGV[i]), span = tonumber(ARGV[i + 1])}
    i = i + 2
  end
  keys[k] = spec
end
local usable, best_wait, reason = {}, nil, 'disabled'
for k, spec in ipairs(keys) do
  local h = P .. 'key:' .. spec.id
  spec.h = h
  local state = redis.call('HMGET', h, 'disabled', 'cool_until')
  if not state[1] then
    local wait = math.max(0, (tonumber(state[2]) or 0) - now)
    local cooling = wait > 0
    local usage = 0
    for _, win in ipairs(spec.windows) do
      local z = h .. ':w' .. win.span
      redis.call('ZREMRANGEBYSCORE', z, '-inf', now - win.span)
      local count = redis.call('ZCARD', z)
      if count >= win.amount then
        local oldest = redis.call('ZRANGE', z, count - win.amount, count - win.amount, 'WITHSCORES')
        wait = math.max(wait, tonumber(oldest[2]) + win.span - now + 1)
      end
      usage = math.max(usage, count / win.amount)
    end
    if wait > 0 then
      if cooling then
        if reason == 'disabled' then reason = 'cooling' end
      else
        reason = 'rate'
      end
      if best_wait == nil or wait < best_wait then best_wait = wait end
    else
      local f = h .. ':inflight'
      redis.call('ZREMRANGEBYSCORE', f, '-inf', now)
      spec.load, spec.usage = redis.call('ZCARD', f), usage
      usable[#usable + 1] = k
    end
  end
end
if #usable == 0 then return {0, reason, best_wait or 0} end
local turn = redis.call('INCR', P .. 'rr')
local pick = nil
if strategy == 'weighted' then
  local total, top = 0, nil
  for _, k in ipairs(usable) do
    local spec = keys[k]
    spec.cw = redis.call('HINCRBY', spec.h, 'cw', spec.weight)
    total = total + spec.weight
    if top == nil or spec.cw > top then top, pick = spec.cw, k end
  end
  redis.call('HINCRBY', keys[pick].h, 'cw', -total)
elseif strategy == 'round_robin' then
  local last = tonumber(redis.call('GET', P .. 'rr:last')) or 0
  for step = 1, n do
    local k = (last + step - 1) % n + 1
    if keys[k].load ~= nil then pick = k break end
  end
  redis.call('SET', P .. 'rr:last', pick)
else
  for step = 0, n - 1 do
    local k = (turn + step) % n + 1
    local spec = keys[k]
    if spec.load ~= nil and (pick == nil or spec.load < keys[pick].load or
        (spec.load == keys[pick].load and spec.usage < keys[pick].usage)) then pick = k end
  end
end
local spec = keys[pick]
for _, win in ipairs(spec.windows) do
  local z = spec.h .. ':w' .. win.span
  redis.call('ZADD', z, now, call)
  redis.call('PEXPIRE', z, win.span + 1000)
end
redis.call('ZADD', all, now + lease, call)
redis.call('PEXPIRE', all, lease + 1000)
redis.call('ZADD', spec.h .. ':inflight', now + lease, call)
redis.call('PEXPIRE', spec.h .. ':inflight', lease + 1000)
redis.call('HINCRBY', spec.h, 'calls', 1)
return {1, spec.id, 0}
"""

RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local P, id, call, outcome = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local retry_after, cool_min, cool_max = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local h = P .. 'key:' .. id
redis.call('ZREM', P .. 'inflight', call)
redis.call('ZREM', h .. ':inflight', call)
redis.call('HSET', h, 'last', outcome, 'last_at', now)
local cool_until = tonumber(redis.call('HGET', h, 'cool_until')) or 0
if outcome == 'ok' then
  redis.call('HINCRBY', h, 'ok', 1)
  redis.call('HSET', h, 'streak', 0)
elseif outcome == 'cool' then
  redis.call('HINCRBY', h, 'failed', 1)
  local streak = tonumber(redis.call('HGET', h, 'streak')) or 0
  if cool_until <= now or streak == 0 then
    streak = streak + 1
    redis.call('HSET', h, 'streak', streak)
  end
  local span = math.floor(math.min(cool_max, cool_min * 2 ^ (streak - 1)))
  span = math.max(span, retry_after)
  if now + span > cool_until then
    cool_until = now + span
    redis.call('HSET', h, 'cool_until', cool_until, 'cool_ms', span)
  end
elseif outcome == 'auth' then
  redis.call('HINCRBY', h, 'failed', 1)
  redis.call('HSET', h, 'disabled', ARGV[8], 'disabled_at', now)
elseif outcome == 'rejected' then
  redis.call('HINCRBY', h, 'rejected', 1)
end
return {cool_until, now}
"""

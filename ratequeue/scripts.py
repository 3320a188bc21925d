"""The Lua scripts that run on each shard primary, one per queue operation.

Each operation is a single script so it costs one round trip and is atomic on the shard. Keys are
computed inside the scripts: a shard is a standalone primary (never Redis Cluster), so every key
of a shard lives on the same node.

Key layout on a shard (`N` is a canonical number):
  rq:fence          the shard epoch this node was made primary in; writes carry the epoch the
                    client routed by and are refused on a mismatch (fencing after a failover)
  rq:q:N            list of message ids waiting to be sent, head first; Redis deletes it when empty
  rq:msg            hash N/id -> record `attempt|segments|enqueued_ms|number|body`; a message is
                    named by its number and id (`N/id`, the "message key"): ids are per number
  rq:seg            hash N -> segments queued or leased (the capacity check); field gone at zero
  rq:dr             hash N -> default `rate:burst`, kept while N has queued or leased messages
  rq:rates          hash N -> override `rate:burst` (configuration, set by the API)
  rq:tat:N          GCRA theoretical arrival time (ms); expires by itself once it no longer limits
  rq:ready          zset N -> ms when N may send next; holds exactly the numbers with queued ids
  rq:leases         zset "seq:N/id" -> lease expiry (ms); a receipt names its member
  rq:lease_seq      receipt counter
  rq:seen:W         hash N/id -> body fingerprint, for messages enqueued in dedup window W
                    (expires after two windows): a retry is a duplicate, another body a conflict
  rq:barrier        incremented by every enqueue and rate change: WAIT after a duplicate covers
                    the earlier write of the same id, and the count orders nodes by how much of
                    the acknowledged stream they hold (`ratequeue.membership`)

Times come from the shard's own clock (`TIME`); scripts are replicated by effects, so replicas
apply the same values.
"""

from __future__ import annotations

from ratequeue.rates import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND


def message_key(number: str, message_id: str) -> str:
    """How `rq:msg` and `rq:leases` name a message: message ids are per number."""
    return f"{number}/{message_id}"


# Helpers shared by the scripts (prepended to each; Lua has no imports inside Redis).
_PRELUDE = (
    f"local MIN_PER_SECOND, MAX_PER_SECOND, MAX_BURST = {MIN_PER_SECOND!r}, {MAX_PER_SECOND!r}, "
    f"{MAX_BURST!r}\n"
    + r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function check_fence(expected)
  local fence = redis.call('GET', 'rq:fence')
  if fence ~= expected then
    return redis.error_reply('STALEEPOCH node=' .. tostring(fence) .. ' client=' .. expected)
  end
  return nil
end

-- A stored rate outside the allowed range (written before the API checked it, or by hand) is
-- clamped into it, so no time computed from it can make a command fail half-way.
local function parse_rate(raw)
  local per_second, burst = string.match(raw, '^([^:]+):(%d+)$')
  per_second, burst = tonumber(per_second), tonumber(burst)
  if not per_second or per_second ~= per_second or per_second < MIN_PER_SECOND then
    per_second = MIN_PER_SECOND
  elseif per_second > MAX_PER_SECOND then
    per_second = MAX_PER_SECOND
  end
  if not burst or burst < 1 then burst = 1 elseif burst > MAX_BURST then burst = MAX_BURST end
  return per_second, burst
end

local function rate_of(number, default_raw)
  local raw = redis.call('HGET', 'rq:rates', number)
  if not raw then raw = default_raw or redis.call('HGET', 'rq:dr', number) end
  if not raw then return 1, 1 end
  return parse_rate(raw)
end

-- A message key is `number/id`; keys written before ids were per number are the bare id.
local function id_of(key)
  return string.match(key, '/(.*)$') or key
end

local function parse_record(rec)
  local attempt, segments, enqueued, number, body =
    string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
  return tonumber(attempt), tonumber(segments), enqueued, number, body
end

-- GCRA: interval T ms per segment, tolerance tau = (burst - 1) * T. A number may send when
-- tat - now <= tau; sending s segments moves tat to max(tat, now) + s * T.
local function eligible_at(number, now, per_second, burst)
  local interval = 1000.0 / per_second
  local tat = tonumber(redis.call('GET', 'rq:tat:' .. number) or '0')
  local at = tat - (burst - 1) * interval
  if at < now then at = now end
  return at
end
"""
)

ENQUEUE_BATCH = (
    _PRELUDE
    + r"""
-- ARGV: fence_epoch, dedup_window_s, max_queue_seconds, max_number_segments, then per message:
--       id, number, segments, default_rate ("rate:burst"), body
-- Returns per message {status, detail}: status ok | duplicate | conflict | full.
local refused = check_fence(ARGV[1])
if refused then return refused end
local now = now_ms()
local window = tonumber(ARGV[2])
local max_queue_seconds = tonumber(ARGV[3])
local max_number_segments = tonumber(ARGV[4])
local w = math.floor(now / 1000 / window)
local seen_now, seen_before = 'rq:seen:' .. w, 'rq:seen:' .. (w - 1)
local results = {}
for i = 5, #ARGV, 5 do
  local id, number, segments, default_raw, body =
    ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3], ARGV[i + 4]
  local key = number .. '/' .. id
  -- 16 hex digits of SHA-1 tell a retry from another message under the same id; a collision
  -- would only make a different body count as a retry.
  local fingerprint = string.sub(redis.sha1hex(body), 1, 16)
  local record = redis.call('HGET', 'rq:msg', key)
  if not record then
    -- Queued before ids were per number (keyed by its bare id): the same message if it is this
    -- number's, so a retry across the upgrade neither queues it twice nor orphans it.
    local legacy = redis.call('HGET', 'rq:msg', id)
    if legacy then
      local _, _, _, legacy_number = parse_record(legacy)
      if legacy_number == number then record = legacy end
    end
  end
  local seen = redis.call('HGET', seen_now, key) or redis.call('HGET', seen_before, key)
  local earlier = seen
  if record then
    local _, _, _, _, earlier_body = parse_record(record)
    earlier = string.sub(redis.sha1hex(earlier_body), 1, 16)
  end
  -- Ids the layout before remembered (sets per shard, without number or body) are not read:
  -- they cannot tell a retry from another number's message, and queuing a retry twice is a
  -- duplicate where taking another message for a retry would lose it.
  if earlier and earlier ~= fingerprint then
    results[#results + 1] = {'conflict', 'id ' .. id .. ' was used for another message to ' ..
      number .. ' within the dedup window; use a new id for a new message'}
  elseif earlier then
    results[#results + 1] = {'duplicate', ''}
  else
    local per_second, burst = rate_of(number, default_raw)
    local held = tonumber(redis.call('HGET', 'rq:seg', number) or '0')
    local capacity = math.floor(per_second * max_queue_seconds)
    local limit = max_queue_seconds .. ' s of sending at ' .. per_second .. '/s'
    if capacity > max_number_segments then
      capacity, limit = max_number_segments, 'the most segments one number may hold'
    end
    if held + segments > capacity then
      results[#results + 1] = {'full', 'queue for ' .. number .. ' holds ' .. held ..
        ' segments; adding ' .. segments .. ' would exceed its limit of ' .. capacity ..
        ' (' .. limit .. ')'}
    else
      redis.call('HSET', 'rq:msg', key,
        '0|' .. segments .. '|' .. now .. '|' .. number .. '|' .. body)
      redis.call('HSET', seen_now, key, fingerprint)
      if held == 0 then
        -- The number's first held message records its default rate (kept until the last ack).
        redis.call('HSET', 'rq:dr', number, default_raw)
      end
      redis.call('HINCRBY', 'rq:seg', number, segments)
      if redis.call('RPUSH', 'rq:q:' .. number, id) == 1 then
        redis.call('ZADD', 'rq:ready', eligible_at(number, now, per_second, burst), number)
      end
      results[#results + 1] = {'ok', ''}
    end
  end
end
redis.call('PEXPIRE', seen_now, window * 2000)
-- Always write, so the WAIT that follows on this connection covers this node's replication
-- offset as of now: a duplicate of an unacknowledged earlier write is then acknowledged only
-- once that earlier write has reached the replicas too.
redis.call('INCR', 'rq:barrier')
return results
"""
)

# Consumers must drain a full shard (Redis refuses an unflagged script at its first write past
# maxmemory, which may be a dequeue's reschedule): the scripts that lease and acknowledge run
# also then. What they write is bounded by the messages already stored; an ack frees room.
_ALLOW_OOM = "#!lua flags=allow-oom\n"

DEQUEUE = (
    _ALLOW_OOM
    + _PRELUDE
    + r"""
-- ARGV: max, lease_ms, requeue_limit
-- Returns {now_ms, {lease, id, number, attempt, body}...}; a receipt names its lease.
local now = now_ms()
local max = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])

-- Expired leases go back to the head of their queue with attempt + 1.
local expired = redis.call('ZRANGEBYSCORE', 'rq:leases', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, lease in ipairs(expired) do
  redis.call('ZREM', 'rq:leases', lease)
  local key = string.match(lease, '^%d+:(.*)$')
  if not key then
    -- A lease written before leases named their message (member = seq, id in rq:lease).
    key = redis.call('HGET', 'rq:lease', lease)
    redis.call('HDEL', 'rq:lease', lease)
  end
  local rec = key and redis.call('HGET', 'rq:msg', key)
  if rec then
    local attempt, segments, enqueued, number, body = parse_record(rec)
    redis.call('HSET', 'rq:msg', key,
      (attempt + 1) .. '|' .. segments .. '|' .. enqueued .. '|' .. number .. '|' .. body)
    if redis.call('LPUSH', 'rq:q:' .. number, id_of(key)) == 1 then
      local per_second, burst = rate_of(number)
      redis.call('ZADD', 'rq:ready', eligible_at(number, now, per_second, burst), number)
    end
  end
end

-- Serve due numbers in rounds, one message per number per round, longest-waiting first.
local out = {}
local next_seq = nil
while #out < max do
  local due = redis.call('ZRANGEBYSCORE', 'rq:ready', '-inf', now, 'LIMIT', 0, max - #out)
  if #due == 0 then break end
  for _, number in ipairs(due) do
    local per_second, burst = rate_of(number)
    local interval = 1000.0 / per_second
    local tau = (burst - 1) * interval
    local tat = tonumber(redis.call('GET', 'rq:tat:' .. number) or '0')
    if tat < now then tat = now end
    if tat - now > tau + 0.001 then
      -- The rate was lowered since the number was scheduled: not due yet after all.
      redis.call('ZADD', 'rq:ready', tat - tau, number)
    else
      local id = redis.call('LPOP', 'rq:q:' .. number)
      local key = id and number .. '/' .. id
      local rec = id and redis.call('HGET', 'rq:msg', key)
      if id and not rec then
        key = id  -- queued before ids were per number
        rec = redis.call('HGET', 'rq:msg', key)
      end
      if not rec then
        if not id then redis.call('ZREM', 'rq:ready', number) end
      else
        -- Every value is bounded by the clamped rate: nothing below can fail after the LPOP.
        local attempt, segments, _, _, body = parse_record(rec)
        local new_tat = tat + segments * interval
        redis.call('SET', 'rq:tat:' .. number, tostring(new_tat),
          'PX', math.max(1, math.ceil(new_tat - now)))
        if not next_seq then
          -- One counter write per call, not per message (unused numbers are simply skipped).
          next_seq = redis.call('INCRBY', 'rq:lease_seq', max - #out) - (max - #out)
        end
        next_seq = next_seq + 1
        local lease = string.format('%.0f', next_seq) .. ':' .. key
        redis.call('ZADD', 'rq:leases', now + lease_ms, lease)
        if redis.call('LLEN', 'rq:q:' .. number) > 0 then
          local at = new_tat - tau
          if at < now then at = now end
          redis.call('ZADD', 'rq:ready', at, number)
        else
          redis.call('ZREM', 'rq:ready', number)
        end
        out[#out + 1] = {lease, id, number, attempt, body}
      end
    end
  end
end
return {now, out}
"""
)

ACK = (
    _ALLOW_OOM
    + _PRELUDE
    + r"""
-- ARGV: leases ("seq:N/id", as named by receipts). Returns the number of leases acknowledged.
-- A pair that no longer matches a live lease (expired, whether or not a dequeue has returned it
-- to its queue yet, or issued by a primary that died before replicating it) acknowledges
-- nothing: an expired lease belongs to the next consumer.
local now = now_ms()
local acked = 0
for _, lease in ipairs(ARGV) do
  local key = string.match(lease, '^%d+:(.*)$')
  local expires = redis.call('ZSCORE', 'rq:leases', lease)
  if expires and tonumber(expires) >= now then
    redis.call('ZREM', 'rq:leases', lease)
    local rec = redis.call('HGET', 'rq:msg', key)
    if rec then
      local segments, number = string.match(rec, '^%d+|(%d+)|%d+|([^|]*)|')
      redis.call('HDEL', 'rq:msg', key)
      if redis.call('HINCRBY', 'rq:seg', number, -tonumber(segments)) <= 0 then
        redis.call('HDEL', 'rq:seg', number)
        redis.call('HDEL', 'rq:dr', number)
      end
    end
    acked = acked + 1
  end
end
return acked
"""
)

SET_RATE = (
    _PRELUDE
    + r"""
-- ARGV: fence_epoch, number, rate ("rate:burst")
local refused = check_fence(ARGV[1])
if refused then return refused end
local number = ARGV[2]
local per_second, burst = parse_rate(ARGV[3])
local eligible = eligible_at(number, now_ms(), per_second, burst)  -- before any write
redis.call('HSET', 'rq:rates', number, ARGV[3])
if redis.call('ZSCORE', 'rq:ready', number) then
  redis.call('ZADD', 'rq:ready', eligible, number)
end
redis.call('INCR', 'rq:barrier')  -- acknowledged after WAIT, like an enqueue: counted like one
return 'OK'
"""
)

NUMBER_STATUS = (
    _PRELUDE
    + r"""
-- ARGV: number, default_rate. Returns {now, depth, held_segments, rate, rate_source, eligible}
local now = now_ms()
local number = ARGV[1]
local override = redis.call('HGET', 'rq:rates', number)
local rate = override or ARGV[2]
local per_second, burst = parse_rate(rate)
local stored_rate, stored_burst = string.match(rate, '^([^:]+):(%d+)$')
if tonumber(stored_rate) ~= per_second or tonumber(stored_burst) ~= burst then
  rate = per_second .. ':' .. burst  -- the rate in force, clamped into the allowed range
end
return {now, redis.call('LLEN', 'rq:q:' .. number),
  tonumber(redis.call('HGET', 'rq:seg', number) or '0'), rate,
  override and 'override' or 'default', tostring(eligible_at(number, now, per_second, burst))}
"""
)

SHARD_STATS = r"""
-- Returns {messages (queued + leased), leased, ready numbers}
return {redis.call('HLEN', 'rq:msg'), redis.call('ZCARD', 'rq:leases'),
  redis.call('ZCARD', 'rq:ready')}
"""

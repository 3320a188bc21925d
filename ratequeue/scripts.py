"""The Lua scripts that run on each shard primary, one per queue operation.

Each operation is a single script so it costs one round trip and is atomic on the shard. Keys are
computed inside the scripts: a shard is a standalone primary (never Redis Cluster), so every key
of a shard lives on the same node and no hash tags are needed.

Key layout on a shard, version 2 (`N` is a canonical number). A number's state lives in one
small hash next to its list, so serving a message touches two keys of its number; each script
reads a number's hash once per call and writes it once per number (multi-field writes):
  rq:fence          the shard epoch this node was made primary in; writes carry the epoch the
                    client routed by and are refused on a mismatch (fencing after a failover)
  rq:q:N            list of queued messages, head first, each entry the whole message
                    `attempt|segments|id|body` (ids never hold `|`); Redis deletes it when empty
  rq:n:N            hash, the number's state: `r` the rate in force (`rate:burst`, taken from
                    rq:rates or the message's default when the number's first message is held,
                    changed by SET_RATE), `s` segments held (queued + leased: the capacity
                    check), `t` the GCRA theoretical arrival time (ms), and one field per lease,
                    named by its sequence number, holding the leased message's entry. Exists
                    while N holds messages, then expires once `t` no longer limits
  rq:rates          hash N -> override `rate:burst` (configuration, set by the API)
  rq:ready          zset N -> ms when N may send next; holds exactly the numbers with queued
                    messages
  rq:leases         zset "seq:N/id" -> lease expiry (ms); a receipt names its member
  rq:lease_seq      receipt counter
  rq:count          messages held on the shard (queued + leased), for the statistics
  rq:seen:W         hash N/id -> body fingerprint, for messages enqueued in dedup window W
                    (expires after two windows): a retry is a duplicate, another body a conflict
  rq:seen:legacy    the same for messages converted from layout 1 (kept 10 hours)
  rq:barrier        incremented by every enqueue and rate change: WAIT after a duplicate covers
                    the earlier write of the same id, and the count orders nodes by how much of
                    the acknowledged stream they hold (`ratequeue.membership`)

Layout 1 (before this one: `rq:msg`, `rq:seg`, `rq:dr`, `rq:tat:N`, lists of ids) is converted
in place by the first script call that finds it (`migrate_legacy`), see docs/upgrading.md.

Times come from the shard's own clock (`TIME`); scripts are replicated by effects, so replicas
apply the same values.
"""

from __future__ import annotations

import redis

from ratequeue.rates import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND


def message_key(number: str, message_id: str) -> str:
    """How `rq:leases` and `rq:seen:W` name a message: message ids are per number."""
    return f"{number}/{message_id}"


def queue_key(number: str) -> str:
    return f"rq:q:{number}"


def state_key(number: str) -> str:
    return f"rq:n:{number}"


def entry_id(entry: bytes | str) -> str:
    """The message id of a queue entry or a lease field's value (`attempt|segments|id|body`)."""
    text = entry.decode() if isinstance(entry, bytes) else entry
    return text.split("|", 3)[2]


def held_ids(conn: redis.Redis, number: str) -> set[str]:
    """Ids of the messages `number` holds on the node behind `conn` (queued or leased): for
    tests and forensics, which look into a node without running a script."""
    queued = conn.lrange(queue_key(number), 0, -1)
    leased = [v for f, v in conn.hgetall(state_key(number)).items() if f.isdigit()]
    return {entry_id(entry) for entry in [*queued, *leased]}


# Longest a message converted from layout 1 is remembered for deduplication: as long as a queue
# can hold it (the 10-hour cap).
LEGACY_SEEN_MS = 36_000_000

# Helpers shared by the scripts (prepended to each; Lua has no imports inside Redis).
_PRELUDE = (
    f"local MIN_PER_SECOND, MAX_PER_SECOND, MAX_BURST = {MIN_PER_SECOND!r}, {MAX_PER_SECOND!r}, "
    f"{MAX_BURST!r}\nlocal LEGACY_SEEN_MS = {LEGACY_SEEN_MS}\n"
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
  if not raw then return 1, 1 end
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

-- A queue entry (also a lease field's value): attempt|segments|id|body.
local function parse_entry(entry)
  local attempt, segments, id, body = string.match(entry, '^(%d+)|(%d+)|([^|]*)|(.*)$')
  return tonumber(attempt), tonumber(segments), id, body
end

-- Commands with one argument per item, split so no call unpacks more than Lua's stack allows.
local function call_chunked(command, key, items)
  local step = 4000
  for first = 1, #items, step do
    redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
  end
end

-- GCRA: interval T ms per segment, tolerance tau = (burst - 1) * T. A number may send when
-- tat - now <= tau; sending s segments moves tat to max(tat, now) + s * T.
local function eligible_after(tat, now, per_second, burst)
  local at = (tat or 0) - (burst - 1) * 1000.0 / per_second
  if at < now then at = now end
  return at
end

-- A number that holds no message any more keeps its state only while its GCRA time limits.
local function release_number(number, now)
  local key = 'rq:n:' .. number
  local tat = tonumber(redis.call('HGET', key, 't') or '0')
  if tat > now then
    redis.call('HDEL', key, 's', 'r')
    redis.call('PEXPIRE', key, math.max(1, math.ceil(tat - now)))
  else
    redis.call('DEL', key)
  end
end

-- Layout 1 kept messages in the shard-wide hash rq:msg (`N/id`, or a bare id before ids were
-- per number, -> attempt|segments|enqueued|number|body), lists of ids, held segments and default
-- rates in rq:seg and rq:dr, GCRA times in rq:tat:N. Converted in one go by the first script
-- call that finds any of it, so no message of it is stranded; retries of converted messages stay
-- duplicates through rq:seen:legacy.
local function migrate_legacy()
  if redis.call('EXISTS', 'rq:msg', 'rq:seg', 'rq:dr') == 0 then return end
  local converted = 0
  local function take(key)
    local rec = redis.call('HGET', 'rq:msg', key)
    if not rec then return nil end
    redis.call('HDEL', 'rq:msg', key)
    local attempt, segments, _, number, body =
      string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
    local id = string.match(key, '/(.*)$') or key
    redis.call('HSET', 'rq:seen:legacy', number .. '/' .. id,
      string.sub(redis.sha1hex(body), 1, 16))
    converted = converted + 1
    return attempt .. '|' .. segments .. '|' .. id .. '|' .. body, number, id
  end
  local held = redis.call('HGETALL', 'rq:seg')
  for i = 1, #held, 2 do
    local number = held[i]
    local queue = 'rq:q:' .. number
    local entries = {}
    for _, item in ipairs(redis.call('LRANGE', queue, 0, -1)) do
      if string.find(item, '|', 1, true) then
        entries[#entries + 1] = item  -- already an entry of layout 2
      else
        local entry = take(number .. '/' .. item) or take(item)
        if entry then entries[#entries + 1] = entry end
      end
    end
    redis.call('DEL', queue)
    call_chunked('RPUSH', queue, entries)
    local rate = redis.call('HGET', 'rq:rates', number) or redis.call('HGET', 'rq:dr', number)
    local fields = {'r', rate or '1:1', 's', held[i + 1]}
    local tat = redis.call('GET', 'rq:tat:' .. number)
    if tat then
      fields[5], fields[6] = 't', tat
      redis.call('DEL', 'rq:tat:' .. number)
    end
    redis.call('HSET', 'rq:n:' .. number, unpack(fields))
  end
  -- What is left in rq:msg is leased: move each record to its number's state under its lease.
  local function lease_moved(seq, key, score)
    local entry, number, id = take(key)
    if not entry then return end
    redis.call('HSET', 'rq:n:' .. number, seq, entry)
    local member = seq .. ':' .. number .. '/' .. id
    if score then redis.call('ZADD', 'rq:leases', score, member) end
  end
  for _, lease in ipairs(redis.call('ZRANGE', 'rq:leases', 0, -1)) do
    local seq, key = string.match(lease, '^(%d+):(.*)$')
    if seq then
      local score = nil
      if not string.find(key, '/', 1, true) then  -- named by bare id: rename to seq:N/id
        score = redis.call('ZSCORE', 'rq:leases', lease)
        redis.call('ZREM', 'rq:leases', lease)
      end
      lease_moved(seq, key, score)
    else
      -- Older still: the member is the bare sequence number, its message key in rq:lease.
      local key = redis.call('HGET', 'rq:lease', lease)
      if key then
        local score = redis.call('ZSCORE', 'rq:leases', lease)
        redis.call('ZREM', 'rq:leases', lease)
        lease_moved(lease, key, score)
      end
    end
  end
  if converted > 0 then
    redis.call('INCRBY', 'rq:count', converted)
    redis.call('PEXPIRE', 'rq:seen:legacy', LEGACY_SEEN_MS)
  end
  -- Records no list or lease names could not be delivered in layout 1 either; kept for people.
  if redis.call('EXISTS', 'rq:msg') == 1 then
    redis.call('RENAME', 'rq:msg', 'rq:msg:unreferenced')
  end
  redis.call('DEL', 'rq:seg', 'rq:dr', 'rq:lease')
end
"""
)

ENQUEUE_BATCH = (
    _PRELUDE
    + r"""
-- ARGV: fence_epoch, dedup_window_s, max_queue_seconds, messages: one line per message,
--       `number|default_rate|segments|id|body` (a body is JSON, which holds no raw newline; one
--       argument for the batch costs the client one encoding instead of five per message)
-- Returns {codes, details}: codes has one letter per message, o (queued), d (duplicate),
-- c (conflict) or f (full); details holds the reason of each c and f, in order.
local refused = check_fence(ARGV[1])
if refused then return refused end
migrate_legacy()
local now = now_ms()
local window = tonumber(ARGV[2])
local max_queue_seconds = tonumber(ARGV[3])
local w = math.floor(now / 1000 / window)
local seen_now, seen_before = 'rq:seen:' .. w, 'rq:seen:' .. (w - 1)
local legacy = redis.call('EXISTS', 'rq:seen:legacy') == 1
local states, touched = {}, {}
local batch_seen, seen_writes = {}, {}
local codes, details = {}, {}
local queued = 0
local blob = ARGV[4]
local position = 1
while position <= #blob do
  local stop = string.find(blob, '\n', position, true) or (#blob + 1)
  local number, default_raw, rest = string.match(string.sub(blob, position, stop - 1),
    '^([^|]*)|([^|]*)|(.*)$')
  position = stop + 1
  local segments, id, body = string.match(rest, '^(%d+)|([^|]*)|(.*)$')
  segments = tonumber(segments)
  local key = number .. '/' .. id
  -- 16 hex digits of SHA-1 tell a retry from another message under the same id; a collision
  -- would only make a different body count as a retry.
  local fingerprint = string.sub(redis.sha1hex(body), 1, 16)
  local earlier = batch_seen[key] or redis.call('HGET', seen_now, key)
    or redis.call('HGET', seen_before, key)
    or (legacy and redis.call('HGET', 'rq:seen:legacy', key))
  -- Ids the layouts before remembered in sets (without number or body) are not read: they
  -- cannot tell a retry from another number's message, and queuing a retry twice is a
  -- duplicate where taking another message for a retry would lose it.
  if earlier and earlier ~= fingerprint then
    codes[#codes + 1] = 'c'
    details[#details + 1] = 'id ' .. id .. ' was used for another message to ' .. number ..
      ' within the dedup window; use a new id for a new message'
  elseif earlier then
    codes[#codes + 1] = 'd'
  else
    local state = states[number]
    if not state then
      local row = redis.call('HMGET', 'rq:n:' .. number, 'r', 's', 't')
      local raw = row[1]
      if not row[2] then
        -- The number's first held message sets the rate in force (kept until the last ack).
        raw = redis.call('HGET', 'rq:rates', number) or default_raw
      end
      local per_second, burst = parse_rate(raw)
      -- A number that holds nothing has a hash only while its GCRA time limits (expiring).
      state = {raw = raw, per_second = per_second, burst = burst, empty = not row[2],
        expiring = row[3] and not row[2],
        held = tonumber(row[2] or '0'), added = 0, tat = tonumber(row[3] or '0'), entries = {}}
      states[number] = state
    end
    local capacity = math.floor(state.per_second * max_queue_seconds)
    if state.held + segments > capacity then
      codes[#codes + 1] = 'f'
      details[#details + 1] = 'queue for ' .. number .. ' holds ' .. state.held ..
        ' segments; adding ' .. segments .. ' would exceed its limit of ' .. capacity ..
        ' (' .. max_queue_seconds .. ' s of sending at ' .. state.per_second .. '/s)'
    else
      if #state.entries == 0 then touched[#touched + 1] = number end
      state.entries[#state.entries + 1] = '0|' .. rest
      state.held = state.held + segments
      state.added = state.added + segments
      batch_seen[key] = fingerprint
      seen_writes[#seen_writes + 1] = key
      seen_writes[#seen_writes + 1] = fingerprint
      queued = queued + 1
      codes[#codes + 1] = 'o'
    end
  end
end
local ready = {}
for _, number in ipairs(touched) do
  local state = states[number]
  local key = 'rq:n:' .. number
  if state.empty then
    redis.call('HSET', key, 'r', state.raw, 's', state.held)
    if state.expiring then redis.call('PERSIST', key) end
  else
    redis.call('HINCRBY', key, 's', state.added)
  end
  local length = 0
  local entries = state.entries
  for first = 1, #entries, 4000 do
    length = redis.call('RPUSH', 'rq:q:' .. number,
      unpack(entries, first, math.min(first + 3999, #entries)))
  end
  if length == #entries then  -- the queue was empty: the number joins the ready set
    ready[#ready + 1] = eligible_after(state.tat, now, state.per_second, state.burst)
    ready[#ready + 1] = number
  end
end
call_chunked('ZADD', 'rq:ready', ready)
call_chunked('HSET', seen_now, seen_writes)
redis.call('PEXPIRE', seen_now, window * 2000)
if queued > 0 then redis.call('INCRBY', 'rq:count', queued) end
-- Always write, so the WAIT that follows on this connection covers this node's replication
-- offset as of now: a duplicate of an unacknowledged earlier write is then acknowledged only
-- once that earlier write has reached the replicas too.
redis.call('INCR', 'rq:barrier')
return {table.concat(codes), details}
"""
)

DEQUEUE = (
    _PRELUDE
    + r"""
-- ARGV: max, lease_ms, requeue_limit
-- Returns a flat list, five items per leased message: lease, id, number, attempt, body; a
-- receipt names its lease.
migrate_legacy()
local now = now_ms()
local max = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])

-- Expired leases go back to the head of their queue with attempt + 1.
local expired = redis.call('ZRANGEBYSCORE', 'rq:leases', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
call_chunked('ZREM', 'rq:leases', expired)
local rejoined = {}
for _, lease in ipairs(expired) do
  local seq, number = string.match(lease, '^(%d+):([^/]*)/')
  local key = seq and 'rq:n:' .. number
  local entry = key and redis.call('HGET', key, seq)
  if entry then
    redis.call('HDEL', key, seq)
    local attempt, rest = string.match(entry, '^(%d+)|(.*)$')
    if redis.call('LPUSH', 'rq:q:' .. number, (tonumber(attempt) + 1) .. '|' .. rest) == 1 then
      local row = redis.call('HMGET', key, 'r', 't')
      local per_second, burst = parse_rate(row[1])
      rejoined[#rejoined + 1] = eligible_after(tonumber(row[2]), now, per_second, burst)
      rejoined[#rejoined + 1] = number
    end
  end
end
call_chunked('ZADD', 'rq:ready', rejoined)

-- Serve due numbers in rounds, one message per number per round, longest-waiting first.
local out = {}
local served = 0
local next_seq = nil
while served < max do
  local due = redis.call('ZRANGEBYSCORE', 'rq:ready', '-inf', now, 'LIMIT', 0, max - served)
  if #due == 0 then break end
  local later, gone, leases = {}, {}, {}
  for _, number in ipairs(due) do
    local key = 'rq:n:' .. number
    local row = redis.call('HMGET', key, 'r', 't')
    local per_second, burst = parse_rate(row[1])
    local interval = 1000.0 / per_second
    local tau = (burst - 1) * interval
    local tat = tonumber(row[2] or '0')
    if tat < now then tat = now end
    if tat - now > tau + 0.001 then
      -- The rate was lowered since the number was scheduled: not due yet after all.
      later[#later + 1] = tat - tau
      later[#later + 1] = number
    else
      local entry = redis.call('LPOP', 'rq:q:' .. number)
      if not entry then
        gone[#gone + 1] = number
      else
        -- Every value is bounded by the clamped rate: nothing below can fail after the LPOP.
        local attempt, segments, id, body = parse_entry(entry)
        local new_tat = tat + segments * interval
        if not next_seq then
          -- One counter write per call, not per message (unused numbers are simply skipped).
          next_seq = redis.call('INCRBY', 'rq:lease_seq', max - served) - (max - served)
        end
        next_seq = next_seq + 1
        local seq = string.format('%.0f', next_seq)
        redis.call('HSET', key, 't', string.format('%.3f', new_tat), seq, entry)
        local lease = seq .. ':' .. number .. '/' .. id
        leases[#leases + 1] = now + lease_ms
        leases[#leases + 1] = lease
        if redis.call('LLEN', 'rq:q:' .. number) > 0 then
          local at = new_tat - tau
          if at < now then at = now end
          later[#later + 1] = at
          later[#later + 1] = number
        else
          gone[#gone + 1] = number
        end
        served = served + 1
        out[#out + 1] = lease
        out[#out + 1] = id
        out[#out + 1] = number
        out[#out + 1] = attempt
        out[#out + 1] = body
      end
    end
  end
  call_chunked('ZADD', 'rq:leases', leases)
  call_chunked('ZADD', 'rq:ready', later)
  call_chunked('ZREM', 'rq:ready', gone)
end
return out
"""
)

ACK = (
    _PRELUDE
    + r"""
-- ARGV: leases ("seq:N/id", as named by receipts), separated by spaces (one argument: one
-- encoding on the client). Returns the number of leases acknowledged.
-- A pair that no longer matches a live lease (expired, whether or not a dequeue has returned it
-- to its queue yet, or issued by a primary that died before replicating it) acknowledges
-- nothing: an expired lease belongs to the next consumer.
migrate_legacy()
local now = now_ms()
local asked = {}
for lease in string.gmatch(ARGV[1] or '', '%S+') do asked[#asked + 1] = lease end
local live, numbers, by_number = {}, {}, {}
for first = 1, #asked, 4000 do
  local last = math.min(first + 3999, #asked)
  local scores = redis.call('ZMSCORE', 'rq:leases', unpack(asked, first, last))
  for i = first, last do
    local expires = scores[i - first + 1]
    if expires and tonumber(expires) >= now then
      local lease = asked[i]
      local seq, number = string.match(lease, '^(%d+):([^/]*)/')
      live[#live + 1] = lease
      if seq then
        local group = by_number[number]
        if not group then
          group = {seqs = {}, segments = 0}
          by_number[number] = group
          numbers[#numbers + 1] = number
        end
        group.seqs[#group.seqs + 1] = seq
      end
    end
  end
end
if #live == 0 then return 0 end
call_chunked('ZREM', 'rq:leases', live)
local done = 0
for _, number in ipairs(numbers) do
  local key = 'rq:n:' .. number
  local group = by_number[number]
  local found = {}
  for _, seq in ipairs(group.seqs) do
    local entry = redis.call('HGET', key, seq)
    if entry then
      found[#found + 1] = seq
      group.segments = group.segments + tonumber(string.match(entry, '^%d+|(%d+)|'))
    end
  end
  if #found > 0 then
    call_chunked('HDEL', key, found)
    done = done + #found
    if redis.call('HINCRBY', key, 's', -group.segments) <= 0 then release_number(number, now) end
  end
end
if done > 0 and redis.call('DECRBY', 'rq:count', done) <= 0 then redis.call('DEL', 'rq:count') end
return #live
"""
)

SET_RATE = (
    _PRELUDE
    + r"""
-- ARGV: fence_epoch, number, rate ("rate:burst")
local refused = check_fence(ARGV[1])
if refused then return refused end
migrate_legacy()
local number = ARGV[2]
local key = 'rq:n:' .. number
local per_second, burst = parse_rate(ARGV[3])
local row = redis.call('HMGET', key, 's', 't')
redis.call('HSET', 'rq:rates', number, ARGV[3])
if row[1] then
  redis.call('HSET', key, 'r', ARGV[3])  -- the rate in force for the messages it holds
end
if redis.call('ZSCORE', 'rq:ready', number) then
  redis.call('ZADD', 'rq:ready', eligible_after(tonumber(row[2]), now_ms(), per_second, burst),
    number)
end
redis.call('INCR', 'rq:barrier')  -- acknowledged after WAIT, like an enqueue: counted like one
return 'OK'
"""
)

NUMBER_STATUS = (
    _PRELUDE
    + r"""
-- ARGV: number, default_rate. Returns {now, depth, held_segments, rate, rate_source, eligible}
migrate_legacy()
local now = now_ms()
local number = ARGV[1]
local override = redis.call('HGET', 'rq:rates', number)
local rate = override or ARGV[2]
local per_second, burst = parse_rate(rate)
local stored_rate, stored_burst = string.match(rate, '^([^:]+):(%d+)$')
if tonumber(stored_rate) ~= per_second or tonumber(stored_burst) ~= burst then
  rate = per_second .. ':' .. burst  -- the rate in force, clamped into the allowed range
end
local row = redis.call('HMGET', 'rq:n:' .. number, 's', 't')
return {now, redis.call('LLEN', 'rq:q:' .. number), tonumber(row[1] or '0'), rate,
  override and 'override' or 'default',
  tostring(eligible_after(tonumber(row[2]), now, per_second, burst))}
"""
)

SHARD_STATS = r"""
-- Returns {messages (queued + leased), leased, ready numbers}; layout 1's count until converted
local messages = redis.call('GET', 'rq:count') or redis.call('HLEN', 'rq:msg')
return {tonumber(messages), redis.call('ZCARD', 'rq:leases'), redis.call('ZCARD', 'rq:ready')}
"""

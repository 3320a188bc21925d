"""The Lua scripts that run on each shard primary, one per queue operation.

Each operation is a single script so it costs one round trip and is atomic on the shard. Keys are
computed inside the scripts: a shard is a standalone primary (never Redis Cluster), so every key
of a shard lives on the same node and no hash tags are needed.

Key layout on a shard, version 2 (`N` is a canonical number). Its keys carry the version in their
prefix (`rq:v2:`), so code of layout 1 (mid rolling upgrade) never reads them as its own, nor
this code layout 1's. A number's state lives in one small hash next to its list, so serving a
message touches two keys of its number; each script reads a number's hash once per call and
writes it once per number (multi-field writes):
  rq:v2:q:N         list of queued messages, head first, each entry the whole message
                    `attempt|segments|id|body` (ids never hold `|`); Redis deletes it when empty
  rq:v2:n:N         hash, the number's state: `r` the rate in force (`rate:burst`, taken from
                    rq:rates or the message's default when the number's first message is held,
                    changed by SET_RATE), `s` segments held (queued + leased: the capacity
                    check), `t` the GCRA theoretical arrival time (ms, full precision; written
                    with the number's first message, 0 if nothing limits it yet), `@id` the
                    body fingerprint of each message held (queued or leased: enqueue is
                    idempotent by id while the message is held), and one field per lease, named
                    by its sequence number, holding the leased message's entry. Exists while N
                    holds messages, then expires once `t` no longer limits
  rq:v2:ready       zset N -> ms when N may send next; holds exactly the numbers with queued
                    messages
  rq:v2:leases      zset "seq:N/id" -> lease expiry (ms); a receipt names its member
  rq:v2:count       messages held on the shard (queued + leased), for the statistics
  rq:v2:seen:W      hash N/id -> body fingerprint of messages acknowledged in dedup window W
                    (expires after two windows): a retry after delivery is still a duplicate
  rq:v2:quarantine  hash `N/id` (layout 1's record key) -> `why|record`: layout-1 records that
                    do not fit layout 2, set aside by the conversion for a person to look at
  rq:v2:legacy      set while layout 1 data was converted in the last 10 hours: enqueues then
                    also read layout 1's dedup hashes and GCRA times
Shared by both layouts (same meaning in each):
  rq:fence          the shard epoch this node was made primary in; writes carry the epoch the
                    client routed by and are refused on a mismatch (fencing after a failover)
  rq:rates          hash N -> override `rate:burst` (configuration, set by the API)
  rq:lease_seq      receipt counter
  rq:barrier        incremented by every enqueue and rate change: WAIT after a duplicate covers
                    the earlier write of the same id, and the count orders nodes by how much of
                    the acknowledged stream they hold (`ratequeue.membership`)

Layout 1 (`rq:msg`, `rq:seg`, `rq:dr`, `rq:tat:N`, `rq:q:N` lists of ids, `rq:ready`,
`rq:leases`, `rq:seen:W`) is converted by the write scripts, a bounded share per call: the
numbers the call touches first, each number's queue whole (`migrate_legacy`), see
docs/upgrading.md.

Times come from the shard's own clock (`TIME`); scripts are replicated by effects, so replicas
apply the same values.
"""

from __future__ import annotations

import redis

from ratequeue.rates import MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND

PREFIX = "rq:v2:"
READY_KEY = PREFIX + "ready"
LEASES_KEY = PREFIX + "leases"
COUNT_KEY = PREFIX + "count"
# The fields of a number's hash that are not per message (`@id` fingerprints, lease sequence
# numbers): the number holds nothing once the hash has no more than these.
STATE_FIELDS = ("r", "s", "t")


def message_key(number: str, message_id: str) -> str:
    """How `rq:v2:leases` and `rq:v2:seen:W` name a message: message ids are per number."""
    return f"{number}/{message_id}"


def queue_key(number: str) -> str:
    return f"{PREFIX}q:{number}"


def state_key(number: str) -> str:
    return f"{PREFIX}n:{number}"


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


# How long after a conversion of layout 1 enqueues still read its dedup hashes and GCRA times:
# as long as a queue can hold a message (the 10-hour cap).
LEGACY_MS = 36_000_000

# Helpers shared by the scripts (prepended to each; Lua has no imports inside Redis).
_PRELUDE = (
    f"local MIN_PER_SECOND, MAX_PER_SECOND, MAX_BURST = {MIN_PER_SECOND!r}, {MAX_PER_SECOND!r}, "
    f"{MAX_BURST!r}\nlocal LEGACY_MS = {LEGACY_MS}\n"
    f"local P = '{PREFIX}'\nlocal READY, LEASES, COUNT = P .. 'ready', P .. 'leases', "
    f"P .. 'count'\nlocal STATE_FIELDS = {len(STATE_FIELDS)}\n"
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

-- What an id may be (the client's MESSAGE_ID): nothing that separates a batch's fields
-- (`|`, whitespace) or names a message (`/`).
local function valid_id(id)
  return id ~= nil and #id >= 1 and #id <= 128 and string.match(id, '^[%w][%w._:-]*$') ~= nil
end

-- A queue entry (also a lease field's value): attempt|segments|id|body.
local function parse_entry(entry)
  local attempt, segments, id, body = string.match(entry, '^(%d+)|(%d+)|([^|]*)|(.*)$')
  return tonumber(attempt), tonumber(segments), id, body
end

local function fingerprint(body)
  -- 16 hex digits of SHA-1 tell a retry from another message under the same id; a collision
  -- would only make a different body count as a retry.
  return string.sub(redis.sha1hex(body), 1, 16)
end

-- Commands with one argument per item, split so no call unpacks more than Lua's stack allows.
local function call_chunked(command, key, items)
  local step = 4000
  for first = 1, #items, step do
    redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
  end
end

-- HMGET with one argument per field, split as `call_chunked` splits; one reply item per field.
local function hmget_chunked(key, fields)
  if #fields <= 4000 then return redis.call('HMGET', key, unpack(fields)) end
  local row = {}
  for first = 1, #fields, 4000 do
    local last = math.min(first + 3999, #fields)
    local part = redis.call('HMGET', key, unpack(fields, first, last))
    for j = 1, last - first + 1 do row[first + j - 1] = part[j] end
  end
  return row
end

-- GCRA: interval T ms per segment, tolerance tau = (burst - 1) * T. A number may send when
-- tat - now <= tau; sending s segments moves tat to max(tat, now) + s * T.
local function eligible_after(tat, now, per_second, burst)
  local at = (tat or 0) - (burst - 1) * 1000.0 / per_second
  if at < now then at = now end
  return at
end

-- A stored time (ms) or count as a number. A value that is not a finite number (a corrupted
-- field, or one written by hand: Lua's tonumber also reads "nan", "inf" and "1e999") counts as
-- 0, so no score or field computed from it can make a command fail after it has written.
local function stored_number(raw)
  local value = tonumber(raw)
  if not value or value ~= value or value == math.huge or value == -math.huge then return 0 end
  return value
end

-- A number's GCRA time; a number without state may still be limited by layout 1's time, also
-- on a shard drained before the upgrade (no layout-1 message left, so no conversion ran). A
-- value that is not a number limits nothing rather than failing every call on the shard.
local function stored_tat(t, number)
  if not t then
    t = redis.call('GET', 'rq:tat:' .. number)
  end
  return stored_number(t)
end

-- A number whose hash holds nothing but its own fields (no fingerprint, no lease) and whose
-- queue is empty holds no message: its state is kept only while its GCRA time limits.
local function release_if_empty(number, now)
  local key = P .. 'n:' .. number
  if redis.call('HLEN', key) > STATE_FIELDS or redis.call('EXISTS', P .. 'q:' .. number) == 1 then
    return
  end
  local tat = stored_number(redis.call('HGET', key, 't'))
  if tat > now then
    redis.call('HDEL', key, 's', 'r')
    -- At most about 31 years: a corrupted time far off must not fail the call here.
    redis.call('PEXPIRE', key, math.min(math.max(1, math.ceil(tat - now)), 1e12))
  else
    redis.call('DEL', key)
  end
end

-- Layout 1 kept messages in the shard-wide hash rq:msg (`N/id`, or a bare id before ids were
-- per number, -> attempt|segments|enqueued|number|body), lists of ids rq:q:N, held segments and
-- default rates in rq:seg and rq:dr, GCRA times in rq:tat:N, due numbers in rq:ready and leases
-- in rq:leases. A call converts a bounded amount (the numbers it touches itself, then at most
-- LEGACY_BATCH leases and numbers of others), so no call blocks the shard for long: a number's
-- queue is converted whole (all its queued records are parsed and checked before anything of it
-- is written), a lease on its own. A record that does not fit layout 2 is moved, with what it
-- was and why, to rq:v2:quarantine (for a person to look at); the rest of its number converts.
local function quarantine(what, why, record)
  -- Never over an earlier entry: a later one of the same key gets `#K`, K counted from the
  -- hash's size (so many entries of one key cost one try each, not a search from `#2`).
  local field, n = what, nil
  while redis.call('HSETNX', P .. 'quarantine', field, why .. '|' .. tostring(record)) == 0 do
    n = (n or redis.call('HLEN', P .. 'quarantine')) + 1
    field = what .. '#' .. n
  end
end

-- The shard-wide keys a script writes after its first write, checked before it: a key of
-- another type, or a counter that is not an integer (written by hand or by a bug), refuses the
-- call with nothing written and names the key, rather than failing it half-way (Redis keeps a
-- failed script's earlier writes). Each script checks only what it writes: `kinds` are
-- {key, type} pairs, `counters` keys of integers (read with GET: one of another type fails
-- the GET, also before anything is written).
local function check_shared_keys(kinds, counters)
  for _, item in ipairs(kinds) do
    local kind = redis.call('TYPE', item[1]).ok
    if kind ~= 'none' and kind ~= item[2] then
      return redis.error_reply('CORRUPTKEY ' .. item[1] .. ' is a ' .. kind .. ', expected a '
        .. item[2] .. ' (nothing written)')
    end
  end
  for _, key in ipairs(counters) do
    local raw = redis.call('GET', key)
    -- At most 15 digits: lease numbers are counted exactly only below 2^53.
    if raw and (not (string.match(raw, '^%-?[1-9]%d*$') or raw == '0') or #raw > 15) then
      return redis.error_reply('CORRUPTKEY ' .. key .. ' is not an integer counter (nothing '
        .. 'written)')
    end
  end
  return nil
end

-- The segments of an entry that does not parse, as far as they read (1 if they do not).
local function readable_segments(entry)
  return tonumber(string.match(entry, '^[^|]*|(%d+)|')) or 1
end

-- An entry that does not parse is set aside for a person (rq:v2:quarantine, as `what`). If it
-- was a held message (its id, `id` when the caller knows it from a lease, else as far as the
-- entry reads, has a fingerprint in its number's hash), it is no longer held: the fingerprint,
-- its segments (1 if unreadable) and the shard's count go, so it blocks neither its number's
-- capacity nor a re-send under its id. An entry that names no held id (written by hand) is
-- only set aside. Nothing here can fail: the shared keys were checked when the script began,
-- and the number's hash was read before.
local function set_aside_held(number, what, why, entry, id, now)
  quarantine(what, why, entry)
  local key = P .. 'n:' .. number
  id = id or string.match(entry, '^[^|]*|[^|]*|([^|]*)|')
  if not id or redis.call('HDEL', key, '@' .. id) == 0 then return end
  local segments = readable_segments(entry)
  local held = stored_number(redis.call('HGET', key, 's'))
  if held > 0 then redis.call('HSET', key, 's', math.max(held - segments, 0)) end
  if redis.call('DECRBY', COUNT, 1) <= 0 then redis.call('DEL', COUNT) end
  release_if_empty(number, now)
end

local function legacy_record(key, number)
  local rec = redis.call('HGET', 'rq:msg', key)
  if not rec then return nil end
  local attempt, segments, _, owner, body = string.match(rec, '^(%d+)|(%d+)|(%d+)|([^|]*)|(.*)$')
  local id = string.match(key, '/(.*)$') or key
  if not attempt then return false, 'record does not parse', rec end
  if not valid_id(id) then return false, 'id does not fit layout 2', rec end
  if number and owner ~= number then return false, 'record names another number', rec end
  return {key = key, number = owner, id = id, segments = tonumber(segments), body = body,
    entry = attempt .. '|' .. segments .. '|' .. id .. '|' .. body}
end

-- The number's hash with the given messages added (fingerprints, and `extra` fields such as
-- leases); messages it holds already under the same id and body are skipped. Returns the
-- messages taken.
local function legacy_adopt(number, messages, extra_of, now)
  local key = P .. 'n:' .. number
  local row = redis.call('HMGET', key, 'r', 's', 't')
  local fields, taken = {}, {}
  local held_segments = stored_number(row[2])
  for _, message in ipairs(messages) do
    local field = '@' .. message.id
    local print = fingerprint(message.body)
    if redis.call('HGET', key, field) ~= print then
      fields[#fields + 1] = field
      fields[#fields + 1] = print
      local extra = extra_of(message)
      for _, item in ipairs(extra) do fields[#fields + 1] = item end
      held_segments = held_segments + message.segments
      taken[#taken + 1] = message
    end
  end
  local rate = row[1] or redis.call('HGET', 'rq:rates', number)
    or redis.call('HGET', 'rq:dr', number) or '1:1'
  local tat = math.max(stored_number(row[3]), stored_tat(nil, number))
  if #taken > 0 then
    fields[#fields + 1] = 'r'
    fields[#fields + 1] = rate
    fields[#fields + 1] = 's'
    fields[#fields + 1] = held_segments
    fields[#fields + 1] = 't'
    fields[#fields + 1] = tat
    call_chunked('HSET', key, fields)
    redis.call('PERSIST', key)
    redis.call('INCRBY', COUNT, #taken)
  end
  return taken, rate, tat
end

-- Layout 1's held segments of a number, less what was converted; the field goes once nothing
-- of the number is left in layout 1 (its queue converted and no layout-1 lease left anywhere).
local function legacy_release(number, segments)
  -- Read, not HINCRBY: a field that is not a number must not fail the script half-way.
  local left = stored_number(redis.call('HGET', 'rq:seg', number)) - segments
  if redis.call('EXISTS', 'rq:q:' .. number) == 1
      or (left > 0 and redis.call('EXISTS', 'rq:leases') == 1) then
    redis.call('HSET', 'rq:seg', number, math.max(left, 1))
  else
    redis.call('HDEL', 'rq:seg', number)
    redis.call('HDEL', 'rq:dr', number)
    redis.call('DEL', 'rq:tat:' .. number)
  end
end

-- A number's layout-1 queue, whole. Returns how many records it held.
local function legacy_convert_queue(number, now)
  local queued, records, segments = {}, {}, 0
  for _, item in ipairs(redis.call('LRANGE', 'rq:q:' .. number, 0, -1)) do
    local key = number .. '/' .. item
    local message, why, rec = legacy_record(key, number)
    if message == nil then
      key = item
      message, why, rec = legacy_record(key, number)
    end
    if message == false then
      quarantine(key, why, rec)
      records[#records + 1] = key
    elseif message then
      queued[#queued + 1] = message
    end
  end
  local taken, rate, tat = legacy_adopt(number, queued, function() return {} end, now)
  for _, message in ipairs(queued) do
    records[#records + 1] = message.key
    segments = segments + message.segments
  end
  if #taken > 0 then
    -- Layout 1's messages were queued first: they go ahead of the number's newer ones.
    local reversed = {}
    for j = #taken, 1, -1 do reversed[#reversed + 1] = taken[j].entry end
    call_chunked('LPUSH', P .. 'q:' .. number, reversed)
    if not redis.call('ZSCORE', READY, number) then
      local per_second, burst = parse_rate(rate)
      redis.call('ZADD', READY, eligible_after(tat, now, per_second, burst), number)
    end
  end
  call_chunked('HDEL', 'rq:msg', records)
  redis.call('DEL', 'rq:q:' .. number)
  redis.call('ZREM', 'rq:ready', number)
  legacy_release(number, segments)
  return #records
end

-- One layout-1 lease (member `seq:N/id`, or an older bare sequence number whose message key is
-- in rq:lease): kept as the same lease under layout 2, so its receipt still acknowledges.
-- Returns how many records it converted (with its number's queue).
local function legacy_convert_lease(member, score, now)
  local seq, key = string.match(member, '^(%d+):(.*)$')
  if not seq then seq, key = member, redis.call('HGET', 'rq:lease', member) end
  redis.call('ZREM', 'rq:leases', member)
  redis.call('HDEL', 'rq:lease', member)
  local message, why, rec = false, nil, nil
  if key then message, why, rec = legacy_record(key, nil) end
  if message == false and rec then
    quarantine(key, why .. ' (leased as ' .. member .. ')', rec)
    redis.call('HDEL', 'rq:msg', key)
  end
  if not message then return 1 end  -- names no usable record: acknowledges nothing
  local number = message.number
  -- Its number's queue first (whole), so layout 2 never serves a number layout 1 still queues
  -- for (an expired lease goes back to the head of a queue that is complete).
  local converted = 1
  if redis.call('EXISTS', 'rq:q:' .. number) == 1 then
    converted = converted + legacy_convert_queue(number, now)
  end
  local taken = legacy_adopt(number, {message}, function(m) return {seq, m.entry} end, now)
  if #taken > 0 then  -- else layout 2 holds it already (a retry): one copy, not leased twice
    redis.call('ZADD', LEASES, score, seq .. ':' .. number .. '/' .. message.id)
  end
  redis.call('HDEL', 'rq:msg', key)
  legacy_release(number, message.segments)
  return converted
end

local LEGACY_BATCH, LEGACY_MESSAGES = 100, 1000

-- The body fingerprint of a message layout 1 still holds under `key` (`N/id`), if any.
local function legacy_print(key)
  local rec = redis.call('HGET', 'rq:msg', key)
  local body = rec and string.match(rec, '^%d+|%d+|%d+|[^|]*|(.*)$')
  return body and fingerprint(body)
end

-- `touched` (optional) returns the numbers this call touches (converted first, whole) and the
-- layout-1 lease members it names (an ack's, converted first too); it runs only while layout 1
-- data remains.
local function migrate_legacy(touched)
  if redis.call('EXISTS', 'rq:seg', 'rq:leases', 'rq:lease') == 0 then return end
  local now = now_ms()
  local numbers, leases = nil, nil
  if touched then numbers, leases = touched() end
  for _, member in ipairs(leases or {}) do
    local score = redis.call('ZSCORE', 'rq:leases', member)
    if score then legacy_convert_lease(member, score, now) end
  end
  for _, number in ipairs(numbers or {}) do
    if redis.call('EXISTS', 'rq:q:' .. number) == 1
        or redis.call('HEXISTS', 'rq:seg', number) == 1 then
      legacy_convert_queue(number, now)
    end
  end
  -- Then a bounded share of the rest: at most LEGACY_BATCH leases and numbers, leases soonest
  -- to expire first, then numbers with queued messages soonest due, then any other number
  -- rq:seg still counts (HRANDFIELD: O(budget), where a scan from the start slows as the front
  -- empties). A number's queue converts whole, so the messages bound the call too: it stops
  -- taking others once LEGACY_MESSAGES are converted (a number longer than that goes alone).
  local budget, messages = LEGACY_BATCH, 0
  local function convert_others(items, step, convert)
    for i = 1, #items, step do
      if messages >= LEGACY_MESSAGES then return end
      messages = messages + convert(items[i], items[i + 1], now)
      budget = budget - 1
    end
  end
  convert_others(redis.call('ZRANGE', 'rq:leases', 0, budget - 1, 'WITHSCORES'), 2,
    legacy_convert_lease)
  if redis.call('EXISTS', 'rq:leases') == 0 then redis.call('DEL', 'rq:lease') end
  local function convert_queue(number) return legacy_convert_queue(number, now) end
  if budget > 0 then convert_others(redis.call('ZRANGE', 'rq:ready', 0, budget - 1), 1,
    convert_queue) end
  if budget > 0 then convert_others(redis.call('HRANDFIELD', 'rq:seg', budget), 1,
    convert_queue) end
  redis.call('SET', P .. 'legacy', '1', 'PX', LEGACY_MS)
end
"""
)

ENQUEUE_BATCH = (
    _PRELUDE
    + r"""
-- ARGV: fence_epoch, dedup_window_s, max_queue_seconds, max_number_segments, messages: one line
--       per message, `number|default_rate|segments|id|body` (a body is JSON, which holds no raw
--       newline; one argument for the batch costs the client one encoding instead of five per
--       message)
-- Returns {codes, details}: codes has one letter per message, o (queued), d (duplicate),
-- c (conflict), f (full) or x (malformed line: nothing of it read, the others unaffected);
-- details holds the reason of each c, f and x, in order.
-- In three steps, so each key is read once and written once: every line is parsed; what the
-- decisions need is read (a number's hash in one HMGET, each dedup window in one HMGET for the
-- whole batch); then each message is decided in order and each key written once. Every key
-- written in step 3 was read or checked before it, so no write fails half-way.
local refused = check_fence(ARGV[1])
  or check_shared_keys({{READY, 'zset'}}, {COUNT, 'rq:barrier'})
if refused then return refused end
migrate_legacy(function()
  local numbers, listed = {}, {}
  for number in string.gmatch(ARGV[5], '%f[^\n%z]([%w+]+)|') do
    if not listed[number] then
      listed[number] = true
      numbers[#numbers + 1] = number
    end
  end
  return numbers, nil
end)
local now = now_ms()
local window = tonumber(ARGV[2])
local max_queue_seconds = tonumber(ARGV[3])
local max_number_segments = tonumber(ARGV[4])
local w = math.floor(now / 1000 / window)
local seen_now, seen_before = P .. 'seen:' .. w, P .. 'seen:' .. (w - 1)
local legacy = redis.call('EXISTS', P .. 'legacy') == 1

-- 1. Parse. Message i is m_number[i] (false: a malformed line), m_id[i], ...; a number's hash
-- fields to read are its state's, then `@id` of each of its messages, in order.
local m_number, m_id, m_segments, m_text, m_body, m_print = {}, {}, {}, {}, {}, {}
local numbers, fields_of, default_of = {}, {}, {}
local count = 0
local blob = ARGV[5]
local position = 1
while position <= #blob do
  local stop = string.find(blob, '\n', position, true) or (#blob + 1)
  local line = string.sub(blob, position, stop - 1)
  position = stop + 1
  count = count + 1
  local number, default_raw, segments_text, id, body =
    string.match(line, '^([%w+]+)|([^|]*)|(%d+)|([^|]*)|(.+)$')
  local segments = tonumber(segments_text)
  if not number or not valid_id(id) or not segments or segments < 1 then
    m_number[count] = false
  else
    m_number[count], m_id[count], m_segments[count] = number, id, segments
    m_text[count], m_body[count], m_print[count] = segments_text, body, fingerprint(body)
    local fields = fields_of[number]
    if not fields then
      fields = {'r', 's', 't'}
      fields_of[number] = fields
      default_of[number] = default_raw
      numbers[#numbers + 1] = number
    end
    fields[#fields + 1] = '@' .. id
  end
end

-- 2. Read. `earlier[N/id]`: the fingerprint of a message held under that id (queued or leased),
-- else of one acknowledged within the dedup window.
local states, earlier = {}, {}
local unheld, looked_up = {}, {}
for _, number in ipairs(numbers) do
  local fields = fields_of[number]
  local row = hmget_chunked(P .. 'n:' .. number, fields)
  redis.call('LLEN', P .. 'q:' .. number)  -- a queue of another type fails here, unwritten
  local raw = row[1]
  if not row[2] then
    -- The number's first held message sets the rate in force (kept until the last ack).
    raw = redis.call('HGET', 'rq:rates', number) or default_of[number]
  end
  local per_second, burst = parse_rate(raw)
  local capacity = math.floor(per_second * max_queue_seconds)
  local capped = capacity > max_number_segments
  if capped then capacity = max_number_segments end
  -- A number that holds nothing has a hash only while its GCRA time limits (expiring). Its
  -- time is written with its first message, so later calls do not look for layout 1's; but
  -- while layout 1 code may still run (data of it converted within LEGACY_MS), a time of 0 is
  -- not written: layout 1's dequeuer may yet send for the number, and the next call reads it.
  local tat = stored_tat(row[3], number)
  states[number] = {raw = raw, per_second = per_second, burst = burst, empty = not row[2],
    expiring = row[3] and not row[2], write_tat = not row[3] and (tat > 0 or not legacy),
    held = stored_number(row[2]), tat = tat, capacity = capacity,
    capped = capped,
    entries = {}, fields = {}, batch = {}}
  for j = 4, #fields do
    local key = number .. '/' .. string.sub(fields[j], 2)
    if row[j] then
      earlier[key] = row[j]
    elseif not looked_up[key] then  -- an id the batch repeats is looked up once
      looked_up[key] = true
      unheld[#unheld + 1] = key
    end
  end
end
for _, window_key in ipairs({seen_now, seen_before}) do
  if #unheld == 0 then break end
  local row = hmget_chunked(window_key, unheld)
  local still = {}
  for j, key in ipairs(unheld) do
    if row[j] then earlier[key] = row[j] else still[#still + 1] = key end
  end
  unheld = still
end
if legacy then
  for _, key in ipairs(unheld) do
    earlier[key] = legacy_print(key) or redis.call('HGET', 'rq:seen:' .. w, key)
      or redis.call('HGET', 'rq:seen:' .. (w - 1), key)
  end
end

-- 3. Decide, in order, then write each key once.
local touched = {}
local codes, details = {}, {}
local queued = 0
for i = 1, count do
  local number = m_number[i]
  if not number then
    codes[i] = 'x'
    details[#details + 1] = 'malformed message: expected number|rate|segments|id|body with an '
      .. 'id of letters, digits, ".", "_", ":" or "-"'
  else
    local id, print, segments, state = m_id[i], m_print[i], m_segments[i], states[number]
    local before = state.batch[id] or earlier[number .. '/' .. id]
    if before and before ~= print then
      codes[i] = 'c'
      details[#details + 1] = 'id ' .. id .. ' was used for another message to ' .. number ..
        ' that is still held or was delivered within the dedup window; use a new id for a ' ..
        'new message'
    elseif before then
      codes[i] = 'd'
    elseif state.held + segments > state.capacity then
      codes[i] = 'f'
      local limit = max_queue_seconds .. ' s of sending at ' .. state.per_second .. '/s'
      if state.capped then limit = 'the most segments one number may hold' end
      details[#details + 1] = 'queue for ' .. number .. ' holds ' .. state.held ..
        ' segments; adding ' .. segments .. ' would exceed its limit of ' .. state.capacity ..
        ' (' .. limit .. ')'
    else
      if #state.entries == 0 then touched[#touched + 1] = number end
      state.entries[#state.entries + 1] = '0|' .. m_text[i] .. '|' .. id .. '|' .. m_body[i]
      local fields = state.fields
      fields[#fields + 1] = '@' .. id
      fields[#fields + 1] = print
      state.held = state.held + segments
      state.batch[id] = print
      queued = queued + 1
      codes[i] = 'o'
    end
  end
end
local ready = {}
for _, number in ipairs(touched) do
  local state = states[number]
  local key = P .. 'n:' .. number
  -- One write of the hash per number: the held segments as now counted (read in this script),
  -- the rate in force for a number that held nothing, and the new messages' fingerprints.
  local fields = state.fields
  fields[#fields + 1] = 's'
  fields[#fields + 1] = state.held
  if state.empty then
    fields[#fields + 1] = 'r'
    fields[#fields + 1] = state.raw
  end
  if state.write_tat then
    fields[#fields + 1] = 't'
    fields[#fields + 1] = state.tat
  end
  call_chunked('HSET', key, fields)
  if state.expiring then redis.call('PERSIST', key) end
  local length = 0
  local entries = state.entries
  for first = 1, #entries, 4000 do
    length = redis.call('RPUSH', P .. 'q:' .. number,
      unpack(entries, first, math.min(first + 3999, #entries)))
  end
  if length == #entries then  -- the queue was empty: the number joins the ready set
    ready[#ready + 1] = eligible_after(state.tat, now, state.per_second, state.burst)
    ready[#ready + 1] = number
  end
end
call_chunked('ZADD', READY, ready)
if queued > 0 then redis.call('INCRBY', COUNT, queued) end
-- Always write, so the WAIT that follows on this connection covers this node's replication
-- offset as of now: a duplicate of an unacknowledged earlier write is then acknowledged only
-- once that earlier write has reached the replicas too.
redis.call('INCR', 'rq:barrier')
return {table.concat(codes), details}
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
-- Returns {now (ms, the shard's clock: when it leased them), a flat list, five items per
-- leased message: lease, id, number, attempt, body}; a receipt names its lease.
local corrupt = check_shared_keys(
  {{READY, 'zset'}, {LEASES, 'zset'}, {P .. 'quarantine', 'hash'}}, {'rq:lease_seq', COUNT})
if corrupt then return corrupt end
migrate_legacy()
local now = now_ms()
local max = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])

-- Expired leases go back to the head of their queue with attempt + 1. Every step after the
-- first write must not fail (Redis keeps a failed script's earlier writes): a number's key of
-- another type is read with pcall and its lease set aside, its entry left where it is.
local expired = redis.call('ZRANGEBYSCORE', LEASES, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
call_chunked('ZREM', LEASES, expired)
local rejoined = {}
for _, lease in ipairs(expired) do
  local seq, number, id = string.match(lease, '^(%d+):([^/]*)/(.*)$')
  local key = seq and P .. 'n:' .. number
  local queue = seq and P .. 'q:' .. number
  local entry = key and redis.pcall('HGET', key, seq)
  local length = key and redis.pcall('LLEN', queue)
  if type(entry) == 'table' then
    quarantine(lease, 'its number\'s state is not a hash', entry.err)
  elseif entry and type(length) == 'table' then
    -- Its queue is of another type: the entry is set aside, for a person to send again.
    redis.call('HDEL', key, seq)
    set_aside_held(number, lease, 'its queue is not a list', entry, id, now)
  elseif entry then
    redis.call('HDEL', key, seq)
    local attempt, rest = string.match(entry, '^(%d+)|(.*)$')
    if not attempt then
      set_aside_held(number, lease, 'leased entry does not parse', entry, id, now)
    elseif redis.call('LPUSH', queue, (tonumber(attempt) + 1) .. '|' .. rest) == 1 then
      local row = redis.call('HMGET', key, 'r', 't')
      local per_second, burst = parse_rate(row[1])
      rejoined[#rejoined + 1] = eligible_after(stored_number(row[2]), now, per_second, burst)
      rejoined[#rejoined + 1] = number
    end
  end
end
call_chunked('ZADD', READY, rejoined)

-- Serve due numbers in rounds, one message per number per round, longest-waiting first.
-- What is the same for every message of the call is worked out once: the leases' expiry, and
-- each rate's interval and tolerance.
local expires = string.format('%.17g', now + lease_ms)
local rates = {}
local out = {}
local served = 0
-- Entries and numbers set aside count against `max` too: a call's work stays bounded.
local set_aside = 0
local next_seq = nil
while served + set_aside < max do
  local due = redis.call('ZRANGEBYSCORE', READY, '-inf', now, 'LIMIT', 0, max - served - set_aside)
  if #due == 0 then break end
  local later, gone, leases = {}, {}, {}
  for _, number in ipairs(due) do
    local key = P .. 'n:' .. number
    local queue = P .. 'q:' .. number
    -- Read with pcall: a key of another type (written by hand or by a bug) must not fail the
    -- call after earlier numbers' messages were popped.
    local row = redis.pcall('HMGET', key, 'r', 't')
    local length = redis.pcall('LLEN', queue)
    if row.err or type(length) == 'table' then
      -- The number leaves the ready set, its messages stay where they are, a person is told.
      quarantine(queue, 'a key of the number is not of its type', row.err or length.err)
      gone[#gone + 1] = number
      set_aside = set_aside + 1
    else
      local rate = rates[row[1]]  -- keyed by the stored text, or false for none (1/s)
      if not rate then
        local per_second, burst = parse_rate(row[1])
        local interval = 1000.0 / per_second
        rate = {interval = interval, tau = (burst - 1) * interval}
        rates[row[1]] = rate
      end
      local interval, tau = rate.interval, rate.tau
      local tat = stored_number(row[2])
      if tat < now then tat = now end
      local entry = nil
      if tat - now <= tau + 0.001 then entry = redis.call('LPOP', queue) end
      local attempt, segments, id, body
      if entry then attempt, segments, id, body = parse_entry(entry) end
      if tat - now > tau + 0.001 then
        -- The rate was lowered since the number was scheduled: not due yet after all.
        later[#later + 1] = tat - tau
        later[#later + 1] = number
      elseif not entry then
        gone[#gone + 1] = number
      elseif not attempt then
        -- Not an entry these scripts wrote: set aside (for a person to look at), no longer
        -- held; the number's next message is served in the next round.
        set_aside_held(number, queue, 'queue entry does not parse', entry, nil, now)
        set_aside = set_aside + 1
        if length > 1 then
          later[#later + 1] = now
          later[#later + 1] = number
        else
          gone[#gone + 1] = number
        end
      else
        -- Every value is bounded by the clamped rate, the stored times are finite
        -- (`stored_number`), the keys' types and the counter were checked: nothing below can
        -- fail after the LPOP.
        local new_tat = tat + segments * interval
        if not next_seq then
          -- One counter write per call, not per message (unused numbers are simply skipped).
          next_seq = redis.call('INCRBY', 'rq:lease_seq', max - served) - (max - served)
        end
        next_seq = next_seq + 1
        local seq = string.format('%.0f', next_seq)
        -- A Lua number is passed to Redis at full precision (%.17g): no rounding of the time.
        redis.call('HSET', key, 't', new_tat, seq, entry)
        local lease = seq .. ':' .. number .. '/' .. id
        leases[#leases + 1] = expires
        leases[#leases + 1] = lease
        if length > 1 then
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
  call_chunked('ZADD', LEASES, leases)
  call_chunked('ZADD', READY, later)
  call_chunked('ZREM', READY, gone)
end
return {now, out}
"""
)

ACK = (
    _ALLOW_OOM
    + _PRELUDE
    + r"""
-- ARGV: leases ("seq:N/id", as named by receipts), separated by spaces (one argument: one
-- encoding on the client), dedup_window_s. Returns the number of leases acknowledged.
-- A pair that no longer matches a live lease (expired, whether or not a dequeue has returned it
-- to its queue yet, or issued by a primary that died before replicating it) acknowledges
-- nothing: an expired lease belongs to the next consumer. A lease named twice, in one call or
-- in two, is acknowledged once.
-- Everything is read before the first write, and the keys written after it were checked, so no
-- step fails half-way (Redis keeps a failed script's earlier writes).
local now = now_ms()
local window = tonumber(ARGV[2])
local seen_now = P .. 'seen:' .. math.floor(now / 1000 / window)
local corrupt = check_shared_keys(
  {{LEASES, 'zset'}, {P .. 'quarantine', 'hash'}, {seen_now, 'hash'}}, {COUNT})
if corrupt then return corrupt end
migrate_legacy(function()
  local leases = {}
  for lease in string.gmatch(ARGV[1] or '', '%S+') do leases[#leases + 1] = lease end
  return nil, leases
end)
local asked, named = {}, {}
for lease in string.gmatch(ARGV[1] or '', '%S+') do
  if not named[lease] then
    named[lease] = true
    asked[#asked + 1] = lease
  end
end
local live, numbers, by_number = {}, {}, {}
for first = 1, #asked, 4000 do
  local last = math.min(first + 3999, #asked)
  local scores = redis.call('ZMSCORE', LEASES, unpack(asked, first, last))
  for i = first, last do
    local expires = scores[i - first + 1]
    if expires and tonumber(expires) >= now then
      local lease = asked[i]
      local seq, number, id = string.match(lease, '^(%d+):([^/]*)/(.*)$')
      live[#live + 1] = lease
      if seq then
        local held = by_number[number]
        if not held then
          held = {seqs = {}, ids = {}}
          by_number[number] = held
          numbers[#numbers + 1] = number
        end
        held.seqs[#held.seqs + 1] = seq
        held.ids[#held.ids + 1] = id
      end
    end
  end
end
if #live == 0 then return 0 end
-- Each number's leased entries and held segments, read before anything is written (a key of
-- another type fails the call here, with nothing written). The held segments are written as
-- counted: a field that is not a number (HINCRBY would refuse it) counts as 0.
local entries_of = {}
for _, number in ipairs(numbers) do
  local seqs = by_number[number].seqs
  seqs[#seqs + 1] = 's'
  entries_of[number] = hmget_chunked(P .. 'n:' .. number, seqs)
  seqs[#seqs] = nil
end
call_chunked('ZREM', LEASES, live)
local done = 0
local seen_writes = {}
for _, number in ipairs(numbers) do
  local key = P .. 'n:' .. number
  local seqs, ids, entries = by_number[number].seqs, by_number[number].ids, entries_of[number]
  local held = stored_number(entries[#seqs + 1])
  local gone, segments, acked = {}, 0, 0
  for i = 1, #seqs do
    local entry = entries[i]
    if entry then
      local attempt, message_segments, id, body = parse_entry(entry)
      gone[#gone + 1] = seqs[i]
      gone[#gone + 1] = '@' .. (id or ids[i])
      acked = acked + 1
      if attempt then
        segments = segments + message_segments
        seen_writes[#seen_writes + 1] = number .. '/' .. id
        seen_writes[#seen_writes + 1] = fingerprint(body)
      else
        -- Set aside for a person, and no longer held (its segments as far as they read).
        quarantine(seqs[i] .. ':' .. number, 'leased entry does not parse', entry)
        segments = segments + readable_segments(entry)
      end
    end
  end
  if #gone > 0 then
    call_chunked('HDEL', key, gone)
    done = done + acked
    held = math.max(held - segments, 0)
    redis.call('HSET', key, 's', held)
    if held <= 0 then release_if_empty(number, now) end
  end
end
if #seen_writes > 0 then
  -- Remembered from delivery on: a retry of a delivered message stays a duplicate.
  call_chunked('HSET', seen_now, seen_writes)
  redis.call('PEXPIRE', seen_now, window * 2000)
end
if done > 0 and redis.call('DECRBY', COUNT, done) <= 0 then redis.call('DEL', COUNT) end
return #live
"""
)

SET_RATE = (
    _PRELUDE
    + r"""
-- ARGV: fence_epoch, number, rate ("rate:burst")
local refused = check_fence(ARGV[1]) or check_shared_keys({{READY, 'zset'}}, {'rq:barrier'})
if refused then return refused end
migrate_legacy(function() return {ARGV[2]}, nil end)
local number = ARGV[2]
local key = P .. 'n:' .. number
local per_second, burst = parse_rate(ARGV[3])
local row = redis.call('HMGET', key, 's', 't')
redis.call('HSET', 'rq:rates', number, ARGV[3])
if row[1] then
  redis.call('HSET', key, 'r', ARGV[3])  -- the rate in force for the messages it holds
end
if redis.call('ZSCORE', READY, number) then
  redis.call('ZADD', READY, eligible_after(stored_number(row[2]), now_ms(), per_second, burst),
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
-- A read: it converts nothing (so it answers on a full shard too) and counts what layout 1
-- still holds of the number beside layout 2's.
local now = now_ms()
local number = ARGV[1]
local override = redis.call('HGET', 'rq:rates', number)
local rate = override or ARGV[2]
local per_second, burst = parse_rate(rate)
local stored_rate, stored_burst = string.match(rate, '^([^:]+):(%d+)$')
if tonumber(stored_rate) ~= per_second or tonumber(stored_burst) ~= burst then
  rate = per_second .. ':' .. burst  -- the rate in force, clamped into the allowed range
end
local row = redis.call('HMGET', P .. 'n:' .. number, 's', 't')
local legacy_tat = stored_number(redis.call('GET', 'rq:tat:' .. number))
return {now, redis.call('LLEN', P .. 'q:' .. number) + redis.call('LLEN', 'rq:q:' .. number),
  stored_number(row[1]) + stored_number(redis.call('HGET', 'rq:seg', number)), rate,
  override and 'override' or 'default',
  tostring(eligible_after(math.max(stored_number(row[2]), legacy_tat), now, per_second,
    burst))}
"""
)

SHARD_STATS = r"""
-- Returns {messages (queued + leased), leased, ready numbers, quarantined layout-1 records};
-- layout 1's not yet converted are counted too.
local messages = tonumber(redis.call('GET', 'rq:v2:count') or '0') + redis.call('HLEN', 'rq:msg')
return {messages, redis.call('ZCARD', 'rq:v2:leases') + redis.call('ZCARD', 'rq:leases'),
  redis.call('ZCARD', 'rq:v2:ready') + redis.call('ZCARD', 'rq:ready'),
  redis.call('HLEN', 'rq:v2:quarantine')}
"""


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

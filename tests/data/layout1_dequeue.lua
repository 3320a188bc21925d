
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

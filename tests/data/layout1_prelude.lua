local MIN_PER_SECOND, MAX_PER_SECOND, MAX_BURST = 0.001, 100000, 1000000

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

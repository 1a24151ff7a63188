-- wrk script of bench/run.py: one scenario's requests, exact error counting,
-- and a machine-readable summary.
--
-- Arguments after wrk's "--", each key=value (all optional):
--   token=JWT        sends "Authorization: Bearer JWT"
--   host=NAME        Host header (Traefik routes on it)
--   method=POST      request method (default GET)
--   type=MIME        Content-Type of the body
--   body=TEXT        request body
--   bodies=FILE      bodies to rotate through, one per line (wins over body)
--   ids=FILE         ids to rotate through, each replacing "{id}" in the URL path
--   stop=N           each thread stops after N responses (request-count runs)
--
-- Every response that is not 2xx counts as an error (wrk itself only counts
-- statuses > 399, and does not add them to its error total). done() prints one
-- line "BENCH_RESULT {json}"; latencies are in microseconds.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("thread_index", thread_count)
  table.insert(threads, thread)
end

local function lines(path)
  local result = {}
  for line in io.lines(path) do
    if line ~= "" then
      table.insert(result, line)
    end
  end
  return result
end

local requests = {}
local next_request = 1
local stop_after = nil

function init(args)
  local opts = {}
  for _, arg in ipairs(args) do
    local key, value = arg:match("^([%w_]+)=(.*)$")
    opts[key] = value
  end
  local headers = {}
  if opts.token then headers["Authorization"] = "Bearer " .. opts.token end
  if opts.host then headers["Host"] = opts.host end
  if opts.type then headers["Content-Type"] = opts.type end
  local method = opts.method or "GET"
  local bodies = opts.bodies and lines(opts.bodies) or { opts.body or false }
  local ids = opts.ids and lines(opts.ids) or { false }
  -- Pre-built requests, every combination; threads start at different offsets.
  for _, id in ipairs(ids) do
    local path = id and wrk.path:gsub("{id}", id) or wrk.path
    for i = 1, #bodies do
      table.insert(requests, wrk.format(method, path, headers, bodies[i] or nil))
    end
  end
  next_request = ((thread_index - 1) * 7919) % #requests + 1
  stop_after = tonumber(opts.stop)
  responses = 0
  non2xx = 0
  statuses = {}
end

function request()
  local r = requests[next_request]
  next_request = next_request % #requests + 1
  return r
end

function response(status)
  responses = responses + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    local key = tostring(status)
    statuses[key] = (statuses[key] or 0) + 1
  end
  if stop_after and responses >= stop_after then
    wrk.thread:stop()
  end
end

function done(summary, latency)
  local non2xx_total = 0
  local by_status = {}
  for _, thread in ipairs(threads) do
    non2xx_total = non2xx_total + thread:get("non2xx")
    for status, count in pairs(thread:get("statuses")) do
      by_status[status] = (by_status[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(by_status) do
    table.insert(parts, string.format('"%s":%d', status, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"non2xx":%d,"statuses":{%s},'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, non2xx_total, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean
  ))
end

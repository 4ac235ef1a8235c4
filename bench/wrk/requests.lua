-- wrk script of bench/http.py: replays the requests of a file and prints one JSON summary line.
--
--   wrk -t2 -c16 -d10s -s bench/wrk/requests.lua -H "Authorization: Bearer ..." http://127.0.0.1:PORT -- FILE
--
-- FILE holds one request a line: "METHOD PATH" or "METHOD PATH BODY" (BODY: compact JSON, no newline).
-- Each wrk thread cycles through them from a random offset; the requests are built once in init(), so
-- the per-request client cost is the same for every endpoint (no Lua work beyond a table lookup).
-- No response() callback: defining one makes wrk parse every response in Lua, which on a 2-core
-- machine takes CPU from the server being measured.

local requests = {}
local next_index = 1

function init(args)
  local file = assert(io.open(args[1], "r"))
  for line in file:lines() do
    local method, path, body = line:match("^(%S+) (%S+) ?(.*)$")
    if method then
      if body == "" then body = nil end
      requests[#requests + 1] = wrk.format(method, path, nil, body)
    end
  end
  file:close()
  assert(#requests > 0, "no request in " .. args[1])
  next_index = math.random(#requests)
end

function request()
  local r = requests[next_index]
  next_index = next_index % #requests + 1
  return r
end

function done(summary, latency, _)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"write_errors": %d, "status_errors": %d, "timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end

-- wrk script of scripts/bench-node: the same headers to every server, and one machine-readable result line.
-- The session comes from the environment (BENCH_BEARER), never from the command line, so `ps` does not show it.
-- No per-response callback: defining `response` makes wrk parse every answer in Lua, which would cost the load
-- generator more CPU than the servers it measures. Failures come from wrk's own counters instead: a status of 400
-- or more, or a socket error (connect, read, write, timeout).

local bearer = os.getenv("BENCH_BEARER")
local client = os.getenv("BENCH_CLIENT_IP")
if bearer == nil or bearer == "" or client == nil or client == "" then
  error("BENCH_BEARER and BENCH_CLIENT_IP must be set")
end
wrk.headers["Authorization"] = "Bearer " .. bearer
-- Both servers trust 127.0.0.1 as a proxy: the per-IP limit then counts this run's own address, not 127.0.0.1,
-- whose budget the test suite shares.
wrk.headers["X-Forwarded-For"] = client

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d duration_us=%d p50_us=%d p99_us=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect, e.read, e.write, e.status, e.timeout))
end

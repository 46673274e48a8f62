-- Benchmark script: E events, each a Create Package V2 + Get Package, with C
-- events in flight at once. C workers are started with wix.spawn; each takes
-- the next event until none is left, so exactly C events overlap (no batch
-- barrier waiting for the slowest of a batch). Run by tests/bench/wix_client.sh
-- with wix.concurrency = C in the config, so the client lets all C through.
-- E is event.events or $BENCH_EVENTS (default 2000); C is event.concurrency or
-- $BENCH_CONCURRENCY (default 16). Returns the counts, the peak number of calls
-- in flight seen from Lua, this process's peak RSS (VmHWM, kB) at the end and
-- its CPU time (os.clock, seconds).
local wix = require "wix"

local ACCOUNT = "33333333-4444-4555-8666-777777777777"
local PRODUCT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"

local function peak_rss_kb()
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local kb = f:read("a"):match("VmHWM:%s*(%d+)")
  f:close()
  return tonumber(kb)
end

return function(event)
  local events = math.tointeger(tonumber(event.events or os.getenv("BENCH_EVENTS") or 2000))
  local c = math.tointeger(tonumber(event.concurrency or os.getenv("BENCH_CONCURRENCY") or 16))
  assert(events and events >= 0, "events must be a whole number")
  assert(c and c >= 1, "concurrency must be a whole number >= 1")
  local opts = { account_id = ACCOUNT }
  local next_event, done, calls, inflight, peak = 0, 0, 0, 0, 0
  local failed = false -- after a failure the other workers stop taking events

  local function call(f, ...)
    inflight = inflight + 1
    if inflight > peak then peak = inflight end
    local ok, r = pcall(f, ...)
    inflight = inflight - 1
    calls = calls + 1
    if not ok then failed = true; error(r, 0) end
    return r
  end

  local function worker()
    while not failed and next_event < events do
      next_event = next_event + 1
      local i = next_event
      local p = call(wix.packages.create, {
        account_id = ACCOUNT,
        products = { { catalog_product_id = PRODUCT, country_code = "DE" } },
      })
      local g = call(wix.packages.get, p.id, opts)
      if g.id ~= p.id then error(("event %d: created %s, got %s"):format(i, p.id, tostring(g.id))) end
      done = done + 1
    end
  end

  local tasks = {}
  for w = 1, math.min(c, events) do tasks[w] = wix.spawn(worker) end
  for _, t in ipairs(tasks) do t:wait() end -- raises the first failure
  return { events = done, calls = calls, concurrency = c, peak_in_flight = peak, vmhwm_kb = peak_rss_kb(),
           cpu_s = os.clock() }
end

-- Benchmark script: N sequential Create Package V2 + Get Package pairs through
-- the wix module, one call at a time. Run by tests/bench/wix_client.sh:
--   WIX_BASE_URL=... WIX_API_KEY=... wixr run wix_seq.lua --config CFG.yaml [--event E.json]
-- N is event.pairs, else $BENCH_PAIRS, else 5000. Every answer is checked; any
-- failure raises (retries are off in the benchmark's config), so the run fails.
local wix = require "wix"

local ACCOUNT = "33333333-4444-4555-8666-777777777777" -- Jane Doe, a DIY sub-account
local PRODUCT = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03" -- Site setup service (ONE_TIME, no site)

return function(event)
  local n = math.tointeger(tonumber(event.pairs or os.getenv("BENCH_PAIRS") or 5000))
  assert(n and n >= 0, "pairs must be a whole number")
  local opts = { account_id = ACCOUNT }
  for i = 1, n do
    local p = wix.packages.create {
      account_id = ACCOUNT,
      products = { { catalog_product_id = PRODUCT, country_code = "DE" } },
    }
    local g = wix.packages.get(p.id, opts)
    if g.id ~= p.id then error(("pair %d: created %s, got %s"):format(i, p.id, tostring(g.id))) end
  end
  return { calls = 2 * n, pairs = n }
end

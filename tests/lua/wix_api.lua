-- Every call of the wix module and its error paths, against a fresh emulator.
-- Run by tests/integration/test_wix_module.py over both transports (the
-- in-process sandbox and HTTP to `wixr sandbox serve`); returns what it checked.
local wix = require "wix"

local JANE = "33333333-4444-4555-8666-777777777777"
local BOB = "44444444-5555-4666-8777-888888888888"
local RESELLER = "11111111-2222-4333-8444-555555555555"
local JANE_SITE1 = "c0000000-0000-4000-8000-000000000001"
local JANE_SITE2 = "c0000000-0000-4000-8000-000000000002"
local OTHER_SITE = "e0000000-0000-4000-8000-000000000001"
local LIGHT = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01"
local CORE = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02"
local BUSINESS = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03"
local DOMAIN = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01"
local ASCEND = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a01"
local SERVICE = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"

local checks = 0
local function eq(actual, expected, what)
  checks = checks + 1
  if actual ~= expected then
    error(string.format("%s: expected %s, got %s", what, tostring(expected), tostring(actual)), 2)
  end
end

-- Runs fn, which must raise a wix.Error; returns it.
local function fails(fn, code, what)
  local ok, e = pcall(fn)
  checks = checks + 1
  if ok then error(what .. ": expected " .. code .. ", but the call succeeded", 2) end
  if not wix.is_error(e) then error(what .. ": expected a wix.Error, got " .. tostring(e), 2) end
  if e.code ~= code then error(what .. ": expected " .. code .. ", got " .. tostring(e), 2) end
  return e
end

local me = { account_id = JANE }

-- create (V2, the billing short form), get: snake_case fields back
local pkg = wix.packages.create{
  account_id = JANE, external_id = "sub-1", idempotency_key = "order-1",
  products = { { catalog_product_id = CORE, site_id = JANE_SITE1, country_code = "de",
                 billing = { unit = "YEAR", count = 1 } } },
}
local inst = pkg.product_instances[1]
eq(pkg.account_id, JANE, "create: account")
eq(pkg.external_id, "sub-1", "create: external id")
eq(inst.status, "PENDING", "create: new instances are PENDING")
eq(inst.country_code, "DE", "create: country code upper-cased")
eq(inst.billing_info.cycle_duration.unit, "YEAR", "create: billing_info from the short form")
eq(inst.site_id, JANE_SITE1, "create: site")

local again = wix.packages.create{
  account_id = JANE, external_id = "sub-1", idempotency_key = "order-1",
  products = { { catalog_product_id = CORE, site_id = JANE_SITE1, country_code = "de",
                 billing = { unit = "YEAR", count = 1 } } },
}
eq(again.id, pkg.id, "create: the same idempotency key gives the same package")

local got = wix.packages.get(pkg.id, me)
eq(got.id, pkg.id, "get: id")
eq(got.product_instances[1].status, "ENABLED", "get: delivered")

-- V1 create needs no country code; floating instance (no site)
local v1 = wix.packages.create{ version = 1, account_id = JANE, products = { { catalog_product_id = SERVICE } } }
eq(v1.product_instances[1].site_id, nil, "v1: floating")
eq(v1.product_instances[1].billing_info.type, "ONE_TIME", "v1: the only cycle")

-- validation before sending, naming the Lua field
local e = fails(function()
  wix.packages.create{ account_id = JANE, products = { { catalog_product_id = CORE } } }
end, "INVALID_ARGUMENT", "v2 needs country_code")
eq(e.field, "products[1].country_code", "client-side field")
eq(e.client_side, true, "client-side flag")
fails(function() wix.packages.get("not-a-guid", me) end, "INVALID_ARGUMENT", "bad guid")
fails(function() wix.packages.create{ account_id = JANE, external_id = string.rep("x", 101),
  products = { { catalog_product_id = SERVICE, country_code = "DE" } } } end, "INVALID_ARGUMENT", "external_id > 100")
fails(function() wix.packages.create{ account_id = JANE, products = {} } end, "INVALID_ARGUMENT", "no products")
fails(function() wix.packages.create{ account_id = JANE, prodcts = {} } end, "INVALID_ARGUMENT", "unknown key")
fails(function() wix.packages.query{ limit = 101 } end, "INVALID_ARGUMENT", "cursor limit")
fails(function() wix.instances.adjust(inst.instance_id, {}, me) end, "INVALID_ARGUMENT", "adjust needs a change")

-- server-side errors become structured errors
e = fails(function()
  wix.packages.create{ account_id = JANE, products = { { catalog_product_id = LIGHT, site_id = JANE_SITE1,
    country_code = "DE", billing = { unit = "MONTH" } } } }
end, "PRODUCT_TYPE_ALREADY_ASSIGNED", "one plan per site")
eq(e.status, 428, "status")
eq(e.retryable, false, "428 is not retryable")
eq(type(e.request_id), "string", "request id")
eq(e.method, "POST", "method")
checks = checks + 1
assert(tostring(e):find("wix_api.lua:%d+: wix: 428 PRODUCT_TYPE_ALREADY_ASSIGNED"), "tostring: " .. tostring(e))
fails(function() wix.packages.create{ account_id = JANE, products = { { catalog_product_id = CORE,
  site_id = JANE_SITE2, country_code = "DE" } } } end, "MISSING_BILLING_CYCLE", "several cycles")
fails(function() wix.packages.create{ account_id = JANE, products = { { catalog_product_id = CORE,
  site_id = OTHER_SITE, country_code = "DE", billing = { unit = "YEAR" } } } } end, "SITE_NOT_FOUND", "foreign site")
fails(function() wix.packages.create{ account_id = JANE, products = { { catalog_product_id = "00000000-0000-4000-8000-000000000000",
  country_code = "DE" } } } end, "PRODUCT_NOT_FOUND", "unknown product")
fails(function() wix.packages.get(pkg.id, { account_id = BOB }) end, "PACKAGE_NOT_FOUND", "sibling cannot see")
eq(wix.packages.get(pkg.id, { account_id = RESELLER }).id, pkg.id, "the reseller sees its sub-account's package")

-- voucher: a domain referencing the plan instance, once
local dom = wix.packages.create{ account_id = JANE, external_id = "sub-1", products = { {
  catalog_product_id = DOMAIN, site_id = JANE_SITE1, country_code = "DE", reference_product_instance_id = inst.instance_id } } }
eq(dom.product_instances[1].reference_product_instance_id, inst.instance_id, "voucher reference")
checks = checks + 1
assert(dom.product_instances[1].expiration_date, "domain expiration date")
fails(function() wix.packages.create{ account_id = JANE, products = { { catalog_product_id = DOMAIN,
  site_id = JANE_SITE1, country_code = "DE", reference_product_instance_id = inst.instance_id } } } end,
  "REFERENCE_PRODUCT_INSTANCE_ALREADY_USED", "single-use voucher")

-- query: one page, cursors, the iterator, sort and filters with snake_case paths
for i = 1, 5 do
  wix.packages.create{ account_id = BOB, external_id = "bulk-" .. i,
                       products = { { catalog_product_id = SERVICE, country_code = "DE" } } }
end
local page = wix.packages.query({ filter = { account_id = BOB }, limit = 2, sort = "created_date" }, me)
eq(#page.packages, 2, "query: page size")
eq(page.packages[1].external_id, "bulk-1", "query: ascending sort")
checks = checks + 1
assert(page.next_cursor, "query: next cursor")
local seen, n = {}, 0
for p in wix.packages.each({ filter = { account_id = BOB }, limit = 2, sort = "-created_date" }, me) do
  n = n + 1
  eq(seen[p.id], nil, "each: no package twice")
  seen[p.id] = true
  if n == 1 then eq(p.external_id, "bulk-5", "each: descending sort") end
end
eq(n, 5, "each: every page")
eq(#wix.packages.all({ filter = { ["product_instances.status"] = { ["$hasSome"] = { "ENABLED" } },
  account_id = BOB } }, me), 5, "all: $hasSome on an instance field")
local offset = wix.packages.query({ filter = { account_id = BOB }, limit = 2, offset = 4 }, me)
eq(offset.metadata.total, 5, "offset paging: total")
eq(#offset.packages, 1, "offset paging: last page")
eq(#wix.packages.find_by_external_id("sub-1", me), 2, "find_by_external_id")
eq(wix.packages.find_by_instance(inst.instance_id, me).id, pkg.id, "find_by_instance")
fails(function() wix.packages.query({ filter = { name = "x" } }, me) end, "INVALID_ARGUMENT", "unsupported filter")

-- set external id (URL-encoded path segment)
local upd = wix.packages.set_external_id(v1.id, "crm/42 x", me)
eq(upd.external_id, "crm/42 x", "set_external_id")

-- instances: adjust (keeps the id), assign, unassign, cancel
local adj = wix.instances.adjust(inst.instance_id, { catalog_product_id = BUSINESS }, me)
local ai = wix.instance_of(adj, inst.instance_id)
eq(ai.catalog_product_id, BUSINESS, "adjust: upgraded")
eq(ai.billing_info.cycle_duration.unit, "YEAR", "adjust: cycle kept")
adj = wix.instances.adjust(inst.instance_id, { billing = { unit = "MONTH", count = 1 } }, me)
eq(wix.instance_of(adj, inst.instance_id).billing_info.cycle_duration.unit, "MONTH", "adjust: cycle changed")
fails(function() wix.instances.adjust(inst.instance_id, { catalog_product_id = ASCEND }, me) end,
  "INCOMPATIBLE_PRODUCT", "adjust across types")
fails(function() wix.instances.adjust("00000000-0000-4000-8000-000000000000", { catalog_product_id = CORE }, me) end,
  "PRODUCT_INSTANCE_NOT_FOUND", "adjust unknown instance")

local moved = wix.instances.assign(v1.product_instances[1].instance_id, JANE_SITE2, me)
eq(moved.product_instances[1].site_id, JANE_SITE2, "assign")
local floating = wix.instances.unassign(v1.product_instances[1].instance_id, me)
eq(floating.product_instances[1].site_id, nil, "unassign")
local canceled = wix.instances.cancel(v1.product_instances[1].instance_id, me)
eq(canceled.product_instances[1].status, "CANCELED", "cancel instance")
fails(function() wix.instances.assign(v1.product_instances[1].instance_id, JANE_SITE2, me) end,
  "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS", "assign a canceled instance")

-- cancel the plan's package: the domain on the site is disconnected
local gone = wix.packages.cancel(pkg.id, me)
eq(gone.product_instances[1].status, "CANCELED", "cancel package")
eq(wix.packages.get(dom.id, me).product_instances[1].site_id, nil, "dependent domain floats")

-- concurrency helpers
local results = wix.all {
  function() return wix.packages.get(dom.id, me).id end,
  function() return wix.packages.get(v1.id, me).id end,
  function() wix.sleep(5); return "slept" end,
}
eq(results[1], dom.id, "all: first")
eq(results[2], v1.id, "all: second")
eq(results[3], "slept", "all: sleep")
local t = wix.spawn(function(id) return wix.packages.get(id, me).external_id end, v1.id)
eq(t:wait(), "crm/42 x", "spawn/wait")
fails(function()
  wix.all { function() return 1 end, function() wix.packages.get("00000000-0000-4000-8000-000000000000", me) end }
end, "PACKAGE_NOT_FOUND", "all raises the first failure")

local st = wix.stats()
checks = checks + 1
assert(st.calls > 30 and st.attempts >= st.calls, "stats")
return { checks = checks, transport = wix.settings.transport }

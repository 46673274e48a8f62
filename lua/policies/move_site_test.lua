-- Tests of move_site.lua (run with `wixr test`).

local PLANS = {
  light = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01", core = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",
  business = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03", elite = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04",
  domain = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01",
}
local JANE = "33333333-4444-4555-8666-777777777777" -- seeded DIY sub-account and its two sites
local SITE1 = "c0000000-0000-4000-8000-000000000001"
local SITE2 = "c0000000-0000-4000-8000-000000000002"

local move = policy("move_site.lua", { event = "site.moved", options = { plans = PLANS } })

-- Subscription ord-1001 on SITE1: the domain first in the package (so the policy has to
-- reorder), then the Core plan. Returns the plan's and the domain's instance ids, and the package.
local function subscription(wix, site)
  local pkg = wix.packages.create { account_id = JANE, external_id = "ord-1001", products = {
    { catalog_product_id = PLANS.core, site_id = site or SITE1, country_code = "DE",
      billing = { unit = "YEAR", count = 1 } } } }
  local plan_id = pkg.product_instances[1].instance_id
  local domain = wix.packages.create { account_id = JANE, external_id = "ord-1001", products = {
    { catalog_product_id = PLANS.domain, site_id = site or SITE1, country_code = "DE",
      reference_product_instance_id = plan_id } } }
  return plan_id, domain.product_instances[1].instance_id, pkg
end

describe("moving", function()
  test("the whole subscription moves, the plan before the domain that needs it", function()
    local wix = fake_wix()
    local plan_id, domain_id = subscription(wix)
    local result = move({ subscription_id = "ord-1001", to_site_id = SITE2 },
                        { wix = wix, event = { id = "mov-1", name = "site.moved" } })
    local calls = wix.calls_to("instances.assign")
    eq(#calls, 2)
    eq(calls[1].args[1], plan_id, "the plan first")
    eq(calls[1].args[2], SITE2)
    eq(calls[1].args[3], { account_id = JANE, idempotency_key = "move:mov-1:" .. plan_id })
    eq(calls[2].args[1], domain_id, "then the domain")
    eq(result.moved, { { instance_id = plan_id, plan = "core", from_site_id = SITE1 },
                       { instance_id = domain_id, plan = "domain", from_site_id = SITE1 } })
    eq(result.unchanged, {})
    eq(result.to_site_id, SITE2)
  end)

  test("one service by plan name", function()
    local wix = fake_wix()
    local _, domain_id = subscription(wix)
    -- a Premium plan of another order on SITE2: Wix puts a domain only where one is
    wix.packages.create { account_id = JANE, external_id = "ord-1002", products = {
      { catalog_product_id = PLANS.light, site_id = SITE2, country_code = "DE", billing = { unit = "YEAR", count = 1 } } } }
    local result = move({ subscription_id = "ord-1001", plan = "domain", to_site_id = SITE2 }, { wix = wix })
    eq(#wix.calls_to("instances.assign"), 1)
    eq(result.moved[1].instance_id, domain_id)
  end)

  test("one service by instance id, found with find_by_instance", function()
    local wix = fake_wix()
    local plan_id = subscription(wix)
    move({ instance_id = plan_id, to_site_id = SITE2 }, { wix = wix })
    eq(#wix.calls_to("packages.find_by_instance"), 1)
    eq(#wix.calls_to("instances.assign"), 1)
    eq(wix.calls_to("instances.assign")[1].args[1], plan_id)
  end)

  test("a floating service is assigned", function()
    local wix = fake_wix()
    local pkg = wix.packages.create { account_id = JANE, external_id = "ord-1003", products = {
      { catalog_product_id = PLANS.light, country_code = "DE", billing = { unit = "MONTH", count = 1 } } } }
    local result = move({ subscription_id = "ord-1003", to_site_id = SITE1 }, { wix = wix })
    eq(result.moved, { { instance_id = pkg.product_instances[1].instance_id, plan = "light" } })
  end)

  test("services already on the site are left alone (a repeated event changes nothing)", function()
    local wix = fake_wix()
    local plan_id, domain_id = subscription(wix, SITE2)
    local result = move({ subscription_id = "ord-1001", to_site_id = SITE2 }, { wix = wix })
    eq(#wix.calls_to("instances.assign"), 0)
    eq(result.moved, {})
    eq(result.unchanged, { plan_id, domain_id })
  end)
end)

describe("bad input", function()
  local cases = {
    { "no target site", { subscription_id = "ord-1001" }, "to_site_id is required" },
    { "no subscription or instance", { to_site_id = SITE2 }, "subscription_id or instance_id is required" },
    { "an unknown plan", { subscription_id = "ord-1001", to_site_id = SITE2, plan = "gold" },
      'plan "gold" is not a plan' },
    { "a plan the subscription lacks", { subscription_id = "ord-1001", to_site_id = SITE2, plan = "elite" },
      "matches no live service" },
    { "an unknown subscription", { subscription_id = "ord-9", to_site_id = SITE2 },
      "subscription_id matches no package" },
    { "an unknown instance", { instance_id = "0e000000-0000-4000-8000-000000000000", to_site_id = SITE2 },
      "instance_id matches no service" },
  }
  for _, c in ipairs(cases) do
    test(c[1] .. " raises an error naming the field", function()
      local wix = fake_wix()
      subscription(wix)
      raises(function() move(c[2], { wix = wix }) end, c[3])
      eq(#wix.calls_to("instances.assign"), 0)
    end)
  end
end)

describe("a move that fails", function()
  test("is raised as it is, after reading the package again to log where the service is", function()
    local wix = fake_wix()
    subscription(wix)
    wix.fail("instances.assign", { status = 428, code = "PRODUCT_TYPE_ALREADY_ASSIGNED", message = "site has one" })
    local e = raises(function() move({ subscription_id = "ord-1001", to_site_id = SITE2 }, { wix = wix }) end,
                     "PRODUCT_TYPE_ALREADY_ASSIGNED")
    eq(e.status, 428)
    eq(#wix.calls_to("instances.assign"), 1, "stops at the first failure")
    eq(#wix.calls_to("packages.get"), 1, "reads the package again")
    eq(wix.calls_to("packages.get")[1].args[2], { account_id = JANE })
  end)

  test("a failing re-read does not hide the move's own error", function()
    local wix = fake_wix()
    subscription(wix)
    wix.fail("instances.assign", { status = 503, code = "UNAVAILABLE" })
    wix.fail("packages.get", { status = 503, code = "TRANSPORT" })
    raises(function() move({ subscription_id = "ord-1001", to_site_id = SITE2 }, { wix = wix }) end, "UNAVAILABLE")
  end)
end)

describe("on the emulator", function()
  test("a plan and its domain move to the customer's other site", function()
    local wix = fake_wix { emulator = true }
    local plan_id, domain_id, pkg = subscription(wix)
    local result = move({ subscription_id = "ord-1001", to_site_id = SITE2 }, { wix = wix })
    eq(#result.moved, 2)
    eq(wix.instance_of(wix.packages.get(pkg.id), plan_id).site_id, SITE2)
    eq(wix.instance_of(wix.packages.find_by_instance(domain_id), domain_id).site_id, SITE2)
  end)

  test("a site that already holds a Premium plan refuses a second one; the plan stays put", function()
    local wix = fake_wix { emulator = true }
    local plan_id, _, pkg = subscription(wix)
    wix.packages.create { account_id = JANE, external_id = "ord-1004", products = {
      { catalog_product_id = PLANS.light, site_id = SITE2, country_code = "DE",
        billing = { unit = "YEAR", count = 1 } } } }
    raises(function() move({ instance_id = plan_id, to_site_id = SITE2 }, { wix = wix }) end,
           "PRODUCT_TYPE_ALREADY_ASSIGNED")
    eq(wix.instance_of(wix.packages.get(pkg.id), plan_id).site_id, SITE1)
  end)

  test("another customer's site is refused by Wix", function()
    local wix = fake_wix { emulator = true }
    subscription(wix)
    local bobs_site = "d0000000-0000-4000-8000-000000000001"
    raises(function() move({ subscription_id = "ord-1001", to_site_id = bobs_site }, { wix = wix }) end,
           "SITE_NOT_FOUND")
  end)
end)

-- Tests of change_plan.lua (run with `wixr test`).

local PLANS = {
  light = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01", core = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",
  business = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03", elite = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04",
  domain = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01",
}
local JANE = "33333333-4444-4555-8666-777777777777" -- seeded DIY sub-account
local SITE1 = "c0000000-0000-4000-8000-000000000001"
local SITE2 = "c0000000-0000-4000-8000-000000000002"
local YEARLY = { unit = "YEAR", count = 1 }

local change = policy("change_plan.lua", { event = "subscription.changed", options = { plans = PLANS } })

-- A wix (fake, or the emulator) holding subscription ord-1001: one service per plan given.
local function subscription(wix, ...)
  local products = {}
  for i, plan in ipairs { ... } do
    products[i] = { catalog_product_id = PLANS[plan], site_id = i == 1 and SITE1 or SITE2, country_code = "DE",
                    billing = YEARLY }
  end
  local pkg = wix.packages.create { account_id = JANE, external_id = "ord-1001", products = products }
  return pkg.product_instances[1].instance_id, pkg
end

describe("allowed changes", function()
  test("an upgrade adjusts the instance to the new plan, in its account, keyed by the event", function()
    local wix = fake_wix()
    local id = subscription(wix, "core")
    local result = change({ subscription_id = "ord-1001", from_plan = "core", to_plan = "business" },
                          { wix = wix, event = { id = "upg-1001", name = "subscription.changed" } })
    local calls = wix.calls_to("instances.adjust")
    eq(#calls, 1, "adjusts")
    eq(calls[1].args[1], id)
    eq(calls[1].args[2], { catalog_product_id = PLANS.business })
    eq(calls[1].args[3], { account_id = JANE, idempotency_key = "change:upg-1001" })
    eq(result, { changed = true, instance_id = id, from = "core", to = "business", billing = "yearly" })
  end)

  test("from_plan is optional when one service can change", function()
    local wix = fake_wix()
    subscription(wix, "core")
    eq(change({ subscription_id = "ord-1001", to_plan = "elite" }, { wix = wix }).changed, true)
    eq(wix.calls_to("instances.adjust")[1].args[2].catalog_product_id, PLANS.elite)
  end)

  test("a billing change alone sends only the new cycle", function()
    local wix = fake_wix()
    subscription(wix, "core")
    local result = change({ subscription_id = "ord-1001", billing = "monthly" }, { wix = wix })
    eq(wix.calls_to("instances.adjust")[1].args[2], { billing = { unit = "MONTH", count = 1 } })
    eq(result.to, "core")
    eq(result.billing, "monthly")
  end)

  test("a downgrade goes through when options.allow_downgrade is on", function()
    local wix = fake_wix()
    subscription(wix, "business")
    local result = change({ subscription_id = "ord-1001", to_plan = "core" },
                          { wix = wix, options = { allow_downgrade = true } })
    eq(result.changed, true)
    eq(wix.calls_to("instances.adjust")[1].args[2].catalog_product_id, PLANS.core)
  end)

  test("instance_id picks the service when the subscription holds several", function()
    local wix = fake_wix()
    local _, pkg = subscription(wix, "core", "light")
    local second = pkg.product_instances[2].instance_id
    raises(function() change({ subscription_id = "ord-1001", to_plan = "business" }, { wix = wix }) end,
           "several services could change")
    change({ subscription_id = "ord-1001", instance_id = second, to_plan = "business" }, { wix = wix })
    eq(wix.calls_to("instances.adjust")[1].args[1], second)
  end)
end)

describe("nothing to do", function()
  test("already on the target plan and cycle: no call", function()
    local wix = fake_wix()
    subscription(wix, "core")
    local result = change({ subscription_id = "ord-1001", to_plan = "core", billing = "yearly" }, { wix = wix })
    eq(result.changed, false)
    has(result.reason, "already on core (yearly)")
    eq(#wix.calls_to("instances.adjust"), 0)
  end)

  test("the same upgrade delivered again finds the service already moved", function()
    local wix = fake_wix()
    subscription(wix, "business")
    local result = change({ subscription_id = "ord-1001", from_plan = "core", to_plan = "business" }, { wix = wix })
    eq(result.changed, false)
    has(result.reason, "already on business")
  end)
end)

describe("refused by the rules (a result, not an error)", function()
  test("a downgrade is refused while allow_downgrade is off", function()
    local wix = fake_wix()
    subscription(wix, "business")
    local result = change({ subscription_id = "ord-1001", from_plan = "business", to_plan = "core" }, { wix = wix })
    eq(result.changed, false)
    has(result.refused, "downgrade from business to core")
    eq(#wix.calls_to("instances.adjust"), 0)
  end)

  test("a move missing from the transitions table is refused even with downgrades on", function()
    local wix = fake_wix()
    subscription(wix, "elite")
    local result = change({ subscription_id = "ord-1001", to_plan = "light" },
                          { wix = wix, options = { allow_downgrade = true } })
    has(result.refused, "no move from elite to light")
    eq(#wix.calls_to("instances.adjust"), 0)
  end)

  test("a plan of another product type is refused (no transition leads there)", function()
    local wix = fake_wix()
    subscription(wix, "core")
    local result = change({ subscription_id = "ord-1001", from_plan = "core", to_plan = "domain" }, { wix = wix })
    has(result.refused, "no move from core to domain")
  end)

  test("a canceled subscription is refused", function()
    local wix = fake_wix()
    local _, pkg = subscription(wix, "core")
    pkg.product_instances[1].status = "CANCELED"
    wix.returns("packages.find_by_external_id", { pkg })
    local result = change({ subscription_id = "ord-1001", to_plan = "business" }, { wix = wix })
    has(result.refused, "no live service")
  end)
end)

describe("bad input", function()
  local cases = {
    { "an unknown plan", { to_plan = "gold" }, 'to_plan "gold" is not a plan' },
    { "an unknown billing term", { billing = "weekly" }, 'billing "weekly" is not a billing term' },
    { "nothing to change", {}, "to_plan or billing is required" },
    { "a from_plan the subscription lacks", { from_plan = "light", to_plan = "elite" },
      "from_plan matches no live service" },
    { "an unknown subscription", { subscription_id = "ord-9", to_plan = "core" },
      "subscription_id matches no package" },
  }
  for _, c in ipairs(cases) do
    test(c[1] .. " raises an error naming the field", function()
      local wix = fake_wix()
      subscription(wix, "core")
      local e = { subscription_id = "ord-1001" }
      for k, v in pairs(c[2]) do e[k] = v end
      raises(function() change(e, { wix = wix }) end, c[3])
      eq(#wix.calls_to("instances.adjust"), 0)
    end)
  end
end)

describe("Wix refusing the change", function()
  test("the wix.Error is raised as it is", function()
    local wix = fake_wix()
    subscription(wix, "core")
    wix.fail("instances.adjust",
             { status = 428, code = "INCOMPATIBLE_BILLING_CYCLE", message = "not one of the cycles" })
    local e = raises(function() change({ subscription_id = "ord-1001", to_plan = "business" }, { wix = wix }) end,
                     "INCOMPATIBLE_BILLING_CYCLE")
    eq(e.status, 428)
  end)

  test("a failing lookup is raised too", function()
    local wix = fake_wix()
    wix.fail("packages.find_by_external_id", { status = 503, code = "UNAVAILABLE" })
    raises(function() change({ subscription_id = "ord-1001", to_plan = "business" }, { wix = wix }) end, "UNAVAILABLE")
  end)
end)

describe("on the emulator", function()
  test("an upgrade keeps the instance id and changes its product", function()
    local wix = fake_wix { emulator = true }
    local id, pkg = subscription(wix, "core")
    local result = change({ subscription_id = "ord-1001", to_plan = "business" }, { wix = wix })
    eq(result.changed, true)
    local inst = wix.instance_of(wix.packages.get(pkg.id), id)
    eq(inst.catalog_product_id, PLANS.business)
    eq(inst.billing_info.cycle_duration, YEARLY)
    -- and again: nothing to do
    has(change({ subscription_id = "ord-1001", to_plan = "business" }, { wix = wix }).reason, "already on business")
  end)

  test("a cycle the new plan does not offer is refused by Wix", function()
    local wix = fake_wix { emulator = true }
    subscription(wix, "core")
    -- Each event has its own id, hence its own idempotency key (one key twice would replay
    -- the first answer).
    change({ subscription_id = "ord-1001", billing = "2-years" },
           { wix = wix, event = { id = "chg-1", name = "subscription.changed" } })
    -- Premium Business Elite is sold monthly or yearly only, and the change keeps the cycle.
    raises(function()
      change({ subscription_id = "ord-1001", to_plan = "elite" },
             { wix = wix, event = { id = "chg-2", name = "subscription.changed" } })
    end, "MISSING_BILLING_CYCLE")
  end)
end)

-- Tests of cancel_subscription.lua (run with `wixr test`).

local PLANS = {
  light = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01", core = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",
  business = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03", elite = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04",
  domain = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01",
}
local TEAM = "22222222-3333-4444-8555-666666666666" -- seeded team account (DIFM)
local JANE = "33333333-4444-4555-8666-777777777777" -- seeded DIY sub-account
local SITE = "c0000000-0000-4000-8000-000000000001"

local cancel = policy("cancel_subscription.lua", { event = "subscription.canceled", options = { plans = PLANS } })

-- Subscription ord-1001 in Jane's account: a Core plan, and in a second package the
-- domain that came with it as a voucher. Returns the plan's and the domain's instance ids.
local function subscription(wix)
  local plan = wix.packages.create { account_id = JANE, external_id = "ord-1001", products = {
    { catalog_product_id = PLANS.core, site_id = SITE, country_code = "DE", billing = { unit = "YEAR", count = 1 } } } }
  local plan_id = plan.product_instances[1].instance_id
  local domain = wix.packages.create { account_id = JANE, external_id = "ord-1001", products = {
    { catalog_product_id = PLANS.domain, site_id = SITE, country_code = "DE",
      reference_product_instance_id = plan_id } } }
  return plan_id, domain.product_instances[1].instance_id, plan, domain
end

local function sorted(list)
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  table.sort(out)
  return out
end

describe("the whole subscription", function()
  test("every package with the external id is canceled, in its account", function()
    local wix = fake_wix()
    local plan_id, domain_id, plan, domain = subscription(wix)
    local result = cancel({ subscription_id = "ord-1001" }, { wix = wix })
    local calls = wix.calls_to("packages.cancel")
    eq(#calls, 2, "package cancels")
    eq(sorted { calls[1].args[1], calls[2].args[1] }, sorted { plan.id, domain.id })
    eq(calls[1].args[2], { account_id = JANE, idempotency_key = "cancel:" .. calls[1].args[1] })
    eq(sorted(result.canceled), sorted { plan_id, domain_id })
    eq(result.already_canceled, {})
  end)

  test("a package canceled before is reported, not canceled again", function()
    local wix = fake_wix()
    local plan_id, _, plan = subscription(wix)
    plan.product_instances[1].status = "CANCELED"
    wix.returns("packages.find_by_external_id", { plan })
    local result = cancel({ subscription_id = "ord-1001" }, { wix = wix })
    eq(#wix.calls_to("packages.cancel"), 0)
    eq(result.canceled, {})
    eq(result.already_canceled, { plan_id })
  end)
end)

describe("one service", function()
  test("by plan name; the voucher add-on that came with it goes too", function()
    local wix = fake_wix()
    local plan_id, domain_id = subscription(wix)
    local result = cancel({ subscription_id = "ord-1001", plan = "core" }, { wix = wix })
    local calls = wix.calls_to("instances.cancel")
    eq(#calls, 2)
    eq(calls[1].args[1], plan_id)
    eq(calls[1].args[2], { account_id = JANE, idempotency_key = "cancel:" .. plan_id })
    eq(calls[2].args[1], domain_id)
    eq(result.canceled, { plan_id, domain_id })
    eq(#wix.calls_to("packages.cancel"), 0)
  end)

  test("with options.cancel_addons off, only the plan", function()
    local wix = fake_wix()
    local plan_id = subscription(wix)
    local result = cancel({ subscription_id = "ord-1001", plan = "core" },
                          { wix = wix, options = { cancel_addons = false } })
    eq(result.canceled, { plan_id })
  end)

  test("by instance id: the add-on alone leaves the plan alone", function()
    local wix = fake_wix()
    local _, domain_id = subscription(wix)
    local result = cancel({ subscription_id = "ord-1001", instance_id = domain_id }, { wix = wix })
    eq(#wix.calls_to("instances.cancel"), 1)
    eq(result.canceled, { domain_id })
  end)

  test("a service canceled before is reported, not canceled again", function()
    local wix = fake_wix()
    local _, domain_id, plan, domain = subscription(wix)
    domain.product_instances[1].status = "CANCELED"
    wix.returns("packages.find_by_external_id", { plan, domain })
    local result = cancel({ subscription_id = "ord-1001", plan = "domain" }, { wix = wix })
    eq(#wix.calls_to("instances.cancel"), 0)
    eq(result.already_canceled, { domain_id })
  end)
end)

describe("bad input", function()
  test("an unknown plan raises an error naming the field", function()
    local wix = fake_wix()
    subscription(wix)
    raises(function() cancel({ subscription_id = "ord-1001", plan = "gold" }, { wix = wix }) end,
           'plan "gold" is not a plan')
  end)

  test("a plan the subscription does not hold raises", function()
    local wix = fake_wix()
    subscription(wix)
    raises(function() cancel({ subscription_id = "ord-1001", plan = "elite" }, { wix = wix }) end,
           "plan matches no service of this subscription")
  end)

  test("an unknown subscription raises", function()
    raises(function() cancel({ subscription_id = "ord-9" }, { wix = fake_wix() }) end,
           "subscription_id matches no package")
  end)

  test("no subscription_id raises", function()
    raises(function() cancel({}, { wix = fake_wix() }) end, "subscription_id is required")
  end)
end)

describe("Wix failing", function()
  test("the wix.Error is raised as it is (the event can be retried: canceled ones are skipped)", function()
    local wix = fake_wix()
    subscription(wix)
    wix.fail("packages.cancel", { status = 503, code = "UNAVAILABLE", message = "try later" })
    local e = raises(function() cancel({ subscription_id = "ord-1001" }, { wix = wix }) end, "UNAVAILABLE")
    eq(e.retryable, true)
    -- the retry cancels what is left and reports the rest
    local result = cancel({ subscription_id = "ord-1001" }, { wix = wix })
    eq(#result.canceled + #result.already_canceled, 2)
  end)
end)

describe("on the emulator", function()
  test("a DIFM subscription is canceled, and canceling it again reports it", function()
    local wix = fake_wix { emulator = true }
    local pkg = wix.packages.create { account_id = TEAM, external_id = "ord-1002", products = {
      { catalog_product_id = PLANS.business, site_id = "b0000000-0000-4000-8000-000000000001", country_code = "AT",
        billing = { unit = "YEAR", count = 1 } } } }
    local id = pkg.product_instances[1].instance_id
    eq(cancel({ subscription_id = "ord-1002" }, { wix = wix }).canceled, { id })
    eq(wix.packages.get(pkg.id).product_instances[1].status, "CANCELED")
    local again = cancel({ subscription_id = "ord-1002" }, { wix = wix })
    eq(again.canceled, {})
    eq(again.already_canceled, { id })
  end)

  test("canceling the plan cancels its voucher domain", function()
    local wix = fake_wix { emulator = true }
    local plan_id, domain_id, _, domain = subscription(wix)
    cancel({ subscription_id = "ord-1001", instance_id = plan_id }, { wix = wix })
    eq(wix.instance_of(wix.packages.get(domain.id), domain_id).status, "CANCELED")
  end)
end)

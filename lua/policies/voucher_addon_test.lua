-- Tests of voucher_addon.lua (run with `wixr test`).

local PLANS = {
  light = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01", core = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",
  business = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03", elite = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04",
  domain = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01",
}
local JANE = "33333333-4444-4555-8666-777777777777" -- seeded DIY sub-account
local SITE = "c0000000-0000-4000-8000-000000000001"

local redeem = policy("voucher_addon.lua",
                      { event = "order.voucher", options = { plans = PLANS, country_code = "DE" } })

-- Subscription ord-1001: one plan (yearly unless said), on Jane's site. Returns its instance id.
local function subscription(wix, plan, billing)
  local pkg = wix.packages.create { account_id = JANE, external_id = "ord-1001", products = {
    { catalog_product_id = PLANS[plan], site_id = SITE, country_code = "FR",
      billing = billing or { unit = "YEAR", count = 1 } } } }
  return pkg.product_instances[1].instance_id
end

local VOUCHER = { subscription_id = "ord-1001", voucher = "free-domain" }

describe("redeeming", function()
  test("a second package holds the add-on, referencing the plan's instance", function()
    local wix = fake_wix()
    local ref = subscription(wix, "core")
    local result = redeem(VOUCHER, { wix = wix })
    local creates = wix.calls_to("packages.create")
    eq(#creates, 2, "the plan's package and the add-on's")
    eq(creates[2].args[1], {
      account_id = JANE, external_id = "ord-1001", idempotency_key = "voucher:" .. ref,
      products = { { catalog_product_id = PLANS.domain, site_id = SITE, billing = { unit = "YEAR", count = 1 },
                     country_code = "FR", reference_product_instance_id = ref } },
    })
    eq(result.created, true)
    eq(result.reference_instance_id, ref)
    eq(result.addon, "domain")
    truthy(result.instance_id, "instance_id")
  end)

  test("delivered again, the voucher is reported as already redeemed", function()
    local wix = fake_wix()
    subscription(wix, "business")
    local first = redeem(VOUCHER, { wix = wix })
    local again = redeem(VOUCHER, { wix = wix })
    eq(#wix.calls_to("packages.create"), 2, "no third package")
    eq(again.created, false)
    eq(again.instance_id, first.instance_id)
    has(again.reason, "already redeemed")
  end)

  test("Wix saying the reference was used elsewhere is 'already redeemed', with a warning", function()
    local wix = fake_wix()
    subscription(wix, "core")
    wix.fail("packages.create", { status = 428, code = "REFERENCE_PRODUCT_INSTANCE_ALREADY_USED" })
    local result, ctx = redeem(VOUCHER, { wix = wix })
    eq(result.created, false)
    has(result.reason, "already redeemed")
    eq(ctx.logs[1].level, "warn")
  end)
end)

describe("not qualifying (a result, not an error)", function()
  test("a Light plan earns no free domain", function()
    local wix = fake_wix()
    subscription(wix, "light")
    local result = redeem(VOUCHER, { wix = wix })
    eq(result.created, false)
    has(result.refused, "holds no live plan that earns free-domain")
    eq(#wix.calls_to("packages.create"), 1, "only the plan's")
  end)

  test("a monthly plan earns none either", function()
    local wix = fake_wix()
    subscription(wix, "core", { unit = "MONTH", count = 1 })
    has(redeem(VOUCHER, { wix = wix }).refused, "core plan is billed per MONTH")
  end)

  test("a canceled plan earns none", function()
    local wix = fake_wix()
    subscription(wix, "core")
    local pkg = wix.packages.find_by_external_id("ord-1001")[1]
    pkg.product_instances[1].status = "CANCELED"
    wix.returns("packages.find_by_external_id", { pkg })
    truthy(redeem(VOUCHER, { wix = wix }).refused, "refused")
  end)
end)

describe("bad input and failures", function()
  test("an unknown voucher raises an error naming the field", function()
    raises(function() redeem({ subscription_id = "ord-1001", voucher = "free-car" }, { wix = fake_wix() }) end,
           'voucher "free%-car" is not a voucher')
  end)

  test("an unknown subscription raises", function()
    raises(function() redeem(VOUCHER, { wix = fake_wix() }) end, "subscription_id matches no package")
  end)

  test("any other refusal of Wix is raised as it is", function()
    local wix = fake_wix()
    subscription(wix, "core")
    wix.fail("packages.create", { status = 428, code = "PRODUCT_NOT_SUPPORTED_ON_SITE" })
    raises(function() redeem(VOUCHER, { wix = wix }) end, "PRODUCT_NOT_SUPPORTED_ON_SITE")
  end)
end)

describe("on the emulator", function()
  test("the free domain is delivered on the plan's site, once", function()
    local wix = fake_wix { emulator = true }
    local ref = subscription(wix, "core")
    local result = redeem(VOUCHER, { wix = wix })
    eq(result.created, true)
    local inst = wix.instance_of(wix.packages.get(result.package_id), result.instance_id)
    eq(inst.reference_product_instance_id, ref)
    eq(inst.site_id, SITE)
    eq(inst.status, "ENABLED")
    has(redeem(VOUCHER, { wix = wix }).reason, "already redeemed")
  end)

  test("a reference used by another package is 'already redeemed' (Wix's single-use rule)", function()
    local wix = fake_wix { emulator = true }
    local ref = subscription(wix, "core")
    wix.packages.create { account_id = JANE, external_id = "elsewhere", products = {
      { catalog_product_id = PLANS.domain, country_code = "DE", reference_product_instance_id = ref } } }
    local result = redeem(VOUCHER, { wix = wix })
    eq(result.created, false)
    has(result.reason, "already redeemed")
  end)
end)

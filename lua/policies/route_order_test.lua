-- Tests of route_order.lua (run with `wixr test`).

local PLANS = {
  light = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01", core = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",
  business = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03", elite = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04",
  domain = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01",
}
local TEAM = "22222222-3333-4444-8555-666666666666" -- seeded team account (DIFM)
local JANE = "33333333-4444-4555-8666-777777777777" -- seeded DIY sub-account
local JANE_SITE = "c0000000-0000-4000-8000-000000000001"
local BAKERY_SITE = "b0000000-0000-4000-8000-000000000001" -- a team site

local route = policy("route_order.lua", { event = "order.created",
                                          options = { plans = PLANS, team_account_id = TEAM, country_code = "DE" } })

local function diy(fields)
  local e = { order_id = "ord-1001", model = "DIY", account_id = JANE, country_code = "DE",
              items = { { plan = "core", billing = "yearly", site_id = JANE_SITE } } }
  for k, v in pairs(fields or {}) do e[k] = v end
  return e
end

describe("routing", function()
  test("a DIY order is created in the customer's sub-account", function()
    local wix = fake_wix()
    local result = route(diy(), { wix = wix })
    local calls = wix.calls_to("packages.create")
    eq(#calls, 1, "creates")
    eq(calls[1].args[1], {
      account_id = JANE, external_id = "ord-1001", idempotency_key = "ord-1001",
      products = { { catalog_product_id = PLANS.core, site_id = JANE_SITE, country_code = "DE",
                     billing = { unit = "YEAR", count = 1 } } },
    })
    eq(result.account_id, JANE)
    eq(result.model, "DIY")
    truthy(result.package_id, "package_id")
    eq(#result.instance_ids, 1)
  end)

  test("a DIFM order goes to the team account from the options", function()
    local wix = fake_wix()
    local result = route({ order_id = "ord-1002", model = "DIFM",
                           items = { { plan = "business", site_id = BAKERY_SITE } } }, { wix = wix })
    local spec = wix.calls_to("packages.create")[1].args[1]
    eq(spec.account_id, TEAM)
    eq(spec.products[1].catalog_product_id, PLANS.business)
    eq(spec.products[1].country_code, "DE", "the options' country code")
    eq(result.model, "DIFM")
  end)

  test("a DIFM order ignores the customer's account, with a warning", function()
    local wix = fake_wix()
    local _, ctx = route({ order_id = "ord-1002", model = "difm", account_id = JANE, items = { { plan = "core" } } },
                         { wix = wix })
    eq(wix.calls_to("packages.create")[1].args[1].account_id, TEAM)
    eq(ctx.logs[1].level, "warn")
    has(ctx.logs[1].msg, "ignored")
  end)

  test("an item without a site is bought floating", function()
    local wix = fake_wix()
    route(diy { items = { { plan = "light", billing = "monthly" } } }, { wix = wix })
    local product = wix.calls_to("packages.create")[1].args[1].products[1]
    eq(product.site_id, nil, "site_id")
    eq(product.billing, { unit = "MONTH", count = 1 })
  end)

  test("several items make one package; billing defaults to yearly", function()
    local wix = fake_wix()
    -- (the domain floats: Wix wants a Premium plan on a site before a domain goes there)
    local items = { { plan = "core", site_id = JANE_SITE }, { plan = "domain" } }
    local result = route(diy { items = items }, { wix = wix })
    local products = wix.calls_to("packages.create")[1].args[1].products
    eq(products[2].catalog_product_id, PLANS.domain)
    eq(products[2].billing, { unit = "YEAR", count = 1 })
    eq(#result.instance_ids, 2)
  end)

  test("the event id stands in for a missing order id", function()
    local wix = fake_wix()
    local e = diy()
    e.order_id = nil
    route(e, { wix = wix, event = { id = "ord-7", name = "order.created" } })
    local spec = wix.calls_to("packages.create")[1].args[1]
    eq(spec.external_id, "ord-7")
    eq(spec.idempotency_key, "ord-7")
  end)

  test("the price list comes from the options", function()
    local wix = fake_wix()
    route(diy { items = { { plan = "starter" } } },
          { wix = wix, options = { plans = { starter = PLANS.light } } })
    eq(wix.calls_to("packages.create")[1].args[1].products[1].catalog_product_id, PLANS.light)
  end)
end)

describe("bad orders", function()
  local cases = {
    { "an unknown model", { model = "RESALE" }, "model must be DIY or DIFM, got RESALE" },
    { "a DIY order without account_id", { account_id = false }, "account_id is required for a DIY order" },
    { "an unknown plan", { items = { { plan = "gold" } } }, 'items%[1%]%.plan "gold" is not a plan' },
    { "an unknown billing term", { items = { { plan = "core", billing = "weekly" } } },
      'items%[1%]%.billing "weekly"' },
    { "no items", { items = {} }, "items must list at least one item" },
    { "an item that is not an object", { items = { "core" } }, "items%[1%] must be an object" },
  }
  for _, c in ipairs(cases) do
    test(c[1] .. " raises an error naming the field, and creates nothing", function()
      local wix = fake_wix()
      local e = diy(c[2])
      if e.account_id == false then e.account_id = nil end
      raises(function() route(e, { wix = wix }) end, c[3])
      eq(#wix.calls, 0, "calls")
    end)
  end

  test("a DIFM order without options.team_account_id raises", function()
    raises(function() route({ order_id = "o", model = "DIFM", items = { { plan = "core" } } },
                            { wix = fake_wix(), options = { team_account_id = false } }) end,
           "team_account_id")
  end)

  test("no price list in the options raises", function()
    raises(function() route(diy(), { wix = fake_wix(), options = { plans = false } }) end, "options.plans")
  end)
end)

describe("Wix refusing the order", function()
  test("the wix.Error is raised as it is", function()
    local wix = fake_wix()
    wix.fail("packages.create", { status = 404, code = "SITE_NOT_FOUND", message = "Site is not owned by the account" })
    local e = raises(function() route(diy(), { wix = wix }) end, "SITE_NOT_FOUND")
    eq(e.status, 404)
    truthy(wix.is_error(e), "a wix.Error")
  end)
end)

describe("on the emulator", function()
  test("DIY and DIFM orders land in their accounts; a repeated order provisions once", function()
    local wix = fake_wix { emulator = true }
    local first = route(diy(), { wix = wix })
    local again = route(diy(), { wix = wix })
    eq(again.package_id, first.package_id, "same package")
    eq(#wix.packages.find_by_external_id("ord-1001"), 1, "one package")
    local difm = route({ order_id = "ord-1002", model = "DIFM",
                         items = { { plan = "business", site_id = BAKERY_SITE } } }, { wix = wix })
    eq(wix.packages.get(difm.package_id).account_id, TEAM)
  end)

  test("a DIY order on a site of the team account is refused by Wix", function()
    local wix = fake_wix { emulator = true }
    raises(function() route(diy { items = { { plan = "core", site_id = BAKERY_SITE } } }, { wix = wix }) end,
           "SITE_NOT_FOUND")
  end)
end)

describe("as configured in config/wixr.yaml", function()
  local configured = hook("order.created", 1, { config = "../../config/wixr.yaml" })

  test("a DIY order is provisioned with the YAML's price list, under its allow and max_mutations", function()
    local wix = fake_wix()
    local result, ctx = configured(diy(), { wix = wix })
    eq(ctx.options.team_account_id, TEAM, "the YAML's options")
    eq(ctx.hook, "order.created (route_order.lua)")
    eq(wix.calls_to("packages.create")[1].args[1].products[1].catalog_product_id, PLANS.core)
    eq(result.account_id, JANE)
  end)
end)

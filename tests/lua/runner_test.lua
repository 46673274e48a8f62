-- Tests of the test runner itself: assertions, the fake wix, and the emulator switch.
local JANE = "33333333-4444-4555-8666-777777777777"
local SERVICE = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"

describe("assertions", function()
  test("eq compares deeply and says where tables differ", function()
    eq({ a = { 1, 2 } }, { a = { 1, 2 } })
    local e = raises(function() eq({ a = { 1, 2 } }, { a = { 1, 3 } }, "nested") end)
    has(e, "nested: expected")
    has(e, "first difference at a.2")
  end)
  test("raises matches wix error codes and message patterns", function()
    local e = raises(function() error("boom 42") end, "boom %d+")
    has(tostring(e), "boom 42")
    raises(function() raises(function() end) end, "expected an error")
    raises(function() raises(function() error("x") end, "y") end, "expected an error matching")
  end)
  test("truthy, falsy, neq and has", function()
    truthy(1)
    falsy(nil)
    neq({ 1 }, { 2 })
    has({ "a", "b" }, "b")
    raises(function() has({ "a" }, "z") end, "does not contain")
  end)
end)

describe("fake_wix", function()
  local w
  before_each(function() w = fake_wix() end)

  test("records calls; the calls go to the emulator", function()
    local p = w.packages.create { account_id = JANE, external_id = "x-1",
                                  products = { { catalog_product_id = SERVICE, country_code = "de" } } }
    eq(p.product_instances[1].status, "PENDING")
    eq(w.packages.get(p.id).external_id, "x-1")
    eq(#w.packages.find_by_external_id("x-1"), 1)
    local c = w.instances.cancel(p.product_instances[1].instance_id)
    eq(c.product_instances[1].status, "CANCELED")
    eq(#w.calls, 4)
    eq(w.calls_to("packages.create")[1].args[1].account_id, JANE)
  end)

  test("fails the next call with a given Wix error", function()
    w.fail("packages.create", { status = 428, code = "PRODUCT_TYPE_ALREADY_ASSIGNED", message = "taken" })
    local spec = { account_id = JANE, products = { { catalog_product_id = SERVICE, country_code = "DE" } } }
    local e = raises(function() w.packages.create(spec) end, "PRODUCT_TYPE_ALREADY_ASSIGNED")
    eq(e.status, 428)
    truthy(wix.is_error(e))
    eq(#w.packages.find_by_external_id("x-1", { account_id = JANE }), 0, "nothing was sent")
    raises(function() w.packages.get("0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b") end, "PACKAGE_NOT_FOUND")
  end)

  test("returns overrides a result", function()
    w.returns("packages.get", function(id) return { id = id, product_instances = {} } end)
    eq(w.packages.get("0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b").id, "0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b")
  end)

  test("a replaced call still has its arguments checked by the wix module", function()
    w.returns("packages.get", { id = "x" })
    raises(function() w.packages.get("abc") end, "INVALID_ARGUMENT")
    w.fail("packages.create", { code = "SITE_NOT_FOUND" })
    local e = raises(function() w.packages.create { account_id = JANE, products = {} } end, "INVALID_ARGUMENT")
    eq(e.field, "products")
    eq(#w.calls, 2, "both were recorded")
  end)

  test("each fake starts a fresh emulator; emulator = true is accepted", function()
    local e1 = fake_wix { emulator = true }
    local p = e1.packages.create { account_id = JANE, products = { { catalog_product_id = SERVICE, country_code = "DE" } } }
    eq(e1.packages.get(p.id, { account_id = JANE }).id, p.id)
    raises(function() e1.packages.get("not-a-guid", { account_id = JANE }) end, "INVALID_ARGUMENT")
    local e2 = fake_wix { emulator = true }
    raises(function() e2.packages.get(p.id, { account_id = JANE }) end, "PACKAGE_NOT_FOUND")
    eq(#e1.calls, 3)
  end)
end)

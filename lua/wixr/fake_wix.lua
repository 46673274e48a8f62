-- wixr.fake_wix: a stand-in for the wix module in policy tests.
--
--   local wix = fake_wix()                  -- an in-memory fake
--   local wix = fake_wix{ emulator = true } -- the real module on a fresh in-process emulator
--
-- Either way every call is recorded (wix.calls, wix.calls_to(op)), the next call
-- of an operation can be made to fail with a given Wix error (wix.fail(op, fields))
-- and an operation's result can be replaced (wix.returns(op, value_or_function)).
-- Operation names are "packages.create", "packages.get", "instances.adjust", ...
-- Compiled into the wixr binary.

local real = require "wix"
local core = require "wix.core"

local M = {}

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return setmetatable(out, getmetatable(v))
end

local function now() return os.date("!%Y-%m-%dT%H:%M:%S.000Z") end

-- The in-memory store behind the plain fake: just enough of the API's behaviour
-- for policies to be tested without an emulator.
local function memory_backend()
  local packages, order = {}, {}
  local function not_found_pkg(id)
    real.raise { status = 404, code = "PACKAGE_NOT_FOUND", message = "Package with id " .. tostring(id) .. " was not found.",
                 retryable = false }
  end
  local function holder(instance_id)
    for _, id in ipairs(order) do
      local p = packages[id]
      for _, inst in ipairs(p.product_instances) do
        if inst.instance_id == instance_id then return p, inst end
      end
    end
    real.raise { status = 428, code = "PRODUCT_INSTANCE_NOT_FOUND",
                 message = "Product instance with id " .. tostring(instance_id) .. " was not found.", retryable = false }
  end
  local function touch(p, inst)
    p.updated_date = now()
    if inst then inst.updated_date = p.updated_date end
  end
  local function matches(p, filter)
    for k, v in pairs(filter or {}) do
      if type(v) ~= "table" and p[k] ~= v then return false end
    end
    return true
  end
  local b = { packages = {}, instances = {} }
  function b.packages.create(spec)
    local account = spec.account_id or real.settings.account_id or "11111111-2222-4333-8444-555555555555"
    local p = { id = core.uuid(), account_id = account, external_id = spec.external_id, product_instances = {},
                created_date = now(), updated_date = now() }
    for i, prod in ipairs(spec.products or {}) do
      local billing = prod.billing_info or prod.billing
      if type(billing) == "table" and billing.unit then
        billing = { type = "RECURRING", cycle_duration = { unit = billing.unit, count = billing.count or 1 } }
      elseif billing == "ONE_TIME" then
        billing = { type = "ONE_TIME" }
      end
      p.product_instances[i] = {
        instance_id = core.uuid(), catalog_product_id = prod.catalog_product_id, site_id = prod.site_id,
        status = "PENDING", billing_info = billing, country_code = prod.country_code and prod.country_code:upper(),
        reference_product_instance_id = prod.reference_product_instance_id, discount_code = prod.discount_code,
        created_date = p.created_date, updated_date = p.created_date,
      }
    end
    packages[p.id] = p
    order[#order + 1] = p.id
    return copy(p)
  end
  function b.packages.get(id)
    local p = packages[id]
    if not p then not_found_pkg(id) end
    return copy(p)
  end
  function b.packages.query(q)
    local list = {}
    for _, id in ipairs(order) do
      if matches(packages[id], q and q.filter) then list[#list + 1] = copy(packages[id]) end
    end
    return { packages = list, metadata = { count = #list, cursors = {} } }
  end
  function b.packages.all(q) return b.packages.query(q).packages end
  function b.packages.each(q)
    local list, i = b.packages.all(q), 0
    return function() i = i + 1; return list[i] end
  end
  function b.packages.find_by_external_id(ext) return b.packages.all { filter = { external_id = ext } } end
  function b.packages.find_by_instance(instance_id)
    for _, id in ipairs(order) do
      for _, inst in ipairs(packages[id].product_instances) do
        if inst.instance_id == instance_id then return copy(packages[id]) end
      end
    end
    return nil
  end
  function b.packages.cancel(id)
    local p = packages[id]
    if not p then not_found_pkg(id) end
    for _, inst in ipairs(p.product_instances) do inst.status = "CANCELED" end
    touch(p)
    return copy(p)
  end
  function b.packages.set_external_id(id, ext)
    local p = packages[id]
    if not p then not_found_pkg(id) end
    p.external_id = ext
    touch(p)
    return copy(p)
  end
  local function changeable(inst)
    if inst.status == "CANCELED" or inst.status == "FAILED" then
      real.raise { status = 428, code = "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS", retryable = false,
                   message = "Product instance with id " .. inst.instance_id .. " is with incompatible status " .. inst.status .. "." }
    end
  end
  function b.instances.adjust(instance_id, change)
    local p, inst = holder(instance_id)
    changeable(inst)
    inst.catalog_product_id = change.catalog_product_id or inst.catalog_product_id
    local billing = change.billing_info or change.billing
    if type(billing) == "table" and billing.unit then
      billing = { type = "RECURRING", cycle_duration = { unit = billing.unit, count = billing.count or 1 } }
    end
    inst.billing_info = billing or inst.billing_info
    touch(p, inst)
    return copy(p)
  end
  function b.instances.assign(instance_id, site_id)
    local p, inst = holder(instance_id)
    changeable(inst)
    inst.site_id = site_id
    touch(p, inst)
    return copy(p)
  end
  function b.instances.unassign(instance_id)
    local p, inst = holder(instance_id)
    changeable(inst)
    inst.site_id = nil
    touch(p, inst)
    return copy(p)
  end
  function b.instances.cancel(instance_id)
    local p, inst = holder(instance_id)
    inst.status = "CANCELED"
    touch(p, inst)
    return copy(p)
  end
  -- Test helpers: reach into the store.
  b.store = packages
  return b
end

local OPS = {
  packages = { "create", "get", "query", "each", "all", "cancel", "set_external_id", "find_by_instance",
               "find_by_external_id" },
  instances = { "adjust", "assign", "unassign", "cancel" },
}

function M.new(opts)
  opts = opts or {}
  local backend
  if opts.emulator then
    local st = core.sandbox_admin("POST", "/__admin/reset")
    if st ~= 200 then
      error("fake_wix{ emulator = true } needs the in-process emulator (run tests without a Wix API key)", 2)
    end
    backend = real
  else
    backend = memory_backend()
  end

  local fake = { calls = {}, packages = {}, instances = {} }
  local failures, overrides = {}, {}

  for group, names in pairs(OPS) do
    for _, name in ipairs(names) do
      local op = group .. "." .. name
      fake[group][name] = function(...)
        local args = table.pack(...)
        local recorded = copy(args)
        recorded.n = nil
        fake.calls[#fake.calls + 1] = { op = op, args = recorded }
        local f = failures[op] and table.remove(failures[op], 1)
        if f then
          local e = copy(f)
          e.status = e.status or 428
          e.code = e.code or "FAILED_PRECONDITION"
          e.message = e.message or ("injected failure of " .. op)
          if e.retryable == nil then e.retryable = e.status == 429 or e.status >= 500 end
          e.fake = true
          real.raise(e)
        end
        local o = overrides[op]
        if o ~= nil then
          if type(o) == "function" then return o(table.unpack(args, 1, args.n)) end
          return copy(o)
        end
        return backend[group][name](table.unpack(args, 1, args.n))
      end
    end
  end

  --- The recorded calls of one operation.
  function fake.calls_to(op)
    local out = {}
    for _, c in ipairs(fake.calls) do
      if c.op == op then out[#out + 1] = c end
    end
    return out
  end

  --- The next call of op raises a wix.Error built from fields ({status, code, message}).
  function fake.fail(op, fields)
    failures[op] = failures[op] or {}
    table.insert(failures[op], fields or {})
  end

  --- op returns value (a copy each time), or what function(args...) returns.
  function fake.returns(op, value)
    overrides[op] = value
  end

  -- Everything else is the real module's.
  fake.instance_of, fake.is_error, fake.Error, fake.raise = real.instance_of, real.is_error, real.Error, real.raise
  fake.all, fake.spawn, fake.sleep, fake.uuid, fake.array = real.all, real.spawn, real.sleep, real.uuid, real.array
  fake.null, fake.STATUS, fake.settings, fake.VERSION = real.null, real.STATUS, real.settings, real.VERSION
  fake.stats = real.stats
  fake.backend = backend
  return fake
end

return M

-- wix: the Wix Resellers API (Packages and Product Instances) for wixr scripts.
--
-- Naming rule: Lua uses snake_case for every field; the wire uses lowerCamelCase
-- (catalog_product_id <-> catalogProductId). The conversion happens in C, both ways,
-- for requests, answers, filter keys (each dotted segment) and sort field names.
--
-- Every call looks synchronous; underneath it yields the calling coroutine until
-- the answer is in, so many runs overlap their network waits. Failures raise a
-- wix.Error (see below). This file is compiled into the wixr binary.

local core = require "wix.core"

local wix = {}

wix.null = core.null
wix.VERSION = "0.1.0"

-- The sandbox's seeded reseller: the default account when none is configured.
local SANDBOX_ACCOUNT = "11111111-2222-4333-8444-555555555555"

local STATUS = { PENDING = true, ENABLED = true, CANCELED = true, FAILED = true, AWAITING_ACTION = true }
local CYCLE_TYPES = { ONE_TIME = true, RECURRING = true }
local UNITS = { DAY = true, WEEK = true, MONTH = true, YEAR = true }
wix.STATUS = STATUS

---------------------------------------------------------------------------
-- Errors
---------------------------------------------------------------------------

local Error = { __name = "wix.Error" }
Error.__index = Error
wix.Error = Error

function Error.__tostring(e)
  local s = "wix: "
  if e.status and e.status > 0 then s = s .. e.status .. " " end
  s = s .. (e.code or "ERROR") .. ": " .. tostring(e.message or "")
  local ctx = {}
  if e.method then ctx[#ctx + 1] = e.method .. " " .. (e.path or "") end
  if e.request_id then ctx[#ctx + 1] = "request id " .. e.request_id end
  if e.attempts and e.attempts > 1 then ctx[#ctx + 1] = e.attempts .. " attempts" end
  if e.client_side then ctx[#ctx + 1] = "not sent" end
  if #ctx > 0 then s = s .. " [" .. table.concat(ctx, "; ") .. "]" end
  if e.where then s = e.where .. ": " .. s end
  return s
end

--- True when v is an error raised by the wix module.
function wix.is_error(v)
  return getmetatable(v) == Error
end

-- The first stack frame that belongs to a script file (not to this module).
local getinfo = debug.getinfo
local function script_position()
  for level = 3, 64 do
    local info = getinfo(level, "Sl")
    if not info then return nil end
    if info.source:sub(1, 1) == "@" then
      return info.short_src .. ":" .. info.currentline
    end
  end
end

local function raise(fields)
  fields.where = fields.where or script_position()
  error(setmetatable(fields, Error), 0)
end
wix.raise = raise

--- A policy's own refusal: an error value that says trying again cannot
--- succeed. `error(wix.permanent("no such plan", { code = "UNKNOWN_PLAN" }))`
--- ends the event at once as dead (wixr serve) with the reason; a plain
--- `error("...")` stays retryable. fields (optional) become the error's fields;
--- code defaults to "PERMANENT".
function wix.permanent(reason, fields)
  if reason ~= nil and type(reason) ~= "string" then
    error("wix.permanent: the reason must be a string, got a " .. type(reason), 2)
  end
  if fields ~= nil and type(fields) ~= "table" then
    error("wix.permanent: fields must be a table, got a " .. type(fields), 2)
  end
  local e = {}
  for k, v in pairs(fields or {}) do e[k] = v end
  e.code = e.code or "PERMANENT"
  e.message = reason or e.message or "refused by the policy"
  e.status = e.status or 0
  e.retryable = false
  e.permanent = true
  e.where = e.where or script_position()
  return setmetatable(e, Error)
end

local HTTP_CODES = {
  [400] = "INVALID_ARGUMENT", [401] = "UNAUTHENTICATED", [403] = "PERMISSION_DENIED",
  [404] = "NOT_FOUND", [409] = "ALREADY_EXISTS", [428] = "FAILED_PRECONDITION",
  [429] = "RESOURCE_EXHAUSTED", [500] = "INTERNAL", [501] = "UNIMPLEMENTED",
  [503] = "UNAVAILABLE", [504] = "DEADLINE_EXCEEDED",
}

local function api_error(method, path, status, body, request_id, attempts, transport_error)
  local e = {
    status = status, method = method, path = path, attempts = attempts,
    request_id = request_id ~= "" and request_id or nil,
  }
  if transport_error then
    e.code, e.message, e.retryable = "TRANSPORT", transport_error, true
  else
    local details = type(body) == "table" and body.details or nil
    local app = details and details.application_error
    local val = details and details.validation_error
    e.code = app and app.code or (val and "INVALID_ARGUMENT") or HTTP_CODES[status] or ("HTTP_" .. status)
    e.message = type(body) == "table" and body.message or ("HTTP " .. status)
    e.field_violations = val and val.field_violations or nil
    -- Only what may succeed when sent again is retryable: 408, 429 and 5xx (and
    -- transport errors above). Every other 4xx is permanent: the same request
    -- gets the same answer, so wixr serve ends the event as dead at once.
    e.retryable = status == 408 or status == 429 or status >= 500
    e.details = details
  end
  raise(e)
end

-- Client-side validation: fails before anything is sent, naming the field.
local function invalid(field, message)
  raise { status = 400, code = "INVALID_ARGUMENT", field = field, message = field .. ": " .. message,
          retryable = false, client_side = true,
          field_violations = { { field = field, description = message } } }
end

local function check_guid(v, field, required)
  if v == nil then
    if required then invalid(field, "is required") end
    return nil
  end
  local guid = core.guid(v)
  if not guid then
    invalid(field, "must be a GUID (8-4-4-4-12 hex), got " .. string.format("%q", tostring(v)))
  end
  return guid
end

local function check_string(v, field, max, required)
  if v == nil then
    if required then invalid(field, "is required") end
    return nil
  end
  if type(v) ~= "string" then invalid(field, "must be a string, not " .. type(v)) end
  if max and #v > max then invalid(field, "must be at most " .. max .. " characters (got " .. #v .. ")") end
  return v
end

local function check_keys(t, allowed, field)
  for k in pairs(t) do
    if not allowed[k] then
      invalid(field .. "." .. tostring(k), "unknown field")
    end
  end
end

---------------------------------------------------------------------------
-- The wire
---------------------------------------------------------------------------

-- Read internally from this private copy: a script changing wix.settings
-- (say, dry_run) changes nothing.
local settings = core.settings()
wix.settings = setmetatable({}, {
  __index = settings,
  __newindex = function() error("wix.settings is read-only", 2) end,
  __pairs = function() return next, settings, nil end,
  __metatable = false,
})

local function account_of(opts, spec)
  local a = (opts and opts.account_id) or (spec and spec.account_id) or settings.account_id
  if a == nil and settings.transport == "sandbox" then a = SANDBOX_ACCOUNT end
  if a == nil then
    invalid("account_id", "no account: pass account_id, or set wix.account_id in the config or WIX_ACCOUNT_ID")
  end
  return check_guid(a, "account_id", true)
end

local function escape(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local request = core.request

local function send(method, path, body, account, key)
  local status, res, request_id, attempts, transport_error = request(method, path, body, account, key)
  if status >= 200 and status < 300 and (transport_error or type(res) ~= "table") then
    -- The call went through but its answer is unreadable: not retryable, since
    -- trying again could do the work twice.
    raise { status = status, code = "INVALID_RESPONSE", method = method, path = path, attempts = attempts,
            request_id = request_id ~= "" and request_id or nil, retryable = false,
            message = transport_error or "the answer has no JSON body" }
  end
  if transport_error or status < 200 or status >= 300 then
    api_error(method, path, status, res, request_id, attempts, transport_error)
  end
  return res
end

local last_time, last_iso
local function now_iso()
  local t = os.time()
  if t ~= last_time then last_time, last_iso = t, os.date("!%Y-%m-%dT%H:%M:%S.000Z", t) end
  return last_iso
end

-- Dry-run: mutating calls are recorded, not sent.
local function plan(method, path, body, account, key)
  core.plan { method = method, path = path, body = body, account_id = account, idempotency_key = key }
end

local function mutating_key(opts, spec)
  -- No key given: a fresh one, or inside a hook run for an event with an id, one
  -- derived from (event id, hook, n-th call) so a re-run sends the same keys.
  local key = (opts and opts.idempotency_key) or (spec and spec.idempotency_key) or core.next_key()
  return check_string(key, "idempotency_key", 100)
end

---------------------------------------------------------------------------
-- Billing cycles: the wire form {type, cycle_duration = {unit, count}} or the
-- short forms "ONE_TIME" and {unit = "YEAR", count = 1}.
---------------------------------------------------------------------------

local function billing_of(v, field)
  if v == nil then return nil end
  if v == "ONE_TIME" then return { type = "ONE_TIME" } end
  if type(v) ~= "table" then invalid(field, "must be a table or \"ONE_TIME\"") end
  local t = v.type or (v.unit and "RECURRING") or (v.cycle_duration and "RECURRING")
  if not CYCLE_TYPES[t] then invalid(field .. ".type", "must be ONE_TIME or RECURRING") end
  if t == "ONE_TIME" then return { type = "ONE_TIME" } end
  local d = v.cycle_duration or { unit = v.unit, count = v.count }
  if d.unit == nil then return { type = "RECURRING" } end -- the server says what is missing
  if not UNITS[d.unit] then invalid(field .. ".unit", "must be DAY, WEEK, MONTH or YEAR") end
  local count = d.count or 1
  if math.type(count) ~= "integer" or count < 1 then invalid(field .. ".count", "must be a whole number >= 1") end
  return { type = "RECURRING", cycle_duration = { unit = d.unit, count = count } }
end

---------------------------------------------------------------------------
-- Packages
---------------------------------------------------------------------------

wix.packages = {}
wix.instances = {}

local PRODUCT_KEYS = {
  catalog_product_id = true, site_id = true, country_code = true, billing = true, billing_info = true,
  discount_code = true, reference_product_instance_id = true,
}
local CREATE_KEYS = { account_id = true, external_id = true, idempotency_key = true, products = true, version = true }

local function product_wire(p, i, v2)
  local f = "products[" .. i .. "]"
  if type(p) ~= "table" then invalid(f, "must be a table") end
  check_keys(p, PRODUCT_KEYS, f)
  local country = check_string(p.country_code, f .. ".country_code", nil, v2)
  if country and not country:match("^%a%a$") then invalid(f .. ".country_code", "must be a two-letter country code") end
  return {
    catalog_product_id = check_guid(p.catalog_product_id, f .. ".catalog_product_id", true),
    site_id = check_guid(p.site_id, f .. ".site_id"),
    country_code = country and country:upper(),
    billing_info = billing_of(p.billing_info or p.billing, f .. (p.billing_info and ".billing_info" or ".billing")),
    discount_code = check_string(p.discount_code, f .. ".discount_code", 25),
    reference_product_instance_id = check_guid(p.reference_product_instance_id, f .. ".reference_product_instance_id"),
  }
end

local function simulated_package(account, spec, products)
  local now = now_iso()
  local instances = {}
  for i, p in ipairs(products) do
    instances[i] = {
      instance_id = core.uuid(), catalog_product_id = p.catalog_product_id, site_id = p.site_id,
      status = "PENDING", billing_info = p.billing_info, country_code = p.country_code,
      discount_code = p.discount_code, reference_product_instance_id = p.reference_product_instance_id,
      created_date = now, updated_date = now,
    }
  end
  return { id = core.uuid(), account_id = account, external_id = spec.external_id,
           product_instances = instances, created_date = now, updated_date = now, dry_run = true }
end

--- Creates a package. spec: { products = {...}, external_id?, account_id?, idempotency_key?, version? (2 or 1) }
function wix.packages.create(spec, opts)
  if type(spec) ~= "table" then invalid("spec", "must be a table") end
  check_keys(spec, CREATE_KEYS, "spec")
  local v2 = (spec.version or 2) ~= 1
  if spec.version ~= nil and spec.version ~= 1 and spec.version ~= 2 then invalid("version", "must be 1 or 2") end
  local account = account_of(opts, spec)
  local list = spec.products
  if type(list) ~= "table" or #list == 0 then invalid("products", "must list at least one product") end
  if #list > 1000 then invalid("products", "at most 1000 products in one package") end
  local products = {}
  for i, p in ipairs(list) do products[i] = product_wire(p, i, v2) end
  local key = mutating_key(opts, spec)
  local body = { idempotency_key = key, external_id = check_string(spec.external_id, "external_id", 100),
                 products = products }
  local path = v2 and "/resellers/v2/packages" or "/resellers/v1/packages"
  if settings.dry_run then
    plan("POST", path, body, account, key)
    return simulated_package(account, spec, products)
  end
  return send("POST", path, body, account, key).package
end

--- Gets one package by id.
function wix.packages.get(id, opts)
  id = check_guid(id, "id", true)
  return send("GET", "/resellers/v1/packages/" .. id, nil, account_of(opts)).package
end

local SORT_FIELDS = { created_date = true, updated_date = true }

local function sort_of(s)
  if s == nil then return nil end
  if type(s) == "string" then s = { s } end
  if type(s) ~= "table" then invalid("sort", "must be a field name or a list") end
  local out = {}
  for i, item in ipairs(s) do
    local name, order
    if type(item) == "string" then
      name, order = item:match("^%-(.+)$"), "DESC"
      if not name then name, order = item, "ASC" end
    elseif type(item) == "table" then
      name, order = item.field_name, item.order or "ASC"
    end
    if not SORT_FIELDS[name] then invalid("sort[" .. i .. "]", "only created_date and updated_date are sortable") end
    if order ~= "ASC" and order ~= "DESC" then invalid("sort[" .. i .. "].order", "must be ASC or DESC") end
    out[i] = { field_name = name, order = order }
  end
  return out
end

local QUERY_KEYS = { filter = true, sort = true, limit = true, cursor = true, offset = true, account_id = true }

local function query_body(q)
  q = q or {}
  if type(q) ~= "table" then invalid("query", "must be a table") end
  check_keys(q, QUERY_KEYS, "query")
  local query = { filter = q.filter, sort = sort_of(q.sort) }
  if q.filter ~= nil and type(q.filter) ~= "table" then invalid("filter", "must be a table") end
  local limit = q.limit
  if limit ~= nil and (math.type(limit) ~= "integer" or limit < 1) then invalid("limit", "must be a whole number >= 1") end
  if q.offset ~= nil then
    if math.type(q.offset) ~= "integer" or q.offset < 0 then invalid("offset", "must be a whole number >= 0") end
    if q.cursor then invalid("cursor", "use either cursor or offset") end
    query.paging = { limit = limit, offset = q.offset }
  else
    if limit and limit > 100 then invalid("limit", "at most 100 with cursor paging") end
    if q.cursor ~= nil then
      if q.filter ~= nil or q.sort ~= nil then invalid("cursor", "a cursor already carries the filter and sort") end
      check_string(q.cursor, "cursor")
    end
    query.cursor_paging = { limit = limit, cursor = q.cursor }
  end
  return { query = query }
end

--- One page of packages: { packages = {...}, metadata = {...}, next_cursor = string|nil }
--- q: { filter?, sort? ("created_date", "-updated_date" or {{field_name=, order=}}), limit?, cursor?, offset? }
function wix.packages.query(q, opts)
  local res = send("POST", "/resellers/v1/packages/query", query_body(q), account_of(opts, q))
  local md = res.metadata or {}
  res.packages = res.packages or {}
  local next_cursor = type(md.cursors) == "table" and md.cursors.next or nil
  res.next_cursor = type(next_cursor) == "string" and next_cursor or nil
  return res
end

--- Iterates over every package matching q, following cursors page by page.
---   for pkg in wix.packages.each{ filter = {...} } do ... end
function wix.packages.each(q, opts)
  q = q or {}
  if type(q) ~= "table" then invalid("query", "must be a table") end
  check_keys(q, QUERY_KEYS, "query")
  if q.offset ~= nil then invalid("offset", "each() follows cursors; do not pass offset") end
  local page = nil
  local i = 0
  local first = { filter = q.filter, sort = q.sort, limit = q.limit, cursor = q.cursor, account_id = q.account_id }
  return function()
    if page == nil then
      page = wix.packages.query(first, opts)
    end
    i = i + 1
    while page.packages[i] == nil do
      if not page.next_cursor then return nil end
      page = wix.packages.query({ cursor = page.next_cursor, limit = q.limit, account_id = q.account_id }, opts)
      i = 1
    end
    return page.packages[i]
  end
end

--- Every package matching q, as a list.
function wix.packages.all(q, opts)
  local out = {}
  for p in wix.packages.each(q, opts) do out[#out + 1] = p end
  return out
end

--- Cancels a package (every instance in it).
function wix.packages.cancel(id, opts)
  id = check_guid(id, "id", true)
  local account = account_of(opts)
  local key = mutating_key(opts)
  local path = "/resellers/v1/packages/" .. id
  if settings.dry_run then
    local pkg = wix.packages.get(id, opts)
    plan("DELETE", path, { idempotency_key = key }, account, key)
    for _, inst in ipairs(pkg.product_instances or {}) do inst.status = "CANCELED" end
    pkg.dry_run = true
    return pkg
  end
  return send("DELETE", path, { idempotency_key = key }, account, key).package
end

--- Sets a package's external id (this call takes no idempotency key).
function wix.packages.set_external_id(id, external_id, opts)
  id = check_guid(id, "id", true)
  check_string(external_id, "external_id", 100, true)
  if external_id == "" then invalid("external_id", "must not be empty") end
  local account = account_of(opts)
  local path = "/resellers/v1/packages/update/" .. id .. "/" .. escape(external_id)
  if settings.dry_run then
    local pkg = wix.packages.get(id, opts)
    plan("PATCH", path, nil, account, nil)
    pkg.external_id, pkg.dry_run = external_id, true
    return pkg
  end
  return send("PATCH", path, nil, account).updated_package
end

--- Finds the package that holds an instance (a read), or nil.
function wix.packages.find_by_instance(instance_id, opts)
  instance_id = check_guid(instance_id, "instance_id", true)
  local page = wix.packages.query({ filter = { ["product_instances.instance_id"] = { ["$hasSome"] = { instance_id } } },
                                    limit = 1 }, opts)
  return page.packages[1]
end

--- Finds packages by external id (follows every page).
function wix.packages.find_by_external_id(external_id, opts)
  check_string(external_id, "external_id", 100, true)
  return wix.packages.all({ filter = { external_id = external_id } }, opts)
end

---------------------------------------------------------------------------
-- Product instances
---------------------------------------------------------------------------

-- Dry-run stand-in for an instance call: reads the package (as the real call
-- would fail on a missing instance), applies change to a copy, returns it.
local function simulate_instance(instance_id, opts, method, path, body, account, key, change)
  local pkg = wix.packages.find_by_instance(instance_id, opts)
  if not pkg then
    raise { status = 428, code = "PRODUCT_INSTANCE_NOT_FOUND", method = method, path = path, retryable = false,
            message = "Product instance with id " .. instance_id .. " was not found.", dry_run = true }
  end
  plan(method, path, body, account, key)
  for _, inst in ipairs(pkg.product_instances or {}) do
    if inst.instance_id == instance_id then change(inst) end
  end
  pkg.dry_run = true
  return pkg
end

-- A mutating call on one instance: body (and its idempotency key) sent, or in
-- dry-run planned, with the package as `change` would leave it.
local function instance_call(instance_id, opts, method, path, body, change)
  local account = account_of(opts)
  body.idempotency_key = mutating_key(opts)
  if settings.dry_run then
    return simulate_instance(instance_id, opts, method, path, body, account, body.idempotency_key, change)
  end
  return send(method, path, body, account, body.idempotency_key).package
end

local INSTANCES = "/resellers/v1/packages/product-instances/"

local ADJUST_KEYS = { catalog_product_id = true, billing = true, billing_info = true, discount_code = true }

--- Upgrades, downgrades or changes the billing cycle of an instance (it keeps its id).
--- change: { catalog_product_id?, billing? | billing_info?, discount_code? }
function wix.instances.adjust(instance_id, change, opts)
  instance_id = check_guid(instance_id, "instance_id", true)
  if type(change) ~= "table" then invalid("change", "must be a table") end
  check_keys(change, ADJUST_KEYS, "change")
  local body = {
    catalog_product_id = check_guid(change.catalog_product_id, "catalog_product_id"),
    billing_info = billing_of(change.billing_info or change.billing, "billing"),
    discount_code = check_string(change.discount_code, "discount_code", 25),
  }
  if not body.catalog_product_id and not body.billing_info then
    invalid("change", "give catalog_product_id or billing")
  end
  return instance_call(instance_id, opts, "PATCH", INSTANCES .. instance_id, body, function(inst)
    inst.catalog_product_id = body.catalog_product_id or inst.catalog_product_id
    inst.billing_info = body.billing_info or inst.billing_info
  end)
end

--- Assigns an instance to a site (also moves it from another site).
function wix.instances.assign(instance_id, site_id, opts)
  instance_id = check_guid(instance_id, "instance_id", true)
  site_id = check_guid(site_id, "site_id", true)
  return instance_call(instance_id, opts, "PATCH", INSTANCES .. instance_id .. "/" .. site_id, {},
                       function(inst) inst.site_id = site_id end)
end

--- Unassigns an instance from its site (it becomes floating).
function wix.instances.unassign(instance_id, opts)
  instance_id = check_guid(instance_id, "instance_id", true)
  return instance_call(instance_id, opts, "PATCH", INSTANCES .. instance_id .. "/unassign", {},
                       function(inst) inst.site_id = nil end)
end

--- Cancels one instance; returns the package that holds it.
function wix.instances.cancel(instance_id, opts)
  instance_id = check_guid(instance_id, "instance_id", true)
  return instance_call(instance_id, opts, "DELETE", INSTANCES .. instance_id, {},
                       function(inst) inst.status = "CANCELED" end)
end

--- The instance with this id inside a package, or nil.
function wix.instance_of(pkg, instance_id)
  instance_id = type(instance_id) == "string" and instance_id:lower() or instance_id
  for _, inst in ipairs(pkg and pkg.product_instances or {}) do
    if inst.instance_id == instance_id then return inst end
  end
end

---------------------------------------------------------------------------
-- Concurrency
---------------------------------------------------------------------------

local spawn, suspend, wake, current = core.spawn, core.suspend, core.wake, core.current

--- Runs the functions at once; returns their results in order. If any failed,
--- raises the first failure (after all have finished).
function wix.all(fns)
  if type(fns) ~= "table" then invalid("fns", "must be a list of functions") end
  local n = #fns
  local results, errors = {}, {}
  if n == 0 then return results end
  for i = 1, n do
    if type(fns[i]) ~= "function" then invalid("fns[" .. i .. "]", "must be a function") end
  end
  local me = current()
  local left = n
  for i = 1, n do
    spawn(function()
      local ok, r = pcall(fns[i])
      if ok then results[i] = r else errors[i] = r end
      left = left - 1
      if left == 0 then wake(me) end
    end)
  end
  suspend()
  for i = 1, n do
    if errors[i] ~= nil then error(errors[i], 0) end
  end
  return results
end

local Task = {}
Task.__index = Task

--- Waits for the task and returns its result (raises its error).
function Task:wait()
  if not self.done then
    self.waiters[#self.waiters + 1] = current()
    suspend()
  end
  self.observed = true
  if not self.ok then error(self.value, 0) end
  return self.value
end

--- Starts fn(...) alongside the caller; returns a task with :wait().
function wix.spawn(fn, ...)
  if type(fn) ~= "function" then invalid("fn", "must be a function") end
  local t = setmetatable({ done = false, waiters = {} }, Task)
  local args = table.pack(...)
  spawn(function()
    local ok, r = pcall(fn, table.unpack(args, 1, args.n))
    t.done, t.ok, t.value = true, ok, r
    for _, w in ipairs(t.waiters) do wake(w) end
    if not ok and #t.waiters == 0 then
      -- Nobody waits: the task ends with the error, and the host logs it
      -- (turning the value to text under protection and a bound).
      error(r, 0)
    end
  end)
  return t
end

--- Waits ms milliseconds without blocking other runs.
wix.sleep = core.sleep
--- A fresh random (v4) GUID.
wix.uuid = core.uuid

--- Marks a table to be sent as a JSON array even when empty.
function wix.array(t)
  return setmetatable(t or {}, core.array_mt)
end

--- Figures of this process's calls: { calls, attempts, retries, rate_waits }.
wix.stats = core.stats

return wix

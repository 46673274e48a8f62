-- wixr.fake_wix: a recorder of wix calls for policy tests, over the real module.
--
--   local wix = fake_wix()
--   route(event, { wix = wix })          -- the policy's calls are recorded here
--   wix.calls_to("packages.create")[1].args[1]
--
-- fake_wix() is not a second implementation of the API: it resets the in-process
-- emulator (`wixr test` always runs on a fresh in-memory one) and records every
-- call of wix.packages.* and wix.instances.* made through it -- by the test
-- itself (wix.packages.create{...} to set up a subscription) or by a policy run
-- given it as opts.wix (the calls made in the policy's own sandboxed state).
-- Calls go on to the real wix module, so arguments are checked as in production
-- (GUIDs, required fields, allow and max_mutations of the hook) and answers
-- follow the emulator's rules. Two things replace a call instead:
--   wix.fail(op, fields)      the next call of op raises a wix.Error built from
--                             fields ({status, code, message}); nothing is sent
--   wix.returns(op, v)        every call of op answers v (a copy), or what the
--                             function v(args...) returns; nothing is sent
-- A replaced call is recorded and checked, but not sent: it is made under dry-run first,
-- so bad arguments fail as they would, and so does a call the hook's allow or
-- max_mutations forbids (it counts as a mutation). Operation names are
-- "packages.create", "packages.get", "instances.adjust", ...
-- fake_wix{ emulator = true } is the same as fake_wix() (every fake is on the emulator).
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

local OPS = {
  packages = { "create", "get", "query", "each", "all", "cancel", "set_external_id", "find_by_instance",
               "find_by_external_id" },
  instances = { "adjust", "assign", "unassign", "cancel" },
}
local KNOWN = {}
for group, names in pairs(OPS) do
  for _, name in ipairs(names) do KNOWN[group .. "." .. name] = true end
end

-- A replaced call is still made, under dry-run (which sends no write), so that what the
-- wix module refuses -- bad GUIDs, missing fields -- fails as it would.
local function checked(fn, ...)
  local ok_rt, rt = pcall(require, "wixr.testrt")
  if not ok_rt then return end
  rt.dry(true)
  local ok, e = pcall(fn, ...)
  rt.dry(false)
  if ok then return end
  if real.is_error(e) then
    if e.client_side then error(e, 0) end
  elseif not tostring(e):find("dry run: a mutating call", 1, true) then
    error(e, 0)
  end
end

local function check_op(op, level)
  if not KNOWN[op] then
    local list = {}
    for k in pairs(KNOWN) do list[#list + 1] = k end
    table.sort(list)
    error("fake_wix: unknown operation '" .. tostring(op) .. "' (" .. table.concat(list, ", ") .. ")", level + 1)
  end
end

function M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then error("fake_wix: options must be a table", 2) end
  for k in pairs(opts or {}) do
    if k ~= "emulator" then
      error("fake_wix: unknown option '" .. tostring(k) .. "' (the only one is emulator = true, "
            .. "and every fake runs on the emulator)", 2)
    end
  end
  local st = core.sandbox_admin("POST", "/__admin/reset")
  if st ~= 200 then
    error("fake_wix: the in-process emulator could not be reset (status " .. tostring(st) .. ")", 2)
  end

  local fake = { calls = {}, packages = {}, instances = {} }
  local failures, overrides = {}, {}

  -- Records a call; says what to do with it: "fail", fields | "value", v | "pass".
  -- Called for the test's own calls and, through wixr test, for a policy run's.
  function fake._intercept(op, args)
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
      return "fail", e
    end
    local o = overrides[op]
    if o ~= nil then
      if type(o) == "function" then return "value", o(table.unpack(args, 1, args.n)) end
      return "value", copy(o)
    end
    return "pass"
  end

  for group, names in pairs(OPS) do
    for _, name in ipairs(names) do
      local op = group .. "." .. name
      fake[group][name] = function(...)
        local kind, v = fake._intercept(op, table.pack(...))
        if kind ~= "pass" then
          checked(real[group][name], ...)
          if kind == "fail" then real.raise(v) end
          return v
        end
        return real[group][name](...)
      end
    end
  end

  --- The recorded calls of one operation.
  function fake.calls_to(op)
    check_op(op, 2)
    local out = {}
    for _, c in ipairs(fake.calls) do
      if c.op == op then out[#out + 1] = c end
    end
    return out
  end

  --- The next call of op raises a wix.Error built from fields ({status, code, message}).
  function fake.fail(op, fields)
    check_op(op, 2)
    failures[op] = failures[op] or {}
    table.insert(failures[op], fields or {})
  end

  --- op returns value (a copy each time), or what function(args...) returns.
  function fake.returns(op, value)
    check_op(op, 2)
    overrides[op] = value
  end

  -- Everything else is the real module's.
  fake.instance_of, fake.is_error, fake.Error, fake.raise = real.instance_of, real.is_error, real.Error, real.raise
  fake.all, fake.spawn, fake.sleep, fake.uuid, fake.array = real.all, real.spawn, real.sleep, real.uuid, real.array
  fake.null, fake.STATUS, fake.settings, fake.VERSION = real.null, real.STATUS, real.settings, real.VERSION
  fake.stats = real.stats
  return fake
end

return M

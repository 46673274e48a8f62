-- wixr.testing: the `wixr test` runner.
--
-- A test file (*_test.lua) declares cases:
--
--   describe("DIY orders", function()
--     before_each(function() ... end)
--     test("creates the package in the customer's sub-account", function()
--       local wix = fake_wix()
--       local result, ctx = route({ model = "DIY", ... }, { wix = wix })
--       eq(wix.calls_to("packages.create")[1].args[1].account_id, CUSTOMER)
--     end)
--   end)
--
-- Globals a test file sees, besides Lua's standard library:
--   describe(name, fn), test(name, fn) / it(name, fn), before_each(fn), after_each(fn)
--   eq(actual, expected, what?)   deep equality; the message shows expected and actual
--   neq(actual, other, what?), truthy(v, what?), falsy(v, what?), has(list_or_string, item, what?)
--   raises(fn, code_or_pattern?)  fn must fail; returns the error (a wix.Error's .code, or a
--                                 Lua pattern on the message, must match)
--   policy(path, defaults?)       loads a hook script (path relative to the test file) and
--                                 returns run(event, opts) -> result, ctx
--   fake_wix(opts?)               a recording fake of the wix module (see wixr.fake_wix)
--   wix                           the real module (on the in-process emulator in tests)
-- Plain assert works too. Compiled into the wixr binary.

local core = require "wix.core"
local fake_wix = require "wixr.fake_wix"
local real_wix = require "wix"

local M = {}

---------------------------------------------------------------------------
-- Showing values and comparing them
---------------------------------------------------------------------------

local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local ok, s = pcall(core.encode, v)
  return ok and s or tostring(v)
end

-- Returns nil when equal, else a path to the first difference.
local function diff(a, b, path, seen)
  if a == b then return nil end
  if type(a) ~= "table" or type(b) ~= "table" then return path end
  seen = seen or {}
  if seen[a] == b then return nil end
  seen[a] = b
  for k, v in pairs(a) do
    local d = diff(v, b[k], path .. "." .. tostring(k), seen)
    if d then return d end
  end
  for k, v in pairs(b) do
    if a[k] == nil and v ~= nil then return path .. "." .. tostring(k) end
  end
  return nil
end

local function fail(what, msg, level)
  error((what and (what .. ": ") or "") .. msg, level + 1)
end

local assertions = {}

function assertions.eq(actual, expected, what)
  local d = diff(actual, expected, "")
  if d then
    local where = d ~= "" and (" (first difference at " .. d:sub(2) .. ")") or ""
    fail(what, "expected " .. show(expected) .. ", got " .. show(actual) .. where, 2)
  end
end

function assertions.neq(actual, other, what)
  if not diff(actual, other, "") then fail(what, "expected something other than " .. show(other), 2) end
end

function assertions.truthy(v, what)
  if not v then fail(what, "expected a true value, got " .. show(v), 2) end
end

function assertions.falsy(v, what)
  if v then fail(what, "expected false or nil, got " .. show(v), 2) end
end

function assertions.has(container, item, what)
  if type(container) == "string" then
    if type(item) ~= "string" or not container:find(item, 1, true) then
      fail(what, show(container) .. " does not contain " .. show(item), 2)
    end
    return
  end
  for _, v in pairs(container or {}) do
    if not diff(v, item, "") then return end
  end
  fail(what, show(container) .. " does not contain " .. show(item), 2)
end

function assertions.raises(fn, expected)
  local ok, e = pcall(fn)
  if ok then fail(nil, "expected an error" .. (expected and (" (" .. tostring(expected) .. ")") or "") ..
                  ", but the call succeeded", 2) end
  if expected ~= nil then
    local code = type(e) == "table" and e.code or nil
    local text = tostring(e)
    if code ~= expected and not text:find(expected) then
      fail(nil, "expected an error matching " .. show(expected) .. ", got " .. text, 2)
    end
  end
  return e
end

---------------------------------------------------------------------------
-- Loading a policy the way a hook does
---------------------------------------------------------------------------

local SAFE = { "assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring", "type",
               "xpcall", "rawequal", "rawget", "rawset", "rawlen", "setmetatable", "getmetatable", "_VERSION", "print" }
local LIBS = { string = true, table = true, math = true, utf8 = true, coroutine = true }

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end

local function policy_env(wixmod)
  local env = {}
  for _, n in ipairs(SAFE) do env[n] = _G[n] end
  for lib in pairs(LIBS) do env[lib] = copy(_G[lib]) end
  env.string.dump = nil
  env.os = { time = os.time, clock = os.clock, date = os.date, difftime = os.difftime }
  env.require = function(name)
    if name == "wix" then return wixmod end
    return require(name)
  end
  env._G = env
  return env
end

local function merge(base, over)
  local out = copy(base or {})
  for k, v in pairs(over or {}) do out[k] = copy(v) end
  return out
end

local function make_policy(dir)
  return function(path, defaults)
    defaults = defaults or {}
    local full = path:sub(1, 1) == "/" and path or (dir .. "/" .. path)
    local f = io.open(full, "r")
    if not f then error("policy: cannot open " .. full, 2) end
    f:close()
    return function(event, opts)
      opts = opts or {}
      local wixmod = opts.wix or fake_wix.new()
      local chunk, err = loadfile(full, "t", policy_env(wixmod))
      if not chunk then error(err, 0) end
      local handler = chunk()
      if type(handler) ~= "function" then error(full .. ": the script must return its handler function", 0) end
      local logs, emitted = {}, {}
      local ctx = {
        options = merge(defaults.options, opts.options),
        dry_run = opts.dry_run or false,
        event = opts.event or { id = "test-event", name = defaults.event or "test", depth = 0 },
        hook = "test",
        logs = logs,
        emitted = emitted,
      }
      ctx.log = function(level, msg, fields) logs[#logs + 1] = { level = level, msg = msg, fields = fields } end
      ctx.emit = function(name, data) emitted[#emitted + 1] = { name = name, data = data } end
      local result = handler(copy(event or {}), ctx)
      return result, ctx
    end
  end
end

---------------------------------------------------------------------------
-- Running files
---------------------------------------------------------------------------

-- The message of a failure, with where it happened in the test file.
local function describe_error(e)
  if real_wix.is_error(e) then return tostring(e) end
  if type(e) == "table" then return show(e) end
  return tostring(e)
end

local function run_file(path, opts, totals)
  local dir = path:match("^(.*)/[^/]*$") or "."
  local cases = {}
  local stack = {} -- enclosing describes: { name, before = {}, after = {} }
  local env = setmetatable({}, { __index = _G })
  for k, v in pairs(assertions) do env[k] = v end
  env.policy = make_policy(dir)
  env.fake_wix = fake_wix.new
  env.wix = real_wix
  env.describe = function(name, fn)
    stack[#stack + 1] = { name = name, before = {}, after = {} }
    fn()
    stack[#stack] = nil
  end
  local function add(name, fn)
    local names, before, after = {}, {}, {}
    for _, d in ipairs(stack) do
      names[#names + 1] = d.name
      for _, b in ipairs(d.before) do before[#before + 1] = b end
      for _, a in ipairs(d.after) do table.insert(after, 1, a) end
    end
    names[#names + 1] = name
    cases[#cases + 1] = { name = table.concat(names, " > "), fn = fn, before = before, after = after }
  end
  env.test, env.it = add, add
  env.before_each = function(fn)
    local top = stack[#stack]
    if not top then error("before_each must be inside describe", 2) end
    top.before[#top.before + 1] = fn
  end
  env.after_each = function(fn)
    local top = stack[#stack]
    if not top then error("after_each must be inside describe", 2) end
    top.after[#top.after + 1] = fn
  end

  local chunk, err = loadfile(path, "t", env)
  local ok = chunk ~= nil
  if ok then ok, err = pcall(chunk) end
  if not ok then
    totals.failed = totals.failed + 1
    print("FAIL " .. path .. ": " .. describe_error(err))
    return
  end
  for _, c in ipairs(cases) do
    if not opts.filter or c.name:find(opts.filter, 1, true) then
      local t0 = os.clock()
      local passed, e = pcall(function()
        for _, b in ipairs(c.before) do b() end
        c.fn()
      end)
      for _, a in ipairs(c.after) do
        local aok, ae = pcall(a)
        if passed and not aok then passed, e = false, ae end
      end
      if passed then
        totals.passed = totals.passed + 1
        if opts.verbose ~= false then
          print(string.format("ok   %s: %s (%.0f ms)", path, c.name, (os.clock() - t0) * 1000))
        end
      else
        totals.failed = totals.failed + 1
        print(string.format("FAIL %s: %s\n     %s", path, c.name, describe_error(e)))
      end
    end
  end
end

--- Runs the test files; prints each case and "N passed, N failed"; returns the failed count.
function M.run(files, opts)
  opts = opts or {}
  local totals = { passed = 0, failed = 0 }
  for _, path in ipairs(files) do
    run_file(path, opts, totals)
  end
  print(string.format("%d passed, %d failed", totals.passed, totals.failed))
  return totals.failed, totals.passed
end

M.assertions = assertions
return M

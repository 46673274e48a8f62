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
--   policy(path, spec?)           loads a hook script (path relative to the test file) the way
--                                 `wixr fire` does: its own sandboxed state, limits, allow and
--                                 max_mutations; spec = {event, options, allow, max_mutations,
--                                 limits}. Returns run(event, opts) -> result, ctx; opts =
--                                 {wix = fake, options = {...} (merged over spec's), event = {id, name}}.
--                                 A failed run raises what `wixr fire` reports (a wix.Error stays one).
--   hook(event, n?, {config = FILE}?)  the n-th hook (default 1) of event exactly as a configuration
--                                 file has it (default: the one `wixr fire` would find); the same run()
--   fake_wix()                    a recorder of the calls a policy makes, over the real wix module
--                                 on a fresh in-process emulator (see wixr.fake_wix)
--   wix                           the real module (on the in-process emulator in tests)
-- Each case, and each file's top level, has a time limit (wixr test --timeout, default 5 s).
-- Plain assert works too. Compiled into the wixr binary.

local core = require "wix.core"
local fake_wix = require "wixr.fake_wix"
local real_wix = require "wix"
local rt = require "wixr.testrt"

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
-- Loading a policy the way a hook does: through the same loader, sandbox,
-- limits, permissions and result checks as `wixr fire` (see cmd_test.c)
---------------------------------------------------------------------------

local function copy(v)
  if type(v) ~= "table" then return v end
  local out = {}
  for k, x in pairs(v) do out[k] = copy(x) end
  return out
end

local function merge(base, over)
  local out = copy(base or {})
  for k, v in pairs(over or {}) do out[k] = copy(v) end
  return out
end

local function check_keys(t, allowed, what, level)
  if t == nil then return end
  if type(t) ~= "table" then error(what .. ": expected a table, got " .. type(t), level + 1) end
  for k in pairs(t) do
    if not allowed[k] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      table.sort(names)
      error(what .. ": unknown key '" .. tostring(k) .. "' (" .. table.concat(names, ", ") .. ")", level + 1)
    end
  end
end

-- The text of a YAML reader's error without its position in the generated text.
local function bare(msg)
  return (tostring(msg):gsub("^[^\n]-:%d+:%d+: ", ""))
end

local SPEC_KEYS = { event = true, options = true, allow = true, max_mutations = true, limits = true }
local CALL_KEYS = { wix = true, options = true, event = true }
local calls = 0

-- A loaded hook as a function: run(event, opts) -> result, ctx. Each call is a
-- run of the hook (hook_start), as `wixr fire` makes one.
local function callable(handle)
  local info = rt.info(handle)
  local base = info.options and core.decode(info.options) or {}
  return function(event, opts)
    check_keys(opts, CALL_KEYS, "policy call options", 2)
    opts = opts or {}
    local options, options_json = base, nil
    if opts.options ~= nil then
      options = merge(base, opts.options)
      options_json = core.encode(options)
    end
    calls = calls + 1
    local ev = opts.event or {}
    local name, id = ev.name or info.event, ev.id or ("test-event-" .. calls)
    local out = rt.run(handle, core.encode(event or {}), name, id, options_json, opts.wix)
    local emitted = {}
    for i, e in ipairs(core.decode(out.emitted)) do emitted[i] = { name = e.event, data = e.data } end
    local ctx = { options = copy(options), dry_run = false, event = { id = id, name = name, depth = 0 },
                  hook = info.hook, logs = core.decode(out.logs), emitted = emitted }
    if not out.ok then
      if out.wix_error then
        local e = setmetatable(core.decode(out.wix_error), real_wix.Error)
        e.run_error = out.error
        error(e, 0)
      end
      error(out.error, 0)
    end
    local result = nil
    if out.result and out.result ~= "null" then result = core.decode(out.result) end
    return result, ctx
  end
end

local function make_policy(dir)
  return function(path, spec)
    if type(path) ~= "string" then error("policy: the script's path is required", 2) end
    check_keys(spec, SPEC_KEYS, "policy(" .. path .. ")", 2)
    spec = spec or {}
    local event = spec.event or "test"
    local entry = { script = path, allow = spec.allow, max_mutations = spec.max_mutations, limits = spec.limits }
    if spec.options ~= nil and next(spec.options) ~= nil then entry.options = spec.options end
    local ok, text = pcall(core.encode, { hooks = { [event] = { entry } } })
    if not ok then error("policy(" .. path .. "): " .. tostring(text), 2) end
    -- the YAML reader checks it as it checks wixr.yaml; paths start at the test file's folder
    local loaded, handle = pcall(rt.load_text, dir .. "/policy", text, event)
    if not loaded then error("policy(" .. path .. "): " .. bare(handle), 2) end
    return callable(handle)
  end
end

-- hook(event, n?, {config = FILE}?): the n-th hook of event exactly as the
-- configuration file (relative to the test file; none: the file `wixr fire`
-- would find) has it: script, options, allow, max_mutations, limits.
local function make_hook(dir)
  return function(event, index, opts)
    if type(index) == "table" then index, opts = nil, index end
    if type(event) ~= "string" then error("hook: the event name is required", 2) end
    if index ~= nil and math.type(index) ~= "integer" then error("hook(" .. event .. "): n must be a whole number", 2) end
    check_keys(opts, { config = true }, "hook(" .. event .. ")", 2)
    local config = opts and opts.config
    if config ~= nil and type(config) ~= "string" then error("hook(" .. event .. "): config must be a path", 2) end
    if config and config:sub(1, 1) ~= "/" then config = dir .. "/" .. config end
    local ok, handle = pcall(rt.load_config, config, event, index or 1)
    if not ok then error("hook(" .. event .. "): " .. tostring(handle), 2) end
    return callable(handle)
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
  env.hook = make_hook(dir)
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

  -- The file's top level and each case run as tasks of their own, each with
  -- the time limit (--timeout): one that never ends fails alone.
  local chunk, err = loadfile(path, "t", env)
  local ok = chunk ~= nil
  if ok then ok, err = rt.case(chunk, opts.timeout) end
  if ok and #cases == 0 then
    ok, err = false, "no tests (declare them with test(name, fn) or it(name, fn))"
  end
  if not ok then
    totals.failed = totals.failed + 1
    print("FAIL " .. path .. ": " .. describe_error(err))
    rt.release()
    return
  end
  for _, c in ipairs(cases) do
    if not opts.filter or c.name:find(opts.filter, 1, true) then
      local t0 = os.clock()
      local passed, e = rt.case(function()
        for _, b in ipairs(c.before) do b() end
        c.fn()
      end, opts.timeout)
      for _, a in ipairs(c.after) do
        local aok, ae = rt.case(a, opts.timeout)
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
  rt.release()
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

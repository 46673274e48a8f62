-- policy() and hook() load a script through the hook sandbox of `wixr fire`:
-- what the sandbox removes fails, limits end a run, the result is checked, and
-- allow, max_mutations, options and limits apply as configured.
local JANE = "33333333-4444-4555-8666-777777777777"
local LIGHT = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01"
local OPTIONS = { account_id = JANE, product = LIGHT, label = "from the spec" }

describe("the sandbox", function()
  local forbidden = policy("policies/forbidden.lua")

  test("io is not there", function()
    raises(function() forbidden({ use = "io" }) end, "io")
  end)

  test("os.execute, debug and string.dump are not there either", function()
    raises(function() forbidden({ use = "os.execute" }) end, "execute")
    raises(function() forbidden({ use = "debug" }) end, "debug")
    raises(function() forbidden({ use = "string.dump" }) end, "dump")
  end)

  test("require reaches only wix and lua_paths modules, not the standard library", function()
    raises(function() forbidden({ use = "require io" }) end, "module 'io' not found")
  end)

  test("no __gc finalizers, and collectgarbage only counts", function()
    raises(function() forbidden({ use = "__gc" }) end, "__gc finalizers are not allowed")
    raises(function() forbidden({ use = "collectgarbage" }) end, "collectgarbage")
  end)

  test("the error names the hook, as wixr fire reports it", function()
    local e = raises(function() forbidden({ use = "io" }) end)
    eq(e:find("test (forbidden.lua): ", 1, true), 1, e)
  end)

  test("a script that uses nothing forbidden runs", function()
    eq(forbidden({ use = "none" }), { used = "nothing" })
  end)
end)

describe("limits", function()
  test("an endless loop is ended by the instruction limit", function()
    local forever = policy("policies/forever.lua", { limits = { instructions = 100000 } })
    raises(function() forever({}) end, "instruction limit exceeded %(100000%)")
  end)

  test("a pcall inside the loop does not swallow the limit", function()
    local forever = policy("policies/forever.lua", { limits = { instructions = 100000 } })
    raises(function() forever({ swallow = true }) end, "instruction limit exceeded")
  end)

  test("with a large instruction budget the wall limit ends it", function()
    local forever = policy("policies/forever.lua", { limits = { instructions = 100000000000, wall_ms = 50 } })
    raises(function() forever({}) end, "wall time limit exceeded %(50 ms%)")
  end)

  test("a run past the memory cap fails; the next run gets a fresh state, still recorded", function()
    local hog = policy("policies/hog.lua", { limits = { memory_mb = 8 } })
    raises(function() hog({ hog = true }) end, "memory limit exceeded %(8 MB%)")
    local result, ctx = hog({})
    eq(result, { fine = true })
    eq(ctx.logs[1].msg, "fine", "ctx.log is kept as before")
  end)

  test("unknown limits are refused like in wixr.yaml", function()
    raises(function() policy("policies/forever.lua", { limits = { instrs = 1 } }) end, "instrs")
  end)
end)

describe("the result check", function()
  local odd = policy("policies/returns_function.lua")

  test("a handler returning a function fails", function()
    raises(function() odd({}) end, "the handler returned a value that is not data")
  end)

  test("so does one returning a coroutine inside a table", function()
    raises(function() odd({ coroutine = true }) end, "not data")
  end)
end)

describe("allow and max_mutations", function()
  test("an operation left out of allow is refused before it is sent", function()
    local maker = policy("policies/maker.lua", { options = OPTIONS, allow = { "read" } })
    local wix = fake_wix()
    raises(function() maker({}, { wix = wix }) end, "operation 'create' is not allowed for this hook %(allow: get, query%)")
    eq(#wix.packages.find_by_external_id("made-1", { account_id = JANE }), 0, "nothing was created")
  end)

  test("max_mutations caps the mutating calls of one run", function()
    local maker = policy("policies/maker.lua", { options = OPTIONS, allow = { "create" }, max_mutations = 2 })
    eq(#maker({ count = 2 }).made, 2)
    raises(function() maker({ count = 3 }) end, "more than 2 mutating calls in one run %(max_mutations%)")
  end)

  test("an unknown operation in allow is an error naming it", function()
    raises(function() policy("policies/maker.lua", { allow = { "craete" } }) end, "unknown operation 'craete'")
  end)
end)

describe("a hook as configured", function()
  local maker = hook("maker.made", 1, { config = "policies/wixr.yaml" })

  test("its options are the YAML's", function()
    local result, ctx = maker({})
    eq(result.label, "from the YAML")
    eq(ctx.options.account_id, JANE)
    eq(ctx.hook, "maker.made (maker.lua)")
    eq(ctx.logs[1].msg, "made")
    eq(ctx.logs[1].fields, { count = 1 })
  end)

  test("a call's options are merged over them", function()
    eq(maker({}, { options = { label = "from the call" } }).label, "from the call")
    eq(maker({}).label, "from the YAML", "the next run has the YAML's again")
  end)

  test("its allow applies: reading is not allowed", function()
    raises(function() maker({ read = true }) end, "operation 'get' is not allowed for this hook %(allow: create%)")
  end)

  test("its max_mutations applies: one package per run", function()
    raises(function() maker({ count = 2 }) end, "more than 1 mutating call in one run")
  end)

  test("its limits apply", function()
    local forever = hook("maker.made", 2, { config = "policies/wixr.yaml" })
    raises(function() forever({}) end, "instruction limit exceeded %(200000%)")
  end)

  test("emitted events are kept on ctx", function()
    local _, ctx = maker({ emit = true })
    eq(ctx.emitted, { { name = "maker.done", data = { made = 1 } } })
  end)

  test("a hook that is not there is an error naming the event", function()
    raises(function() hook("maker.made", 3, { config = "policies/wixr.yaml" }) end, "event 'maker.made' has 2 hooks, not 3")
    raises(function() hook("nothing.here", { config = "policies/wixr.yaml" }) end, "no hook for event 'nothing.here'")
  end)
end)

describe("fake_wix behind a policy", function()
  test("the policy's calls are recorded and go to the emulator", function()
    local maker = policy("policies/maker.lua", { options = OPTIONS })
    local wix = fake_wix()
    local result = maker({ order = "rec" }, { wix = wix })
    local calls = wix.calls_to("packages.create")
    eq(#calls, 1)
    eq(calls[1].args[1].external_id, "rec-1")
    eq(wix.packages.get(result.made[1], { account_id = JANE }).external_id, "rec-1")
  end)

  test("an injected failure ends the run with a wix.Error", function()
    local maker = policy("policies/maker.lua", { options = OPTIONS })
    local wix = fake_wix()
    wix.fail("packages.create", { status = 503, code = "UNAVAILABLE", message = "try later" })
    local e = raises(function() maker({}, { wix = wix }) end, "UNAVAILABLE")
    truthy(wix.is_error(e), "a wix.Error")
    eq(e.status, 503)
    has(e.run_error, "maker.lua:9:")
  end)

  test("a replaced call still counts: its arguments, allow and max_mutations are checked", function()
    local wix = fake_wix()
    wix.returns("packages.create", { id = "made-by-the-test" })
    local bad = policy("policies/maker.lua", { options = { account_id = "not-a-guid", product = LIGHT } })
    raises(function() bad({}, { wix = wix }) end, "INVALID_ARGUMENT")
    local read_only = policy("policies/maker.lua", { options = OPTIONS, allow = { "read" } })
    raises(function() read_only({}, { wix = wix }) end, "operation 'create' is not allowed")
    local one = policy("policies/maker.lua", { options = OPTIONS, max_mutations = 1 })
    eq(one({}, { wix = wix }).made, { "made-by-the-test" })
    raises(function() one({ count = 2 }, { wix = wix }) end, "more than 1 mutating call")
    eq(#wix.packages.find_by_external_id("made-1", { account_id = JANE }), 0, "nothing was sent")
  end)

  test("arguments are checked by the wix module: a bad GUID is refused", function()
    local maker = policy("policies/maker.lua", { options = { account_id = "not-a-guid", product = LIGHT } })
    local wix = fake_wix()
    raises(function() maker({}, { wix = wix }) end, "INVALID_ARGUMENT")
    raises(function() wix.packages.get("nope") end, "INVALID_ARGUMENT")
    eq(#wix.calls, 2, "both were recorded")
  end)
end)

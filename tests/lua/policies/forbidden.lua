-- Reaches for what the hook sandbox removes (tests/lua/sandbox_test.lua):
-- event.use names it; under `wixr fire` every one of them fails.
return function(event, ctx)
  if event.use == "io" then
    local f = io.open("/etc/hostname", "r")
    return { read = f ~= nil }
  elseif event.use == "os.execute" then
    return { status = os.execute("true") }
  elseif event.use == "debug" then
    return { info = debug.getinfo(1) ~= nil }
  elseif event.use == "string.dump" then
    return { size = #string.dump(function() end) }
  elseif event.use == "require io" then
    return { read = require("io").open("/etc/hostname", "r") ~= nil }
  elseif event.use == "__gc" then
    setmetatable({}, { __gc = function() end })
    return { finalizer = true }
  elseif event.use == "collectgarbage" then
    collectgarbage("collect")
    return { collected = true }
  end
  return { used = "nothing" }
end

-- wixr.runner: how `wixr run` calls a script. The chunk runs inside a
-- scheduler task; if it returns a function, that is the handler and is
-- called as handler(event, ctx). Compiled into the wixr binary.

local core = require "wix.core"

local function make_ctx(info)
  return {
    dry_run = info.dry_run,
    event = { id = info.id, name = info.name },
    options = info.options or {},
    log = function(level, message, fields)
      core.log(level, tostring(message), fields)
    end,
  }
end

return function(chunk, event, info)
  local r = table.pack(chunk())
  if type(r[1]) == "function" then
    return r[1](event, make_ctx(info))
  end
  return table.unpack(r, 1, r.n)
end

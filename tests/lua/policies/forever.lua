-- Never returns (tests/lua/sandbox_test.lua): only a limit ends it.
return function(event, ctx)
  local n = 0
  while true do
    n = n + 1
    if event.swallow then pcall(function() n = n + 1 end) end
  end
end

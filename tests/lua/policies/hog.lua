-- Breaks its memory cap when event.hog is set (tests/lua/sandbox_test.lua); logs otherwise.
return function(event, ctx)
  if event.hog then
    local t = {}
    for i = 1, 1e8 do t[i] = i end
  end
  ctx.log("info", "fine")
  return { fine = true }
end

-- Makes event.count packages of ctx.options.product in ctx.options.account_id, then
-- reads the first back when event.read is set (tests/lua/sandbox_test.lua).
local wix = require "wix"

return function(event, ctx)
  local o = ctx.options
  local made = {}
  for i = 1, event.count or 1 do
    local pkg = wix.packages.create {
      account_id = o.account_id, external_id = (event.order or "made") .. "-" .. i,
      products = { { catalog_product_id = o.product, country_code = "DE", billing = { unit = "YEAR", count = 1 } } },
    }
    made[#made + 1] = pkg.id
  end
  if event.read then wix.packages.get(made[1], { account_id = o.account_id }) end
  ctx.log("info", "made", { count = #made })
  if event.emit then ctx.emit("maker.done", { made = #made }) end
  return { made = made, label = o.label }
end

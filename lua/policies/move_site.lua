---@option plans table<string, string>  plan name -> Wix catalog product id
-- move_site.lua -- event "site.moved": reassigns services to another site with
-- wix.instances.assign (resellers-api.md §5 B; assign moves an assigned instance directly,
-- and assigns a floating one).
--
-- Which services move:
--   instance_id                      that one service
--   subscription_id + plan           the subscription's live service on that plan
--   subscription_id                  every live service of the subscription
-- A service already on the target site is reported under unchanged, so the event can be
-- delivered again. When a move fails, Wix may have left the service on its old site or
-- floating: the policy reads the package again, logs where the service is, and raises the
-- wix.Error (earlier moves of the same event stay done; a retry skips them).
--
-- Event data: { to_site_id = GUID, instance_id = GUID?, subscription_id = "ord-1001"?, plan = "core"? }
-- Options: plans (plan name -> catalog product id).
-- Returns: { to_site_id, moved = { {instance_id, plan, from_site_id} }, unchanged = {instance ids} }

local wix = require "wix"

-- The order services move in: a domain needs a Premium plan on its site (else Wix answers
-- PRODUCT_NOT_SUPPORTED_ON_SITE), and a plan leaving a site disconnects the domain there,
-- so plans go first. Plans not listed move last.
local MOVE_ORDER = { light = 1, core = 1, business = 1, elite = 1, domain = 2 }

return function(event, ctx)
  local plans = ctx.options.plans or error("options.plans (plan name -> catalog product id) is missing", 0)
  local label = event.subscription_id or event.instance_id or "?"
  local function bad(field, why) error(string.format("site.moved %s: %s %s", label, field, why), 0) end
  local to = event.to_site_id or bad("to_site_id", "is required")
  if event.instance_id == nil and event.subscription_id == nil then
    bad("subscription_id", "or instance_id is required")
  end
  if event.plan ~= nil and not plans[event.plan] then
    bad("plan", string.format("%q is not a plan", tostring(event.plan)))
  end

  local packages
  if event.instance_id then
    packages = { wix.packages.find_by_instance(event.instance_id) or bad("instance_id", "matches no service") }
  else
    packages = wix.packages.find_by_external_id(event.subscription_id)
    if #packages == 0 then bad("subscription_id", "matches no package (no package has this external id)") end
  end
  local plan_of, services = {}, {}
  for name, id in pairs(plans) do plan_of[id] = name end
  for _, pkg in ipairs(packages) do
    for _, inst in ipairs(pkg.product_instances) do
      local wanted = (event.instance_id == nil or inst.instance_id == event.instance_id)
        and (event.plan == nil or inst.catalog_product_id == plans[event.plan])
      if wanted and inst.status ~= "CANCELED" and inst.status ~= "FAILED" then
        services[#services + 1] = { inst = inst, pkg = pkg, plan = plan_of[inst.catalog_product_id] }
      end
    end
  end
  if #services == 0 then
    bad(event.instance_id and "instance_id" or "subscription_id", "matches no live service to move")
  end
  table.sort(services, function(a, b) return (MOVE_ORDER[a.plan] or 99) < (MOVE_ORDER[b.plan] or 99) end)

  local result = { to_site_id = to, moved = wix.array(), unchanged = wix.array() }
  for _, s in ipairs(services) do
    local id = s.inst.instance_id
    if s.inst.site_id == to then
      result.unchanged[#result.unchanged + 1] = id
    else
      local key = ctx.event.id and ("move:" .. ctx.event.id .. ":" .. id)
      local ok, err = pcall(wix.instances.assign, id, to, { account_id = s.pkg.account_id, idempotency_key = key })
      if not ok then
        local read, pkg = pcall(wix.packages.get, s.pkg.id, { account_id = s.pkg.account_id })
        local now = read and wix.instance_of(pkg, id)
        ctx.log("error", "move failed", { instance_id = id, to_site_id = to, error = tostring(err),
                                          now_on = not now and "unknown" or now.site_id or "floating" })
        error(err, 0)
      end
      result.moved[#result.moved + 1] = { instance_id = id, plan = s.plan, from_site_id = s.inst.site_id }
    end
  end
  ctx.log("info", "services moved", { to_site_id = to, moved = #result.moved, unchanged = #result.unchanged })
  return result
end

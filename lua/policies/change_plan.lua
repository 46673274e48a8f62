---@option plans table<string, string>  plan name -> Wix catalog product id
---@option allow_downgrade boolean  allow moving to a cheaper plan
-- change_plan.lua -- event "subscription.changed": upgrades, downgrades or changes the
-- billing cycle of one service with wix.instances.adjust (the instance keeps its id).
--
-- Outcomes. A decision of this policy is a result, never an error:
--   { changed = true,  instance_id, from, to, billing }    adjusted
--   { changed = false, instance_id, reason = "..." }       already on the target: nothing to do
--   { changed = false, instance_id, refused = "..." }      the rules below say no, or the
--                                                          subscription has no live service left
-- Bad input (an unknown plan, no such subscription or service) raises an error naming the
-- field, and a call Wix refuses raises its wix.Error.
--
-- Event data:
--   { subscription_id = "ord-1001",  -- the order id the subscription was created with
--     to_plan = "business",          -- the new plan, and/or
--     billing = "monthly",           -- the new billing term (at least one of the two)
--     from_plan = "core" }           -- which service (or instance_id = GUID); needed only when
--                                    -- the subscription holds several on TRANSITIONS' plans
-- Options: plans (plan name -> catalog product id), allow_downgrade (default false).

local wix = require "wix"

-- Allowed moves: from plan -> { to plan = "up" | "down" }. Only plans of one product type
-- belong together (Wix refuses the rest with INCOMPATIBLE_PRODUCT); a move not listed here
-- is refused, and so is every "down" unless options.allow_downgrade is true.
local TRANSITIONS = {
  light = { core = "up", business = "up", elite = "up" },
  core = { light = "down", business = "up", elite = "up" },
  business = { light = "down", core = "down", elite = "up" },
  elite = { business = "down" }, -- Elite customers step down one plan at a time
}

-- The reseller's billing terms and the Wix billing cycles they stand for.
local BILLING = {
  monthly = { unit = "MONTH", count = 1 },
  yearly = { unit = "YEAR", count = 1 },
  ["2-years"] = { unit = "YEAR", count = 2 },
}

local function cycle_name(billing_info)
  local d = type(billing_info) == "table" and billing_info.cycle_duration or {}
  for name, c in pairs(BILLING) do
    if c.unit == d.unit and c.count == d.count then return name end
  end
  return billing_info and billing_info.type or "none"
end

-- The service to change: the one with event.instance_id; else the one on from_plan (or,
-- when none is left, the one already on to_plan: a repeated event); else the only one on
-- a plan that TRANSITIONS knows.
local function pick(services, event)
  local on_from, on_to, changeable = {}, {}, {}
  for _, s in ipairs(services) do
    if event.instance_id and s.instance_id == event.instance_id then return s end
    if s.plan and s.plan == event.from_plan then on_from[#on_from + 1] = s end
    if s.plan and s.plan == event.to_plan then on_to[#on_to + 1] = s end
    if s.plan and TRANSITIONS[s.plan] then changeable[#changeable + 1] = s end
  end
  if event.instance_id then return nil end
  local list = changeable
  if event.from_plan then list = #on_from > 0 and on_from or on_to end
  if #list > 1 then
    error("subscription " .. event.subscription_id .. ": several services could change; give from_plan or instance_id",
          0)
  end
  return list[1]
end

return function(event, ctx)
  local plans = ctx.options.plans or error("options.plans (plan name -> catalog product id) is missing", 0)
  local sub = event.subscription_id or error("subscription_id is required", 0)
  local function bad(field, why) error(string.format("subscription %s: %s %s", sub, field, why), 0) end
  if event.to_plan == nil and event.billing == nil then bad("to_plan", "or billing is required") end
  for _, field in ipairs { "to_plan", "from_plan" } do
    if event[field] ~= nil and not plans[event[field]] then
      bad(field, string.format("%q is not a plan", tostring(event[field])))
    end
  end
  if event.billing ~= nil and not BILLING[event.billing] then
    bad("billing", string.format("%q is not a billing term", tostring(event.billing)))
  end

  local plan_of, services = {}, {}
  for name, id in pairs(plans) do plan_of[id] = name end
  local packages = wix.packages.find_by_external_id(sub)
  if #packages == 0 then bad("subscription_id", "matches no package (no package has this external id)") end
  for _, pkg in ipairs(packages) do
    for _, inst in ipairs(pkg.product_instances) do
      if inst.status ~= "CANCELED" and inst.status ~= "FAILED" then
        services[#services + 1] = { instance_id = inst.instance_id, plan = plan_of[inst.catalog_product_id],
                                    billing = cycle_name(inst.billing_info), account_id = pkg.account_id }
      end
    end
  end
  if #services == 0 then
    return { changed = false, refused = "subscription " .. sub .. " has no live service (canceled)" }
  end
  local s = pick(services, event)
  local which = event.instance_id and "instance_id" or event.from_plan and "from_plan" or "subscription_id"
  if not s then bad(which, "matches no live service") end
  if not s.plan then bad(which, "names a service whose product is not in options.plans") end

  local to, billing = event.to_plan or s.plan, event.billing or s.billing
  local result = { changed = false, instance_id = s.instance_id, from = s.plan, to = to, billing = billing }
  local move = to ~= s.plan and (TRANSITIONS[s.plan] or {})[to]
  if to == s.plan and billing == s.billing then
    result.reason = "already on " .. to .. " (" .. billing .. ")"
  elseif to ~= s.plan and not move then
    result.refused = "no move from " .. tostring(s.plan) .. " to " .. to .. " in the transitions table"
  elseif move == "down" and ctx.options.allow_downgrade ~= true then
    result.refused = "downgrade from " .. s.plan .. " to " .. to .. " (options.allow_downgrade is off)"
  else
    wix.instances.adjust(s.instance_id, {
      catalog_product_id = to ~= s.plan and plans[to] or nil,
      billing = billing ~= s.billing and BILLING[billing] or nil,
    }, { account_id = s.account_id, idempotency_key = ctx.event.id and ("change:" .. ctx.event.id) })
    result.changed = true
  end
  ctx.log("info", result.changed and "plan changed" or "plan unchanged",
          { subscription = sub, instance_id = s.instance_id, from = s.plan, to = to, billing = billing })
  return result
end

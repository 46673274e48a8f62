---@option plans table<string, string>  plan name -> Wix catalog product id
---@option cancel_addons boolean  cancelling a plan cancels the voucher add-ons that came with it
-- cancel_subscription.lua -- event "subscription.canceled": cancels one service of a
-- subscription, or the whole subscription (every package created with its order id as
-- external id, found with wix.packages.find_by_external_id).
--
-- Idempotent: a service that is already CANCELED is reported under already_canceled, not
-- raised, so a cancellation delivered twice ends the same way as one delivered once.
--
-- Event data:
--   { subscription_id = "ord-1002",    -- the order id the subscription was created with
--     instance_id = GUID,              -- cancel this one service, or
--     plan = "domain" }                -- the live service on this plan; neither: everything
-- Options: plans (plan name -> catalog product id), cancel_addons (default: CANCEL_ADDONS).
-- Returns: { canceled = {instance ids}, already_canceled = {instance ids} }. Bad input raises
-- an error naming the field; a call Wix refuses raises its wix.Error.

local wix = require "wix"

-- A voucher add-on (the free domain of order.voucher) lives only as long as the plan it came
-- with: cancelling that plan also cancels the live services whose
-- reference_product_instance_id is the plan's instance.
local CANCEL_ADDONS = true

local function is_canceled(inst) return inst.status == "CANCELED" end

-- The instances of the packages that match, each told its package's account: mutations
-- are sent as the account that owns the service.
local function instances(packages, match)
  local out = {}
  for _, pkg in ipairs(packages) do
    for _, inst in ipairs(pkg.product_instances) do
      inst.account_id = pkg.account_id
      if match(inst) then out[#out + 1] = inst end
    end
  end
  return out
end

return function(event, ctx)
  local plans = ctx.options.plans or error("options.plans (plan name -> catalog product id) is missing", 0)
  local sub = event.subscription_id or error("subscription_id is required", 0)
  local function bad(field, why) error(string.format("subscription %s: %s %s", sub, field, why), 0) end
  if event.plan ~= nil and not plans[event.plan] then
    bad("plan", string.format("%q is not a plan", tostring(event.plan)))
  end

  local packages = wix.packages.find_by_external_id(sub)
  if #packages == 0 then bad("subscription_id", "matches no package (no package has this external id)") end
  local result = { canceled = wix.array(), already_canceled = wix.array() }
  local function report(inst, canceled_now)
    local list = canceled_now and result.canceled or result.already_canceled
    list[#list + 1] = inst.instance_id
  end

  if event.instance_id == nil and event.plan == nil then
    -- The whole subscription: each package at once.
    for _, pkg in ipairs(packages) do
      local live = {}
      for _, inst in ipairs(pkg.product_instances) do
        if is_canceled(inst) then report(inst, false) else live[#live + 1] = inst end
      end
      if #live > 0 then
        wix.packages.cancel(pkg.id, { account_id = pkg.account_id, idempotency_key = "cancel:" .. pkg.id })
        for _, inst in ipairs(live) do report(inst, true) end
      end
    end
  else
    -- One service (a live one first, when several are on the plan), and, with cancel_addons,
    -- the add-ons that came with it.
    local named = instances(packages, function(inst)
      return inst.instance_id == event.instance_id
        or (event.instance_id == nil and inst.catalog_product_id == plans[event.plan])
    end)
    table.sort(named, function(a, b) return not is_canceled(a) and is_canceled(b) end)
    local target = named[1]
    if not target then
      bad(event.instance_id and "instance_id" or "plan", "matches no service of this subscription")
    end
    local with_addons = ctx.options.cancel_addons
    if with_addons == nil then with_addons = CANCEL_ADDONS end
    local addons = with_addons and instances(packages, function(inst)
      return inst.reference_product_instance_id == target.instance_id
    end) or {}
    for _, inst in ipairs { target, table.unpack(addons) } do
      if is_canceled(inst) then
        report(inst, false)
      else
        wix.instances.cancel(inst.instance_id,
                             { account_id = inst.account_id, idempotency_key = "cancel:" .. inst.instance_id })
        report(inst, true)
      end
    end
  end
  ctx.log("info", "subscription canceled", { subscription = sub, canceled = #result.canceled,
                                            already_canceled = #result.already_canceled })
  return result
end

---@option plans table<string, string>  plan name -> Wix catalog product id
---@option country_code string  when the plan's instance carries none
-- voucher_addon.lua -- event "order.voucher": redeems a voucher, an add-on that Wix does not
-- charge for because it comes with a plan the customer bought (resellers-api.md §5 E): a
-- second package holding the add-on, whose reference_product_instance_id is the plan's
-- instance. It goes to the same account and site as the plan, under the same external id,
-- so cancel_subscription finds it with the rest of the subscription.
--
-- Outcomes. A decision of this policy is a result, never an error:
--   { created = true,  package_id, instance_id, reference_instance_id, addon }
--   { created = false, reference_instance_id, reason = "already redeemed ..." } (idempotent)
--   { created = false, refused = "..." }       the subscription does not qualify
-- Bad input raises an error naming the field; a call Wix refuses raises its wix.Error
-- (except REFERENCE_PRODUCT_INSTANCE_ALREADY_USED, which is "already redeemed").
--
-- Event data: { subscription_id = "ord-1001", voucher = "free-domain", country_code = "DE"? }
-- Options: plans (plan name -> catalog product id), country_code (when the plan has none).

local wix = require "wix"

-- Vouchers: the add-on each gives and its billing, the plans that earn it and the billing
-- units they must be paid by. A reference must be PENDING or ENABLED, and serves only once.
local VOUCHERS = {
  ["free-domain"] = {
    addon = "domain", billing = { unit = "YEAR", count = 1 },
    with = { core = true, business = true, elite = true }, units = { YEAR = true },
  },
}

local REFERENCE_STATUS = { PENDING = true, ENABLED = true }

return function(event, ctx)
  local plans = ctx.options.plans or error("options.plans (plan name -> catalog product id) is missing", 0)
  local sub = event.subscription_id or error("subscription_id is required", 0)
  local function bad(field, why) error(string.format("subscription %s: %s %s", sub, field, why), 0) end
  local voucher = VOUCHERS[event.voucher]
  if not voucher then bad("voucher", string.format("%q is not a voucher", tostring(event.voucher))) end
  local addon_id = plans[voucher.addon] or bad("options.plans", "has no plan " .. voucher.addon)

  local packages = wix.packages.find_by_external_id(sub)
  if #packages == 0 then bad("subscription_id", "matches no package (no package has this external id)") end
  local plan_of, ref, ref_pkg, why = {}, nil, nil, "it holds no live plan that earns " .. event.voucher
  for name, id in pairs(plans) do plan_of[id] = name end
  for _, pkg in ipairs(packages) do
    for _, inst in ipairs(pkg.product_instances) do
      local cycle = inst.billing_info and inst.billing_info.cycle_duration
      if voucher.with[plan_of[inst.catalog_product_id]] and REFERENCE_STATUS[inst.status] then
        if voucher.units[cycle and cycle.unit] then
          ref, ref_pkg = ref or inst, ref_pkg or pkg
        else
          why = "its " .. plan_of[inst.catalog_product_id] .. " plan is billed per " .. tostring(cycle and cycle.unit)
        end
      end
    end
  end
  if not ref then return { created = false, refused = "subscription " .. sub .. " does not qualify: " .. why } end

  -- Redeemed before (this event delivered twice)? A reference serves once, even when the
  -- add-on it gave was canceled since.
  for _, pkg in ipairs(packages) do
    for _, inst in ipairs(pkg.product_instances) do
      if inst.reference_product_instance_id == ref.instance_id then
        return { created = false, reference_instance_id = ref.instance_id, instance_id = inst.instance_id,
                 reason = "already redeemed (" .. inst.status .. ")" }
      end
    end
  end

  local ok, pkg = pcall(wix.packages.create, {
    account_id = ref_pkg.account_id, external_id = sub, idempotency_key = "voucher:" .. ref.instance_id,
    products = { {
      catalog_product_id = addon_id, site_id = ref.site_id, billing = voucher.billing,
      country_code = ref.country_code or event.country_code or ctx.options.country_code,
      reference_product_instance_id = ref.instance_id,
    } },
  })
  if not ok then
    if wix.is_error(pkg) and pkg.code == "REFERENCE_PRODUCT_INSTANCE_ALREADY_USED" then
      ctx.log("warn", "voucher reference already used elsewhere", { subscription = sub, reference = ref.instance_id })
      return { created = false, reference_instance_id = ref.instance_id, reason = "already redeemed" }
    end
    error(pkg, 0)
  end
  local inst = pkg.product_instances[1]
  ctx.log("info", "voucher redeemed", { subscription = sub, voucher = event.voucher, instance_id = inst.instance_id })
  return { created = true, package_id = pkg.id, instance_id = inst.instance_id,
           reference_instance_id = ref.instance_id, addon = voucher.addon }
end

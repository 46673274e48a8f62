---@option plans table<string, string>  plan name -> Wix catalog product id
---@option team_account_id string  the account DIFM packages are created in
---@option country_code string  when an order gives none
-- route_order.lua -- event "order.created": provisions a new order.
--
-- Where the package goes (resellers-api.md §5):
--   DIY  (do it yourself)  the customer builds the site in their own Wix sub-account:
--                          the package is created in event.account_id.
--   DIFM (do it for me)    the reseller's studio builds the site in its team account:
--                          the package is created in ctx.options.team_account_id.
-- An item without a site_id is bought floating (the customer, or site.moved, assigns it later).
--
-- The order id is both the package's external id (later events find the subscription by
-- it) and the create's idempotency key, so an order delivered twice is provisioned once.
--
-- Event data:
--   { order_id = "ord-1001",            -- default: the event's id
--     model = "DIY" | "DIFM",
--     account_id = GUID,                -- DIY only: the customer's sub-account
--     country_code = "DE",              -- default: ctx.options.country_code
--     items = { { plan = "core", billing = "yearly", site_id = GUID? }, ... } }
-- Options: plans (plan name -> catalog product id), team_account_id, country_code.
-- Returns: { package_id, instance_ids, account_id, model }. Bad input raises an error
-- naming the field; a call Wix refuses raises its wix.Error.

local wix = require "wix"

-- Business models: the account a package belongs to, and the field that gives it.
local MODELS = {
  DIY = { field = "account_id", account = function(event) return event.account_id end },
  DIFM = { field = "options.team_account_id", account = function(_, options) return options.team_account_id end },
}

-- The reseller's billing terms and the Wix billing cycles they stand for.
local BILLING = {
  monthly = { unit = "MONTH", count = 1 },
  yearly = { unit = "YEAR", count = 1 },
  ["2-years"] = { unit = "YEAR", count = 2 },
  ["one-time"] = "ONE_TIME",
}
local DEFAULT_BILLING = "yearly"

local function names(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return table.concat(out, ", ")
end

return function(event, ctx)
  local plans = ctx.options.plans or error("options.plans (plan name -> catalog product id) is missing", 0)
  local order = event.order_id or ctx.event.id or error("order_id is required", 0)
  local function bad(field, why) error(string.format("order %s: %s %s", order, field, why), 0) end

  local model = type(event.model) == "string" and event.model:upper() or nil
  if not MODELS[model] then bad("model", "must be DIY or DIFM, got " .. tostring(event.model)) end
  local account = MODELS[model].account(event, ctx.options)
  if not account then bad(MODELS[model].field, "is required for a " .. model .. " order") end
  if model == "DIFM" and event.account_id then
    ctx.log("warn", "account_id is ignored for a DIFM order", { order = order, account_id = event.account_id })
  end
  local country = event.country_code or ctx.options.country_code or bad("country_code", "is required")
  if type(event.items) ~= "table" or #event.items == 0 then bad("items", "must list at least one item") end

  local products = {}
  for i, item in ipairs(event.items) do
    local field = "items[" .. i .. "]"
    if type(item) ~= "table" then bad(field, "must be an object") end
    local id = plans[item.plan]
    if not id then
      bad(field .. ".plan", string.format("%q is not a plan (plans: %s)", tostring(item.plan), names(plans)))
    end
    local billing = BILLING[item.billing or DEFAULT_BILLING]
    if not billing then
      bad(field .. ".billing", string.format("%q is not one of %s", tostring(item.billing), names(BILLING)))
    end
    products[i] = { catalog_product_id = id, site_id = item.site_id, country_code = country, billing = billing }
  end

  local pkg = wix.packages.create {
    account_id = account, external_id = order, idempotency_key = order, products = products,
  }
  local ids = {}
  for i, inst in ipairs(pkg.product_instances) do ids[i] = inst.instance_id end
  ctx.log("info", "order provisioned",
          { order = order, model = model, package_id = pkg.id, account_id = pkg.account_id })
  return { package_id = pkg.id, instance_ids = ids, account_id = pkg.account_id, model = model }
end

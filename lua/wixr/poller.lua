-- wixr.poller: one poll of the Resellers API for what Wix does not push.
-- Lists the packages updated since the watermark (cursor paging, oldest first)
-- and returns every instance in them as a candidate event; wixr serve keeps
-- the last status it saw of each instance and journals an event only for a
-- change (named after the API's domain events). Compiled into the wixr binary.

local wix = require "wix"

local NAMES = {
  FAILED = "wix.product_instance_failed",
  CANCELED = "wix.product_instance_canceled",
}

return function(watermark, account_id)
  local q = { sort = "updated_date", limit = 100 }
  if watermark then q.filter = { updated_date = { ["$gte"] = watermark } } end
  local out, newest = {}, watermark
  for pkg in wix.packages.each(q, { account_id = account_id }) do
    if not newest or pkg.updated_date > newest then newest = pkg.updated_date end
    for _, inst in ipairs(pkg.product_instances or {}) do
      out[#out + 1] = {
        instance_id = inst.instance_id,
        status = inst.status,
        name = NAMES[inst.status] or "wix.product_instance_updated",
        id = "poll:" .. inst.instance_id .. ":" .. inst.status .. ":" .. (inst.updated_date or ""),
        data = {
          product_instance_id = inst.instance_id,
          package_id = pkg.id,
          account_id = pkg.account_id,
          external_id = pkg.external_id,
          status = inst.status,
          reason = inst.failure,
          site_id = inst.site_id,
          catalog_product_id = inst.catalog_product_id,
          package = pkg,
        },
      }
    end
  end
  return { instances = out, watermark = newest }
end

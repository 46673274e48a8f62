-- wrk script: POST ORDERS order.created events (environment, default 2000) to wixr serve, each with its
-- own order id and event id, split among wrk's threads; a thread stops once its share is answered.
local total = tonumber(os.getenv("ORDERS") or "2000")
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  nthreads = tonumber(os.getenv("WRK_THREADS") or "2")
  share = math.floor(total / nthreads) + ((tid <= total % nthreads) and 1 or 0)
  sent, answered = 0, 0
end
function request()
  sent = sent + 1
  local id = string.format("o-%d-%d", tid, sent)
  local body = string.format('{"order_id":"%s","model":"DIY","account_id":"33333333-4444-4555-8666-777777777777",'
    .. '"country_code":"DE","items":[{"plan":"core","billing":"yearly"}]}', id)
  return wrk.format("POST", "/v1/events/order.created", {
    ["Authorization"] = "Bearer " .. (os.getenv("WIXR_TOKEN") or ""),
    ["Content-Type"] = "application/json", ["X-Event-Id"] = id }, body)
end
function response(status, headers, body)
  answered = answered + 1
  if answered >= share then wrk.thread:stop() end
end
function done(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
end

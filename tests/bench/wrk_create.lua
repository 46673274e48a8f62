-- wrk script: Create Package V2 (a floating Premium Core, yearly) as a DIY sub-account.
wrk.method = "POST"
wrk.path = "/resellers/v2/packages"
wrk.headers["Authorization"] = "bench-key"
wrk.headers["wix-account-id"] = "33333333-4444-4555-8666-777777777777"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"externalId":"bench","products":[{"catalogProductId":"7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",' ..
           '"countryCode":"DE","billingInfo":{"type":"RECURRING","cycleDuration":{"unit":"YEAR","count":1}}}]}'

local failed = 0
function response(status, headers, body)
  if status ~= 200 then failed = failed + 1 end
end
function done(summary, latency, requests)
  io.write(string.format("non200=%d\n", summary.errors.status))
end

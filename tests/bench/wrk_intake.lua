-- wrk script: POST an event to wixr serve (a fresh id each time: the service makes one).
wrk.method = "POST"
wrk.path = "/v1/events/bench.event"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("WIXR_TOKEN") or "")
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"external_id":"bench","n":1}'
function done(summary, latency, requests)
  io.write(string.format("non2xx=%d\n", summary.errors.status))
  io.write(string.format("p99_ms=%.2f\n", latency:percentile(99) / 1000))
  io.write(string.format("p50_ms=%.2f\n", latency:percentile(50) / 1000))
end

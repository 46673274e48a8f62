-- wrk script: Get Package; the package id comes in the environment (BENCH_PACKAGE).
wrk.method = "GET"
wrk.path = "/resellers/v1/packages/" .. os.getenv("BENCH_PACKAGE")
wrk.headers["Authorization"] = "bench-key"
wrk.headers["wix-account-id"] = "33333333-4444-4555-8666-777777777777"
function done(summary, latency, requests)
  io.write(string.format("non200=%d\n", summary.errors.status))
end

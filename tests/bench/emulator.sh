#!/usr/bin/env bash
# Benchmark: the emulator over HTTP/1.1 keep-alive (wrk), and its memory with
# many packages stored. Prints one table: figure, target, ratio.
#   tests/bench/emulator.sh WIXR_BINARY
# Environment: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (default 8),
# BENCH_PACKAGES (default 100000).
set -euo pipefail
bin=${1:?usage: emulator.sh WIXR_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/report.sh"
secs=${BENCH_SECONDS:-5}
conns=${BENCH_CONNECTIONS:-8}
want=${BENCH_PACKAGES:-100000}
account=33333333-4444-4555-8666-777777777777

work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" sandbox serve --db "$work/bench.db" --listen 127.0.0.1:0 --port-file "$work/port" 2>"$work/log" &
pid=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.05; done
base="http://127.0.0.1:$(cat "$work/port")"

rate() { # wrk output -> requests/s, failing on any non-200
  local out=$1
  grep -q '^non200=0$' <<<"$out" || { echo "benchmark saw non-200 answers:" >&2; echo "$out" >&2; exit 1; }
  awk '/^Requests\/sec:/ {printf "%d", $2}' <<<"$out"
}
packages() { curl -s "$base/__admin/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"])'; }

create=$(rate "$(wrk -t2 -c"$conns" -d"${secs}s" -s "$here/wrk_create.lua" "$base")")
id=$(curl -s -X POST "$base/resellers/v1/packages/query" -H "Authorization: bench" -H "wix-account-id: $account" \
       -d '{"query":{"cursorPaging":{"limit":1}}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["packages"][0]["id"])')
get=$(BENCH_PACKAGE=$id rate "$(BENCH_PACKAGE=$id wrk -t2 -c"$conns" -d"${secs}s" -s "$here/wrk_get.lua" "$base")")
get1=$(BENCH_PACKAGE=$id rate "$(BENCH_PACKAGE=$id wrk -t1 -c1 -d"${secs}s" -s "$here/wrk_get.lua" "$base")")

# Fill up to $want packages, then measure the resident set size.
while (( $(packages) < want )); do
  wrk -t2 -c"$conns" -d2s -s "$here/wrk_create.lua" "$base" >/dev/null
done
n=$(packages)
get_full=$(BENCH_PACKAGE=$id rate "$(BENCH_PACKAGE=$id wrk -t2 -c"$conns" -d"${secs}s" -s "$here/wrk_get.lua" "$base")")
rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
# Filtered Query Packages over all of them (as the reseller): a filter that matches none, on
# externalId and on updatedDate, so every stored package is looked at; ms a query, median of 5.
query_ms() {
  python3 - "$base" "$1" <<'PY'
import http.client, json, sys, time, urllib.parse
u = urllib.parse.urlparse(sys.argv[1])
c = http.client.HTTPConnection(u.hostname, u.port)
body = json.dumps({"query": {"filter": json.loads(sys.argv[2])}})
ts = []
for _ in range(5):
    t = time.perf_counter()
    c.request("POST", "/resellers/v1/packages/query", body=body,
              headers={"Authorization": "bench", "wix-account-id": "11111111-2222-4333-8444-555555555555"})
    r = c.getresponse()
    d = json.loads(r.read())
    assert r.status == 200 and d["metadata"]["count"] == 0, d
    ts.append((time.perf_counter() - t) * 1000)
print("%.1f" % sorted(ts)[2])
PY
}
q_ext=$(query_ms '{"externalId": "no-such-order"}')
q_date=$(query_ms '{"updatedDate": {"$gte": "2099-01-01T00:00:00.000Z"}}')

printf '\nEmulator over HTTP (wrk, keep-alive, %d connections, %ss each, %d cores)\n' "$conns" "$secs" "$(nproc)"
printf '%-44s %14s %14s %8s\n' "figure" "measured" "target" "ratio"
row() { printf '%-44s %14s %14s %7.2fx\n' "$1" "$2" "$3" "$4"; report emulator "$1" "$2" - "$(printf %.2fx "$4")" "$3"; }
row "Create Package V2 (requests/s)" "$create" ">= 2000" "$(echo "$create / 2000" | bc -l)"
row "Get Package (requests/s)" "$get" ">= 10000" "$(echo "$get / 10000" | bc -l)"
row "Get Package, 1 connection (requests/s)" "$get1" "-" "$(echo "$get1 / 10000" | bc -l)"
row "Get Package with $n stored (requests/s)" "$get_full" ">= 10000" "$(echo "$get_full / 10000" | bc -l)"
printf '%-44s %14s\n' "Query, externalId matching none, $n stored (ms)" "$q_ext"
report emulator "Query Packages, externalId filter matching none, $n stored (ms, median of 5)" "$q_ext" - - -
printf '%-44s %14s\n' "Query, updatedDate matching none, $n stored (ms)" "$q_date"
report emulator "Query Packages, updatedDate filter matching none, $n stored (ms, median of 5)" "$q_date" - - -
row "RSS with $n packages (MB)" "$(echo "scale=1; $rss_kb / 1024" | bc)" "< 40" "$(echo "40 * 1024 / $rss_kb" | bc -l)"

#!/usr/bin/env bash
# Benchmark: the emulator over HTTP/1.1 keep-alive (wrk), and its memory with
# many packages stored. Prints one table: figure, target, ratio.
#   tests/bench/emulator.sh WIXR_BINARY
# Then, at each size of BENCH_SCALE (stores written straight into SQLite, one
# instance a package), what one request costs: a Get, a first page, a page
# filtered on instance status, and paging through every package.
# Environment: BENCH_SECONDS (default 5), BENCH_CONNECTIONS (default 8),
# BENCH_PACKAGES (default 100000), BENCH_SCALE (default $BENCH_SIZES,
# else "10000 100000 1000000"; scripts/bench --quick sets BENCH_SIZES=10000).
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
serve() { # DB: starts the emulator on it, sets pid and base
  rm -f "$work/port"
  "$bin" sandbox serve --db "$1" --listen 127.0.0.1:0 --port-file "$work/port" 2>"$work/log" &
  pid=$!
  for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.05; done
  base="http://127.0.0.1:$(cat "$work/port")"
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
serve "$work/bench.db"

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

# ---- at scale ----
# fill DB N: the store holds N of Jane's packages (ids 1..N as GUIDs, one ms apart, one instance
# each: ENABLED, or CANCELED every fourth), written straight into SQLite (the emulator stopped);
# creating a million over HTTP would take minutes.
fill() {
  python3 - "$1" "$2" <<'PY'
import sqlite3, sys
db, want = sys.argv[1], int(sys.argv[2])
jane, reseller = "33333333-4444-4555-8666-777777777777", "11111111-2222-4333-8444-555555555555"
product, t0 = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02", 1700000000000
guid = lambda n: "00000000-0000-4000-8000-%012x" % n
con = sqlite3.connect(db)
have = con.execute("SELECT count(*) FROM packages").fetchone()[0]
con.executemany("INSERT INTO packages(seq, id, account_id, parent_account_id, external_id, created, updated)"
                " VALUES(?, ?, ?, ?, ?, ?, ?)",
                ((i, guid(i), jane, reseller, "ext-%d" % i, t0 + i, t0 + i) for i in range(have + 1, want + 1)))
con.executemany("INSERT INTO instances(instance_id, package_seq, pos, catalog_product_id, product_type, status,"
                " billing_type, billing_unit, billing_count, country_code, created, updated)"
                " VALUES(?, ?, 0, ?, 'premium-plan', ?, 'RECURRING', 'YEAR', 1, 'DE', ?, ?)",
                ((guid(10 ** 12 + i), i, product, "CANCELED" if i % 4 == 0 else "ENABLED", t0 + i, t0 + i)
                 for i in range(have + 1, want + 1)))
con.commit()
PY
}
# measure N: ms a Get (median of 1000, random packages), ms a first page of 100 unfiltered and
# filtered on productInstances.status (median of 21), s to page through all N by cursor (100 a
# page), ms a query on a status no instance has, ms the last page by offset, and a Get's p99
# while such last pages are asked for.
measure() {
  python3 - "$base" "$1" <<'PY'
import http.client, json, os, random, signal, sys, time, urllib.parse
u, n = urllib.parse.urlparse(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection(u.hostname, u.port)
hdr = {"Authorization": "bench", "wix-account-id": "33333333-4444-4555-8666-777777777777"}
def call(method, path, body=None):
    c.request(method, path, body=body and json.dumps(body), headers=hdr)
    r = c.getresponse()
    d = json.loads(r.read())
    assert r.status == 200, d
    return d
def median_ms(k, f):
    ts = []
    for _ in range(k):
        t = time.perf_counter()
        f()
        ts.append((time.perf_counter() - t) * 1000)
    return sorted(ts)[k // 2]
rnd = random.Random(7)
get = median_ms(1001, lambda: call("GET", "/resellers/v1/packages/00000000-0000-4000-8000-%012x" % rnd.randint(1, n)))
Q = "/resellers/v1/packages/query"
page = median_ms(21, lambda: call("POST", Q, {"query": {"cursorPaging": {"limit": 100}}}))
status = {"productInstances.status": {"$hasSome": ["ENABLED"]}}
filtered = median_ms(21, lambda: call("POST", Q, {"query": {"filter": status, "cursorPaging": {"limit": 100}}}))
t, seen, q = time.perf_counter(), 0, {"cursorPaging": {"limit": 100}}
while True:
    d = call("POST", Q, {"query": q})
    seen += d["metadata"]["count"]
    nxt = d["metadata"]["cursors"].get("next")
    if not nxt:
        break
    q = {"cursorPaging": {"limit": 100, "cursor": nxt}}
assert seen == n, (seen, n)
paging = time.perf_counter() - t
# A status no instance has: its index tells, no package is read.
none = {"query": {"filter": {"productInstances.status": {"$hasSome": ["FAILED"]}}, "cursorPaging": {"limit": 100}}}
unmatched = median_ms(5, lambda: call("POST", Q, none))
# The last page by offset: every package is read (passed over, then counted for the total), in
# chunks between which the lock goes to waiting requests -- Gets on another connection meanwhile.
last = {"query": {"paging": {"limit": 100, "offset": n - 100}}}
deep = median_ms(3, lambda: call("POST", Q, last))
looper = os.fork()  # a process of its own: a thread would wait for the GIL, not for the emulator
if not looper:
    c2 = http.client.HTTPConnection(u.hostname, u.port)
    while True:
        c2.request("POST", Q, body=json.dumps(last), headers=hdr)
        c2.getresponse().read()
time.sleep(0.05)
ts = []
for _ in range(500):
    t0 = time.perf_counter()
    call("GET", "/resellers/v1/packages/00000000-0000-4000-8000-%012x" % rnd.randint(1, n))
    ts.append((time.perf_counter() - t0) * 1000)
os.kill(looper, signal.SIGKILL)
os.waitpid(looper, 0)
print("%.2f %.2f %.2f %.1f %.2f %.1f %.2f" % (get, page, filtered, paging, unmatched, deep, sorted(ts)[494]))
PY
}
stop
printf '\nEmulator at scale (one keep-alive connection; pages of 100)\n'
for n in ${BENCH_SCALE:-${BENCH_SIZES:-10000 100000 1000000}}; do
  serve "$work/scale.db" && stop # the schema
  t=$(date +%s.%N); fill "$work/scale.db" "$n"; filled=$(echo "$(date +%s.%N) - $t" | bc)
  serve "$work/scale.db"
  out=$(measure "$n")
  read -r get page filtered pass unmatched deep get_p99 <<<"$out"
  rss_kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
  stop
  for f in "Get Package, $n stored (ms, median)=$get" "Query Packages, first page, $n stored (ms, median)=$page" \
           "Query Packages, page filtered on status, $n stored (ms, median)=$filtered" \
           "Query Packages, paging through all $n (s)=$pass" \
           "Query Packages, filtered on a status none has, $n stored (ms, median)=$unmatched" \
           "Query Packages, the last page by offset, $n stored (ms, median)=$deep" \
           "Get Package while those run, $n stored (ms, p99)=$get_p99" \
           "Writing the store up to $n packages (s)=$(printf %.1f "$filled")"; do
    printf '%-70s %10s\n' "${f%=*}" "${f##*=}"
    report emulator "${f%=*}" "${f##*=}" - - -
  done
  rss="$(echo "scale=1; $rss_kb / 1024" | bc)"
  printf '%-70s %10s %8s %7.2fx\n' "RSS after those, $n stored (MB)" "$rss" "< 40" "$(echo "40 * 1024 / $rss_kb" | bc -l)"
  report emulator "RSS after those, $n stored (MB)" "$rss" - "$(printf %.2fx "$(echo "40 * 1024 / $rss_kb" | bc -l)")" "< 40"
done

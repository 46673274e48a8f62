#!/usr/bin/env bash
# Benchmark: the wix Lua module (`wixr run`) as an HTTP client of the emulator,
# against the strongest idiomatic client of Python and Node, measured in the
# same run. Prints one table: figure, wixr, peer or ideal, ratio, target.
#   tests/bench/wix_client.sh WIXR_BINARY
# (a) N sequential Create+Get pairs, in calls/s: wixr vs Python
#     requests.Session, Node node:http with a keep-alive http.Agent
#     (peer_node.mjs) and a bare libcurl loop (one easy handle);
# (b) E events of Create+Get, C in flight (C workers each taking the next
#     event), wall seconds: wixr at c=1, 16 and 128 with injected latency
#     against the exact ideal (ceil(E/C) events a worker x 2 calls x latency),
#     and at c=16 and 128 (with latency) and c=128 (none) against Python
#     aiohttp (one ClientSession, TCPConnector(limit=C), peer_aiohttp.py) and
#     Node (http.Agent, maxSockets C, Promise.all of C workers);
# (c) wixr's peak RSS (VmHWM) with many calls in flight.
# Ratios against a peer are peer time / wixr time (how many times faster wixr
# is). Every run is checked: the script's or the peer's result, and the
# emulator's package and request counts (reset before each run). Any failure
# stops the benchmark.
# Environment: BENCH_PAIRS (default 5000), BENCH_EVENTS (default 2000),
# BENCH_EVENTS_C1 (events at concurrency 1, default 200), BENCH_LATENCY_MS
# (default 20), BENCH_INFLIGHT (default 1000), BENCH_RSS_LATENCY_MS (default 200).
set -euo pipefail
bin=${1:?usage: wix_client.sh WIXR_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
. "$here/report.sh"
pairs=${BENCH_PAIRS:-5000}
events=${BENCH_EVENTS:-2000}
events1=${BENCH_EVENTS_C1:-200}
latency=${BENCH_LATENCY_MS:-20}
inflight=${BENCH_INFLIGHT:-1000}
rss_latency=${BENCH_RSS_LATENCY_MS:-200}
key=bench-key

die() { echo "wix_client.sh: $*" >&2; exit 1; }

# The peers: Debian's python3 (with python3-requests and python3-aiohttp) and
# node, ahead of any other python3 or node on the PATH.
py=
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import requests, aiohttp' 2>/dev/null; then py=$(command -v "$p"); break; fi
done
[[ -n $py ]] || die "no python3 with requests and aiohttp (scripts/install-deps --bench installs python3-requests and python3-aiohttp)"
node=
for n in /usr/bin/node node nodejs; do
  if command -v "$n" >/dev/null; then node=$(command -v "$n"); break; fi
done
[[ -n $node ]] || die "no node (scripts/install-deps --bench installs nodejs)"

work=$(mktemp -d)
pid= wpid= sampler=
cleanup() {
  [[ -n $sampler ]] && { kill "$sampler" 2>/dev/null || true; }
  [[ -n $wpid ]] && { kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true; }
  [[ -n $pid ]] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
# (room for the 1000 connections of the calls in flight in (c))
"$bin" sandbox serve --db :memory: --listen 127.0.0.1:0 --port-file "$work/port" --max-connections 1100 \
  --max-connections-per-ip 1100 2>"$work/log" &
pid=$!
for _ in $(seq 100); do [[ -s "$work/port" ]] && break; sleep 0.05; done
[[ -s "$work/port" ]] || { cat "$work/log" >&2; die "the emulator did not start"; }
port=$(cat "$work/port")
base="http://127.0.0.1:$port"

# ---- helpers ----

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }   # calc FORMAT EXPRESSION

# jget JSON a.b.c -> the value at that path ("" when missing)
jget() {
  "$py" -c 'import json, sys
v = json.loads(sys.argv[1])
for k in sys.argv[2].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else v)' "$1" "$2"
}

expect() { # expect WHAT ACTUAL WANTED
  [[ "$2" == "$3" ]] || die "$1: got '$2', expected '$3'"
}

admin() { # admin METHOD PATH [BODY]: fails on a non-2xx answer
  curl -sf -X "$1" "$base/__admin/$2" ${3:+-d "$3"} >/dev/null || die "admin $1 /__admin/$2 failed"
}

# fresh_server [LATENCY_MS]: drop every package, fault and count; add latency.
fresh_server() {
  admin POST reset
  if [[ ${1:-0} -gt 0 ]]; then admin POST faults "{\"latencyMs\":$1}"; fi
}

# check_server PACKAGES REQUESTS: what the emulator saw since fresh_server.
check_server() {
  local s
  s=$(curl -sf "$base/__admin/stats") || die "GET /__admin/stats failed"
  expect "packages created (emulator)" "$(jget "$s" packages)" "$1"
  expect "requests served (emulator)" "$(jget "$s" requests)" "$2"
}

config() { # config CONCURRENCY -> path of a wixr config
  local f="$work/c$1.yaml"
  printf 'wix:\n  rate_limit: { requests: 0 }\n  concurrency: %d\n  retry: { attempts: 1 }\n' "$1" >"$f"
  echo "$f"
}

# run_wixr SCRIPT CONCURRENCY [VAR=VALUE...]: runs wixr in the background (its
# pid in $wpid), waits, and sets $out (the --json document) and $secs (wall
# time minus the start-up of a no-op run). Fails on anything but ok.
run_wixr() {
  local script=$1 cfg t0 t1 rc=0
  cfg=$(config "$2")
  shift 2
  t0=$(now)
  env "$@" WIX_BASE_URL="$base" WIX_API_KEY="$key" "$bin" run "$script" --config "$cfg" --json \
    >"$work/out" 2>"$work/err" &
  wpid=$!
  [[ -z ${on_start:-} ]] || "$on_start" "$wpid"
  wait "$wpid" || rc=$?
  t1=$(now)
  wpid=
  out=$(cat "$work/out")
  if [[ $rc -ne 0 || $(jget "$out" ok) != True ]]; then
    echo "wix_client.sh: wixr run $(basename "$script") failed (exit $rc):" >&2
    cat "$work/out" "$work/err" >&2
    exit 1
  fi
  secs=$(calc %.6f "$t1 - $t0 - ${startup:-0}")
}

# ---- start-up of a no-op run (median of 5), subtracted from wixr's timings ----

cat >"$work/noop.lua" <<'EOF'
local wix = require "wix"
return function()
  local f = io.open("/proc/self/status", "r")
  local kb = f and tonumber(f:read("a"):match("VmHWM:%s*(%d+)"))
  if f then f:close() end
  return { calls = 0, vmhwm_kb = kb }
end
EOF
ups=()
for _ in 1 2 3 4 5; do run_wixr "$work/noop.lua" 16; ups+=("$secs"); done
startup=$(printf '%s\n' "${ups[@]}" | sort -g | sed -n 3p)
noop_rss_kb=$(jget "$out" result.vmhwm_kb)

# ---- (a) sequential Create+Get pairs ----

fresh_server
run_wixr "$here/wix_seq.lua" 1 BENCH_PAIRS="$pairs"
expect "wix_seq.lua calls" "$(jget "$out" result.calls)" $((2 * pairs))
expect "wix_seq.lua client calls" "$(jget "$out" stats.calls)" $((2 * pairs))
check_server "$pairs" $((2 * pairs))
wixr_rate=$(calc %.0f "2 * $pairs / $secs")

peer() { # peer NAME COMMAND... -> calls/s of a peer that prints its seconds
  local name=$1 s
  shift
  fresh_server
  s=$(WIX_API_KEY=$key "$@") || die "$name failed"
  check_server "$pairs" $((2 * pairs))
  calc %.0f "2 * $pairs / $s"
}
py_rate=$(peer "peer_requests.py" "$py" "$here/peer_requests.py" "$base" "$pairs")
node_rate=$(peer "peer_node.mjs seq" "$node" "$here/peer_node.mjs" seq "$base" "$pairs")
curl_rate=-
if cc -O2 -o "$work/peer_libcurl" "$here/peer_libcurl.c" -lcurl 2>"$work/cc.log"; then
  curl_rate=$(peer "peer_libcurl" "$work/peer_libcurl" "$base" "$pairs")
else
  echo "wix_client.sh: no bare-libcurl reference (cc or libcurl headers missing):" >&2
  cat "$work/cc.log" >&2
fi

# ---- (b) latency: events of Create+Get, C in flight ----

# latency_run EVENTS CONCURRENCY LATENCY_MS [TRIES]: sets $secs (the best of
# TRIES runs, default 1) and $cpu (wixr's CPU seconds a run, on average).
latency_run() {
  local e=$1 c=$2 lat=$3 tries=${4:-1} best= cpu_sum=0
  for _ in $(seq "$tries"); do
    fresh_server "$lat"
    run_wixr "$here/wix_concurrent.lua" "$c" BENCH_EVENTS="$e" BENCH_CONCURRENCY="$c"
    expect "wix_concurrent.lua events (c=$c)" "$(jget "$out" result.events)" "$e"
    expect "wix_concurrent.lua calls (c=$c)" "$(jget "$out" result.calls)" $((2 * e))
    expect "wix_concurrent.lua peak in flight (c=$c)" "$(jget "$out" result.peak_in_flight)" $((c < e ? c : e))
    expect "wix_concurrent.lua retries (c=$c)" "$(jget "$out" stats.retries)" 0
    check_server "$e" $((2 * e))
    cpu_sum=$(calc %.6f "$cpu_sum + $(jget "$out" result.cpu_s)")
    if [[ -z $best ]] || awk "BEGIN { exit !($secs < $best) }"; then best=$secs; fi
  done
  secs=$best
  cpu=$(calc %.2f "$cpu_sum / $tries")
}
# ideal EVENTS CONCURRENCY LATENCY_MS: the exact bound, whole events a worker
# (ceil(E/C)) x 2 calls x latency: 2000 events at c=128 are 16 a worker, 0.640 s.
ideal() { calc %.3f "int(($1 + $2 - 1) / $2) * 2 * $3 / 1000"; }

# peer_run NAME EVENTS CONCURRENCY LATENCY_MS TRIES COMMAND...: a concurrent
# peer's best wall seconds of TRIES runs (the peer times its own work), each
# checked against the emulator's counts.
peer_run() {
  local name=$1 e=$2 c=$3 lat=$4 tries=$5 best= s
  shift 5
  for _ in $(seq "$tries"); do
    fresh_server "$lat"
    s=$(WIX_API_KEY=$key "$@" "$base" "$e" "$c") || die "$name (c=$c, ${lat} ms) failed"
    check_server "$e" $((2 * e))
    if [[ -z $best ]] || awk "BEGIN { exit !($s < $best) }"; then best=$s; fi
  done
  echo "$best"
}
aiohttp() { peer_run peer_aiohttp.py "$@" "$py" "$here/peer_aiohttp.py"; }
node_conc() { peer_run "peer_node.mjs conc" "$@" "$node" "$here/peer_node.mjs" conc; }

latency_run "$events1" 1 "$latency"; lat1=$secs
latency_run "$events" 16 "$latency"; lat16=$secs
py16=$(aiohttp "$events" 16 "$latency" 1)
node16=$(node_conc "$events" 16 "$latency" 1)
ticks0=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
latency_run "$events" 128 "$latency" 3; lat128=$secs
emu_cpu=$(calc %.2f "($(awk '{ print $14 + $15 }' "/proc/$pid/stat") - $ticks0) / $(getconf CLK_TCK) / 3")
wixr_cpu=$cpu
py128=$(aiohttp "$events" 128 "$latency" 3)
node128=$(node_conc "$events" 128 "$latency" 3)
latency_run "$events" 128 0 3; floor128=$secs
py128f=$(aiohttp "$events" 128 0 3)
node128f=$(node_conc "$events" 128 0 3)

# ---- (c) peak RSS with $inflight calls in flight ----

# While wixr runs, a sampler counts its open connections to the emulator and
# writes the peak to $work/conns.
sample() {
  local n peak=0
  while kill -0 "$1" 2>/dev/null; do
    n=$(ss -Htn state established "( dport = :$port )" 2>/dev/null | wc -l)
    ((n > peak)) && peak=$n
    sleep 0.02
  done
  echo "$peak" >"$work/conns"
}
watch_conns() { sample "$1" & sampler=$!; }
fresh_server "$rss_latency"
on_start=watch_conns
run_wixr "$here/wix_concurrent.lua" "$inflight" BENCH_EVENTS="$inflight" BENCH_CONCURRENCY="$inflight"
on_start=
wait "$sampler" 2>/dev/null || true
sampler=
expect "wix_concurrent.lua events (in flight)" "$(jget "$out" result.events)" "$inflight"
expect "wix_concurrent.lua peak in flight" "$(jget "$out" result.peak_in_flight)" "$inflight"
check_server "$inflight" $((2 * inflight))
rss_kb=$(jget "$out" result.vmhwm_kb)
rss_secs=$secs

# ---- the table ----

printf '\nwix Lua module over HTTP to the emulator (keep-alive; retries and rate limit off; %d cores)\n' "$(nproc)"
w=64
printf "%-${w}s %10s %13s %8s %9s\n" "figure" "wixr" "peer/ideal" "ratio" "target"
section=
row() { # row FIGURE WIXR PEER RATIO TARGET; a row with no figures names the rows under it
  printf "%-${w}s %10s %13s %8s %9s\n" "$@"
  if [[ -z $2 ]]; then section=${1#(?) }; else report "wix module" "$section: ${1#  }" "$2" "${3:--}" "$4" "$5"; fi
}
x() { [[ $2 == - ]] && echo - || calc %.2fx "$1 / $2"; }
pct() { calc %.0f%% "100 * $1 / $2"; }
s3() { calc %.3f "$1"; }
nv=$("$node" --version)
row "(a) $pairs sequential create+get pairs, calls/s" "" "" "" ""
row "  vs Python requests.Session" "$wixr_rate" "$py_rate" "$(x "$wixr_rate" "$py_rate")" ">= 5x"
row "  vs Node $nv node:http, keep-alive http.Agent" "$wixr_rate" "$node_rate" "$(x "$wixr_rate" "$node_rate")" ">= 1x"
row "  vs bare libcurl, one easy handle" "$wixr_rate" "$curl_rate" "$(x "$wixr_rate" "$curl_rate")" ">= 0.9x"
row "(b) $events create+get events, C in flight, wall s" "" "" "" ""
i1=$(ideal "$events1" 1 "$latency") i16=$(ideal "$events" 16 "$latency") i128=$(ideal "$events" 128 "$latency")
row "  c=1, $events1 events, ${latency} ms a call: ideal ($events events: $(ideal "$events" 1 "$latency") s)" \
  "$(s3 "$lat1")" "$i1" "$(pct "$i1" "$lat1")" "-"
row "  c=16, ${latency} ms a call: ideal ($(( (events + 15) / 16 )) events a worker)" "$(s3 "$lat16")" "$i16" \
  "$(pct "$i16" "$lat16")" "-"
row "  c=16, ${latency} ms a call: vs Python aiohttp" "$(s3 "$lat16")" "$(s3 "$py16")" "$(x "$py16" "$lat16")" ">= 1x"
row "  c=16, ${latency} ms a call: vs Node http.Agent" "$(s3 "$lat16")" "$(s3 "$node16")" "$(x "$node16" "$lat16")" ">= 1x"
row "  c=128, ${latency} ms a call, best of 3: ideal ($(( (events + 127) / 128 )) events a worker)" "$(s3 "$lat128")" \
  "$i128" "$(pct "$i128" "$lat128")" ">= 80%"
row "  c=128, ${latency} ms a call, best of 3: vs Python aiohttp" "$(s3 "$lat128")" "$(s3 "$py128")" \
  "$(x "$py128" "$lat128")" ">= 1.5x"
row "  c=128, ${latency} ms a call, best of 3: vs Node http.Agent" "$(s3 "$lat128")" "$(s3 "$node128")" \
  "$(x "$node128" "$lat128")" ">= 1.5x"
row "  c=128, no latency, best of 3: vs Python aiohttp" "$(s3 "$floor128")" "$(s3 "$py128f")" \
  "$(x "$py128f" "$floor128")" ">= 3x"
row "  c=128, no latency, best of 3: vs Node http.Agent" "$(s3 "$floor128")" "$(s3 "$node128f")" \
  "$(x "$node128f" "$floor128")" ">= 3x"
row "(c) peak RSS, VmHWM (MB)" "" "" "" ""
row "  $inflight calls in flight (${rss_latency} ms a call)" "$(calc %.1f "$rss_kb / 1024")" "" \
  "$(calc %.2fx "64 * 1024 / $rss_kb")" "< 64"
row "  no-op run (start-up only)" "$(calc %.1f "$noop_rss_kb / 1024")" "" "" "-"
printf 'wixr start-up (no-op run, median of 5, subtracted from its times): %.1f ms\n' "$(calc %.3f "$startup * 1000")"
printf 'c=128 with latency, CPU a run: wixr %s s, emulator %s s (%d cores shared by client and server)\n' \
  "$wixr_cpu" "$emu_cpu" "$(nproc)"
printf '%d calls in flight: %d connections open at once (ss), %.2f s, the emulator started with room for 1100\n' \
  "$inflight" "$(cat "$work/conns")" "$rss_secs"

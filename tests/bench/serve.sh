#!/usr/bin/env bash
# Benchmark: wixr serve. Durable intake (wrk POSTs, each answered after its
# fsync'd journal commit), end-to-end events/s through the routing policy (orders posted
# by wrk, packages created on the emulator the supervisor hosts), the drain of a backlog
# of 10k, 100k and 1M queued events, and the rule reload time with 50, 2,000 and 5,000
# scripts (one changed).
#   tests/bench/serve.sh BUILD_DIR
# Intake is measured with 16 and with 64 connections (latency grows with the
# queue: at a given rate, 4 times the connections wait about 4 times as long).
# Environment: BENCH_SECONDS (default 5), BENCH_E2E_EVENTS (default 4000), BENCH_SIZES
# (the backlogs drained, default "10000 100000 1000000"; scripts/bench --quick sets 10000).
set -euo pipefail
build=$(cd "${1:?usage: serve.sh BUILD_DIR}" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
here=$root/tests/bench
. "$here/report.sh"
secs=${BENCH_SECONDS:-5}
e2e=${BENCH_E2E_EVENTS:-4000}
export WIXR_TOKEN=bench-token
work=$(mktemp -d)
pid= wrk=
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; [[ -n "$wrk" ]] && kill "$wrk" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT

start() { # DIR: starts serve there, sets pid and base
  (cd "$1" && exec "$build/wixr" serve >serve.log 2>&1) &
  pid=$!
  for _ in $(seq 200); do [[ -s "$1/.wixr/serve.port" ]] && break; sleep 0.05; done
  base="http://127.0.0.1:$(cat "$1/.wixr/serve.port")"
}
stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
health() { curl -s "$base/healthz"; }
# wait_done N: until N events are done and none is queued. /healthz is a snapshot (250 ms); it is read with curl
# and bash alone, four times a second, so the poll takes next to none of the CPU it measures.
wait_done() {
  local h
  for _ in $(seq 2400); do
    h=$(health)
    [[ $h =~ \"done\":([0-9]+).*\"depth\":([0-9]+) ]] || { echo "no journal counts in /healthz: $h" >&2; exit 1; }
    (( BASH_REMATCH[2] == 0 && BASH_REMATCH[1] >= $1 )) && return 0
    sleep 0.25
  done
  echo "only ${BASH_REMATCH[1]} of $1 events done in 600 s" >&2; exit 1
}

# 1. intake: an event no hook listens to (accepted, journaled, finished at once)
mkdir -p "$work/intake" && cd "$work/intake"
cat > wixr.yaml <<'Y'
serve: {listen: 127.0.0.1:0, accept_unknown_events: true, order_key: []}
hooks:
Y
start "$work/intake"
intake() { # intake CONNECTIONS: sets rate, p99, p50
  local out
  out=$(wrk -t2 -c"$1" -d"${secs}s" --latency -s "$here/wrk_intake.lua" "$base")
  grep -q '^non2xx=0$' <<<"$out" || { echo "intake benchmark saw errors:" >&2; echo "$out" >&2; exit 1; }
  rate=$(awk '/^Requests\/sec:/ {printf "%d", $2}' <<<"$out")
  p99=$(sed -n 's/^p99_ms=//p' <<<"$out")
  p50=$(sed -n 's/^p50_ms=//p' <<<"$out")
}
intake 16; intake16=$rate p99_16=$p99 p50_16=$p50
intake 64; intake64=$rate p99_64=$p99 p50_64=$p50
stop

# 2. end to end: orders through route_order.lua creating packages on the emulator the service shares with its
# workers, with 1 and 2 worker processes
e2e_run() { # e2e_run WORKERS: sets e2e_rate
mkdir -p "$work/e2e$1" && cd "$work/e2e$1"
sed -e 's|\.\./lua/|'"$root"'/lua/|g' -e 's|catalog: catalog.yaml|catalog: '"$root"'/config/catalog.yaml|' \
    -e 's|state_dir: \.\./\.wixr|state_dir: .wixr|' "$root/config/wixr.yaml" > wixr.yaml
cat >> wixr.yaml <<Y
serve: {listen: 127.0.0.1:0, concurrency: 64, order_key: [order_id], workers: $1}
Y
sed -i 's/requests: 200 /requests: 0   /' wixr.yaml
start "$work/e2e$1"
# wrk posts the orders (a Python poster capped the figure at its own ~1,800 posts/s on these 2 cores)
ORDERS=$e2e WRK_THREADS=2 wrk -t2 -c16 -d300s -s "$here/wrk_orders.lua" "$base" > wrk.out & wrk=$!
wait_done "$e2e"
kill -INT "$wrk"; wait "$wrk" || true; wrk=
grep -q '^non2xx=0$' wrk.out || { echo "end-to-end benchmark saw errors:" >&2; cat wrk.out >&2; exit 1; }
stop
# the events done, from the first accept to the last done (wrk may post a few more than asked: each thread stops
# once its share is answered, and one still posting when the others are done may leave the last few unfinished)
e2e_rate=$(python3 -c "import sqlite3; c=sqlite3.connect('.wixr/journal.db'); a,b,n=c.execute('select min(created_ms), max(updated_ms), count(*) from events where state = \"done\"').fetchone(); print(int(n*1000/(b-a)))")
}
e2e_run 1; e2e1=$e2e_rate
e2e_run 2; e2e2=$e2e_rate

# 3. backlog drain: N events already queued in the journal (written into it directly), through a no-op hook;
# a dispatch costs the events it may start, so the rate stays flat from 10k to 1M
drain() { # drain N: sets drain_rate (events/s, first to last done)
  mkdir -p "$work/drain$1" && cd "$work/drain$1"
  printf 'return function(event, ctx) return { n = event.n } end\n' > noop.lua
  printf 'serve: {listen: 127.0.0.1:0, concurrency: 64}\nhooks:\n  noop:\n    - script: noop.lua\n' > wixr.yaml
  start "$work/drain$1"
  stop
  python3 - "$1" <<'PY'
import sqlite3, sys, time
n = int(sys.argv[1]); c = sqlite3.connect(".wixr/journal.db"); now = int(time.time() * 1000)
c.executemany("INSERT INTO events(id, name, data, state, created_ms, updated_ms) VALUES(?, 'noop', ?, 'accepted', ?, ?)",
              (("q-%d" % i, '{"n":%d}' % i, now, now) for i in range(n)))
c.commit()
PY
  rm -f .wixr/serve.port
  start "$work/drain$1"
  wait_done "$1"
  stop
  drain_rate=$(python3 -c "import sqlite3; c=sqlite3.connect('.wixr/journal.db'); a,b,n=c.execute('select min(updated_ms), max(updated_ms), count(*) from events where state = \"done\"').fetchone(); assert n == $1, n; print(int(n*1000/(b-a)))")
  rm -rf "$work/drain$1"
}
declare -A drained
for n in ${BENCH_SIZES:-10000 100000 1000000}; do drain "$n"; drained[$n]=$drain_rate; done

# 3. reload: SCRIPTS hook scripts, each reload after one of them changed (only that one is built), 5 reloads
reload_bench() { # reload_bench SCRIPTS: sets build_ms swap_ms kept (medians)
  mkdir -p "$work/reload$1" && cd "$work/reload$1"
  { echo "serve: {listen: 127.0.0.1:0, workers: 2}"; echo "hooks:"; for i in $(seq "$1"); do
      printf 'return function(event, ctx) return { version = 1, n = %d } end\n' "$i" > "h$i.lua"
      printf '  e%d:\n    - script: h%d.lua\n' "$i" "$i"; done; } > wixr.yaml
  start "$work/reload$1"
  for _ in $(seq 600); do # (until both workers loaded the rules)
    [[ $(health | python3 -c 'import json,sys; print(sum(w["state"] == "ready" for w in json.load(sys.stdin)["workers"]))' \
      2>/dev/null) == 2 ]] && break
    sleep 0.1
  done
  for v in 2 3 4 5 6; do
    printf 'return function(event, ctx) return { version = %d } end\n' "$v" > h1.lua
    sleep 1
  done
  stop
  read -r build_ms swap_ms kept < <(python3 -c 'import json
b=[];s=[];k=[]
for l in open("serve.log"):
    if l.startswith("{"):
        d=json.loads(l)
        if d.get("msg")=="rules reloaded":
            f=d["fields"]; b.append(f["build_ms"]); s.append(f["swap_ms"]); k.append(f.get("kept", 0))
b.sort(); s.sort(); k.sort(); print("%.2f %.4f %d" % (b[len(b)//2], s[len(s)//2], k[len(k)//2]))')
}
reload_bench 50; build50=$build_ms swap50=$swap_ms
reload_bench 2000; build2000=$build_ms swap2000=$swap_ms kept2000=$kept
reload_bench 5000; build5000=$build_ms swap5000=$swap_ms

printf '\nwixr serve (%d cores)\n' "$(nproc)"
printf '%-56s %12s %12s %8s\n' "figure" "measured" "target" "ratio"
row() { # row FIGURE MEASURED TARGET RATIO
  printf '%-56s %12s %12s %8s\n' "$1" "$2" "$3" "$4"
  report serve "$1" "$2" - "$4" "$3"
}
x() { printf %.2fx "$(echo "$1" | bc -l)"; }
for c in 16 64; do
  r=intake$c q=p99_$c m=p50_$c
  row "durable intake, events/s (wrk, $c connections)" "${!r}" ">= 5000" "$(x "${!r} / 5000")"
  row "durable intake, p99 latency (ms), $c connections" "${!q}" "< 20" "$(x "20 / ${!q}")"
  row "durable intake, p50 latency (ms), $c connections" "${!m}" "-" "-"
done
row "end to end: orders through route_order.lua, events/s, 1 worker" "$e2e1" "-" "-"
row "end to end: orders through route_order.lua, events/s, 2 workers" "$e2e2" ">= 2000" "$(x "$e2e2 / 2000")"
thousands() { sed ':a;s/\B[0-9]\{3\}\>/,&/;ta' <<<"$1"; } # 1000000 -> 1,000,000
first=
for n in ${BENCH_SIZES:-10000 100000 1000000}; do
  label=$(thousands "$n")
  if [[ -z $first ]]; then
    first=$n
    row "backlog drain, events/s: $label queued" "${drained[$n]}" "-" "-"
  else
    row "backlog drain, events/s: $label queued" "${drained[$n]}" "within 20%" \
      "$(x "${drained[$n]} / ${drained[$first]}") of $(thousands "$first")"
  fi
done
row "reload, 50 scripts, one changed: build (ms, median)" "$build50" "-" "-"
row "reload, 50 scripts: swap (ms, median)" "$swap50" "< 10" "$(printf %.0fx "$(echo "10 / ($swap50 + 0.0001)" | bc -l)")"
row "reload, 2000 scripts, one changed ($kept2000 kept): build (ms, median)" "$build2000" "< 50" \
  "$(printf %.2fx "$(echo "50 / ($build2000 + 0.0001)" | bc -l)")"
row "reload, 2000 scripts: swap (ms, median)" "$swap2000" "< 1" "$(printf %.0fx "$(echo "1 / ($swap2000 + 0.0001)" | bc -l)")"
row "reload, 5000 scripts, one changed: build (ms, median)" "$build5000" "-" "-"
row "reload, 5000 scripts: swap (ms, median)" "$swap5000" "< 1" "$(printf %.0fx "$(echo "1 / ($swap5000 + 0.0001)" | bc -l)")"

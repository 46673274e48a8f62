#!/usr/bin/env python3
"""Isolation of hook runs in worker processes (`wixr serve`, `wixr fire --batch`).

Usage: test_isolation.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

The service is started with --test-faults, which lets hooks require
"wixr.fault": C functions that crash (SIGSEGV), loop in C for ever, take
memory outside the Lua allocator, or try an execve. Hostile hooks of each kind
(and an endless Lua loop, and a network wait that never ends) run interleaved
with 1,000 good events: every good event ends done, each hostile event ends
dead with its reason, /healthz answers and lists the workers throughout, the
service is never restarted, SIGTERM is honoured within serve.drain_ms, and no
core file is written. The workers' limits (no core dumps, no execve, no
WIXR_TOKEN in their environment) are read from /proc.
Python 3 standard library only.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_serve  # noqa: E402
from test_serve import Service, test, TESTS  # noqa: E402
import testlib  # noqa: E402
from testlib import ARGS, check, eq, parse_args, run_tests, work_folder  # noqa: E402

TESTS.clear()  # (test_serve's own tests are not run here)

# Under AddressSanitizer a SIGSEGV would be its report and an abort: the faults
# here are meant to kill the worker as they would in the release build.
FAULT_ENV = {"ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") + ":handle_segv=0").lstrip(":")}

HOSTILE = {
    "segv": "local f = require 'wixr.fault'\nreturn function(event, ctx) f.segv() end\n",
    "spin": "local f = require 'wixr.fault'\nreturn function(event, ctx) f.spin() end\n",
    "bomb": "local f = require 'wixr.fault'\nreturn function(event, ctx) f.leak(8192) end\n",
    "lualoop": "return function(event, ctx) while true do end end\n",
    "stuck": "local wix = require 'wix'\nreturn function(event, ctx) wix.sleep(3600000) end\n",
}
GOOD = "return function(event, ctx)\n  local s = 0\n  for i = 1, 100 do s = s + i end\n  return { n = event.n, s = s }\nend\n"
EXECER = "local f = require 'wixr.fault'\nreturn function(event, ctx) return { exec = f.exec() } end\n"


def config(workers=2):
    hooks = "".join("  %s:\n    - script: %s.lua\n      limits: {wall_ms: 1000}\n" % (n, n) for n in HOSTILE)
    return ("serve:\n  listen: 127.0.0.1:0\n  workers: %d\n  concurrency: 16\n  hard_deadline_ms: 1500\n"
            "  worker_memory_mb: 400\n  poison_after: 2\n  drain_ms: 3000\n"
            "  retry: {attempts: 3, base_ms: 50, max_ms: 200}\n"
            "hooks:\n  good:\n    - script: good.lua\n  execer:\n    - script: execer.lua\n%s" % (workers, hooks))


def files():
    f = {"%s.lua" % n: text for n, text in HOSTILE.items()}
    f["good.lua"] = GOOD
    f["execer.lua"] = EXECER
    return f


def worker_pids(svc):
    return [w["pid"] for w in svc.health().get("workers", [])]


@test
def hostile_hooks_cost_only_their_own_events():
    svc = Service(config(), files(), env=FAULT_ENV)
    svc.start("--test-faults", timeout=30)
    pid = svc.proc.pid
    health_errors = []
    stop = threading.Event()

    def watch_health():
        while not stop.is_set():
            try:
                r = test_serve.http_call(svc.port, "GET", "/healthz", timeout=2)
                doc = json.loads(r.body)
                if r.status not in (200, 503) or "workers" not in doc or \
                        (r.status == 503) != (doc["status"] != "ok" and doc["status"] != "degraded") and \
                        doc["status"] == "ok":
                    health_errors.append("bad /healthz: %d %r" % (r.status, doc))
            except Exception as e:  # an answer must always come
                health_errors.append("/healthz did not answer: %s" % e)
            time.sleep(0.05)

    t = threading.Thread(target=watch_health, daemon=True)
    t.start()
    hostile_ids = {}
    good_ids = []
    names = list(HOSTILE)
    for i in range(1000):
        if i % 200 == 100:
            n = names[(i // 200) % len(names)]
            hostile_ids[n] = svc.accept(n, {"n": i}, "hostile-%s" % n)
        good_ids.append(svc.accept("good", {"n": i}, "good-%d" % i))
    deadline = time.time() + 120
    dead = {}
    while time.time() < deadline:
        evs = {e["id"]: e for e in svc.events_json()}
        pending = [i for i in good_ids + list(hostile_ids.values()) if evs.get(i, {}).get("state") not in ("done", "dead")]
        if not pending:
            dead = evs
            break
        time.sleep(0.5)
    else:
        raise AssertionError("events still pending after 120 s: %r" % pending[:5])
    stop.set()
    t.join(5)
    for i in good_ids:
        eq(dead[i]["state"], "done", "good event %s (error %r)" % (i, dead[i].get("last_error")))
    for n, i in hostile_ids.items():
        eq(dead[i]["state"], "dead", "hostile event %s" % n)
    err = {n: dead[i].get("last_error") or "" for n, i in hostile_ids.items()}
    check("poison" in err["segv"] and "SIGSEGV" in err["segv"] or "worker exited" in err["segv"],
          "a SIGSEGV is poison, named: %r" % err["segv"])
    check("poison" in err["spin"] and "hard deadline" in err["spin"], "an endless C loop: %r" % err["spin"])
    check("poison" in err["bomb"] and ("memory ceiling" in err["bomb"] or "worker" in err["bomb"]),
          "a memory bomb: %r" % err["bomb"])
    check("poison" not in err["lualoop"], "an endless Lua loop is the sandbox's limit, not a dead worker: %r"
          % err["lualoop"])
    check("poison" not in err["stuck"], "a stuck wait ends at wall_ms: %r" % err["stuck"])
    check(not health_errors, "; ".join(health_errors[:3]))
    check(svc.alive() and svc.proc.pid == pid, "the service itself never restarted")
    h = svc.health()
    check(h["worker_restarts"] >= 4, "workers were replaced (%r)" % h["worker_restarts"])
    eq(h["poisoned"], 3, "events quarantined as poison")
    t0 = time.time()
    svc.signal(signal.SIGTERM)
    rc = svc.wait_exit(10)
    eq(rc, 0, "exit status after SIGTERM")
    check(time.time() - t0 < 3.0 + 2.0, "SIGTERM honoured within drain_ms (%.1f s)" % (time.time() - t0))
    cores = [f for root, _, fs in os.walk(svc.dir) for f in fs if f == "core" or f.startswith("core.")]
    eq(cores, [], "core files")


@test
def workers_are_limited():
    svc = Service(config(workers=1), files(), env=FAULT_ENV)
    svc.start("--test-faults", timeout=30)
    pids = worker_pids(svc)
    eq(len(pids), 1, "one worker")
    w = pids[0]
    with open("/proc/%d/limits" % w) as f:
        limits = f.read()
    core = [line for line in limits.splitlines() if line.startswith("Max core file size")][0].split()
    eq(core[4], "0", "a worker's core file size limit")
    with open("/proc/%d/environ" % w, "rb") as f:
        env = f.read().split(b"\0")
    check(not any(e.startswith(b"WIXR_TOKEN=") for e in env), "WIXR_TOKEN is not in a worker's environment")
    with open("/proc/%d/status" % w) as f:
        status = f.read()
    check("Seccomp:\t2" in status, "a worker runs under a seccomp filter")
    svc.accept("execer", {}, "exec-1")
    ev = svc.wait_event("exec-1", ("done", "dead"), timeout=20)
    eq(ev["state"], "done", "the execer event")
    res = json.dumps(ev)
    check("Operation not permitted" in res, "execve was refused in the worker: %s" % res[:300])


@test
def fire_batch_runs_in_workers_and_survives_a_crash():
    d = work_folder("wixr-iso-fire-")
    for name, text in files().items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    with open(os.path.join(d, "wixr.yaml"), "w") as f:
        f.write(config())
    lines = [json.dumps({"event": "good", "id": "g%d" % i, "data": {"n": i}}) for i in range(300)]
    lines.insert(150, json.dumps({"event": "segv", "id": "crash-1", "data": {}}))
    p = subprocess.run([ARGS.wixr, "fire", "--batch", "-", "--json", "--workers", "2", "--test-faults"], cwd=d,
                       input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=120,
                       env=testlib.clean_env(FAULT_ENV))
    out = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    summary = out[-1]
    eq((summary["ok"], summary["failed"]), (300, 1), "fire --batch: good events ok, the crashing one failed "
       "(stderr %r)" % p.stderr[-500:])
    crash = [x for x in out if x.get("id") == "crash-1"]
    check(crash and "SIGSEGV" in crash[0].get("error", "") or "worker" in crash[0].get("error", ""),
          "the crash is named: %r" % crash)


def main():
    only = parse_args(__doc__)
    try:
        return run_tests(TESTS, only)
    finally:
        test_serve.remove_work_folders()


if __name__ == "__main__":
    sys.exit(main())

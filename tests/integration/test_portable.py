#!/usr/bin/env python3
"""The wixr binary on its own, and one owner per emulator state file.

Usage: test_portable.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

A copy of the binary, run in a folder outside the source tree with no hint
of where the source is (or with WIXR_HOME pointing at an empty folder), must
work: the Lua half and the emulator's default catalog are compiled in; a
configured catalog still wins. A second process that wants an emulator state
file in use is refused at once, with the owner's pid, command and what to do.
Python 3 standard library only. The last line printed is "N passed, N failed".
"""
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import *  # noqa: F401,F403
from testlib import ARGS

CREATE = """
local wix = require("wix")
local p = wix.packages.create{
  account_id = "%s",
  products = {{ catalog_product_id = "%s", country_code = "DE", billing = { unit = "YEAR", count = 1 } }},
}
print(p.id)
""" % (JANE, P_CORE)

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def copied_binary():
    """The wixr binary copied into a folder of its own."""
    d = work_folder("wixr-bin-")
    path = os.path.join(d, "wixr")
    shutil.copy2(ARGS.wixr, path)
    return path


def run(binary, args, cwd, env=None, timeout=20):
    """Runs binary with args in cwd, with clean_env minus WIXR_HOME plus env."""
    e = {k: v for k, v in clean_env().items() if k != "WIXR_HOME"}
    e.update(env or {})
    t0 = time.time()
    p = subprocess.run([binary] + args, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout,
                       errors="replace")
    r = Run(args, p.returncode, p.stdout, p.stderr, time.time() - t0, False)
    no_sanitizer_report(r.err, "wixr " + " ".join(args))
    return r


def start_sandbox(binary, cwd, *extra, env=None):
    """`wixr sandbox serve` on a free port in cwd; returns (process, port)."""
    e = {k: v for k, v in clean_env().items() if k != "WIXR_HOME"}
    e.update(env or {})
    pf = os.path.join(cwd, "port")
    log = open(os.path.join(cwd, "sandbox.log"), "ab")
    proc = subprocess.Popen([binary, "sandbox", "serve", "--listen", "127.0.0.1:0", "--port-file", pf] +
                            list(extra), cwd=cwd, env=e, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    port = wait_for_port_file(proc, pf, 10, lambda: read_log(os.path.join(cwd, "sandbox.log")), "sandbox")
    return proc, port


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def admin_get(port, what):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/__admin/" + what)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, json.loads(body)


@test
def runs_anywhere_on_the_builtin_catalog():
    binary = copied_binary()
    empty_home = work_folder("wixr-nohome-")
    for env in ({"WIXR_HOME": empty_home}, {}):
        work = work_folder("wixr-elsewhere-")
        with open(os.path.join(work, "create.lua"), "w") as f:
            f.write(CREATE)
        r = run(binary, ["run", "create.lua"], work, env)
        check(r.rc == 0, "wixr run outside the source tree (%r): %s" % (env, r))
        pid = r.out.strip()
        check(len(pid) == 36 and pid.count("-") == 4, "a package id on stdout: %s" % r)
        check(os.path.exists(os.path.join(work, ".wixr", "sandbox.db")), "state in this folder's .wixr/")
        proc, port = start_sandbox(binary, work, "--db", ":memory:", env=env)
        try:
            st, j = admin_get(port, "accounts")
            eq(st, 200, "sandbox serve answers")
            check(P_CORE in [p["id"] for p in j["products"]], "the built-in catalog's products: %r" % j["products"])
        finally:
            eq(stop(proc), 0, "sandbox serve exits 0 on SIGTERM")
        log = read_log(os.path.join(work, "sandbox.log"))
        check("built-in catalog" in log, "the start line says which catalog: %r" % log)


@test
def a_configured_catalog_still_wins():
    binary = copied_binary()
    work = work_folder("wixr-catalog-")
    own = "7a1c0e52-0000-4000-8000-00000000abcd"
    with open(os.path.join(work, "catalog.yaml"), "w") as f:
        f.write("products:\n  - id: %s\n    name: Own Plan\n    type: own\n    cycles:\n"
                "      - {type: RECURRING, unit: YEAR, count: 1}\n"
                "accounts:\n  - id: %s\n    type: RESELLER\n    name: Own\n" % (own, JANE))
    with open(os.path.join(work, "wixr.yaml"), "w") as f:
        f.write("wix:\n  sandbox:\n    catalog: catalog.yaml\n")
    with open(os.path.join(work, "create.lua"), "w") as f:
        f.write(CREATE)
    r = run(binary, ["run", "create.lua"], work)
    check(r.rc != 0 and "PRODUCT_NOT_FOUND" in r.err, "the built-in product is not in the configured catalog: %s"
          % r)
    with open(os.path.join(work, "own.lua"), "w") as f:
        f.write(CREATE.replace(P_CORE, own))
    r = run(binary, ["run", "own.lua"], work)
    check(r.rc == 0, "the configured catalog's product: %s" % r)
    proc, port = start_sandbox(binary, work, "--db", ":memory:", "--catalog", "catalog.yaml")
    try:
        eq([p["id"] for p in admin_get(port, "accounts")[1]["products"]], [own], "sandbox serve --catalog")
    finally:
        stop(proc)


@test
def a_state_file_in_use_is_refused_at_once():
    work = work_folder("wixr-inuse-")
    with open(os.path.join(work, "create.lua"), "w") as f:
        f.write(CREATE)
    proc, port = start_sandbox(ARGS.wixr, work)  # its state: .wixr/sandbox.db in this folder
    try:
        r = run(ARGS.wixr, ["run", "create.lua"], work)
        check(r.rc != 0, "wixr run on a state file in use must fail: %s" % r)
        check(r.elapsed < 2, "refused at once, not after retries: %.1f s" % r.elapsed)
        want = ".wixr/sandbox.db is in use by process %d (wixr sandbox serve)" % proc.pid
        check(want in r.err, "names the owner: %s" % r)
        url = "WIX_BASE_URL=http://127.0.0.1:%d" % port
        check(url in r.err, "says how to use it over HTTP (%s): %s" % (url, r))
        # ... and that advice works
        r = run(ARGS.wixr, ["run", "create.lua"], work,
                {"WIX_BASE_URL": "http://127.0.0.1:%d" % port, "WIX_API_KEY": "any"})
        check(r.rc == 0, "the same run over HTTP: %s" % r)
        r = run(ARGS.wixr, ["sandbox", "serve", "--listen", "127.0.0.1:0"], work, timeout=10)
        check(r.rc != 0 and want in r.err, "a second sandbox serve on the file: %s" % r)
    finally:
        stop(proc, signal.SIGKILL)
    # The owner died without cleaning up: what it left behind must not stand in the way.
    r = run(ARGS.wixr, ["run", "create.lua"], work)
    check(r.rc == 0, "after the owner is gone the file is free: %s" % r)


@test
def a_state_file_held_by_serve_is_refused_at_once():
    """`wixr serve` on the embedded emulator owns .wixr/sandbox.db once it has run an event."""
    work = work_folder("wixr-serve-")
    with open(os.path.join(work, "create.lua"), "w") as f:
        f.write(CREATE)
    with open(os.path.join(work, "hook.lua"), "w") as f:
        f.write('local wix = require("wix")\nreturn function(event, ctx)\n  return wix.packages.create{account_id = "%s",'
                ' products = {{catalog_product_id = "%s", country_code = "DE", billing = {unit = "YEAR", count = 1}}}}'
                '.id\nend\n' % (JANE, P_CORE))
    config = os.path.join(work, "wixr.yaml")
    with open(config, "w") as f:
        f.write("hooks:\n  order.created:\n    - script: hook.lua\n")
    event = '{"event_id": "e-1", "order_id": "o-1"}'
    e = {k: v for k, v in clean_env().items() if k != "WIXR_HOME"}
    log = open(os.path.join(work, "serve.log"), "ab")
    proc = subprocess.Popen([ARGS.wixr, "serve", "--config", config, "--listen", "127.0.0.1:0",
                             "--insecure-no-auth"], cwd=work, env=e, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        port = wait_for_port_file(proc, os.path.join(work, ".wixr", "serve.port"), 10,
                                  lambda: read_log(os.path.join(work, "serve.log")), "serve")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/v1/events/order.created", body=event, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        eid = json.loads(r.read())["id"]
        eq(r.status, 202, "event accepted")
        state, deadline = None, time.time() + 15
        while state not in ("done", "dead") and time.time() < deadline:
            time.sleep(0.1)
            c.request("GET", "/v1/events/" + eid)
            state = json.loads(c.getresponse().read()).get("state")
        c.close()
        eq(state, "done", "the event ran on the embedded emulator")
        r = run(ARGS.wixr, ["run", "create.lua"], work)
        check(r.rc != 0 and r.elapsed < 2, "refused at once: %s (%.1f s)" % (r, r.elapsed))
        check(".wixr/sandbox.db is in use by process %d (wixr serve)" % proc.pid in r.err, "names serve: %s" % r)
    finally:
        stop(proc)


def main():
    only = parse_args(__doc__)
    return run_tests(TESTS, only)


if __name__ == "__main__":
    sys.exit(main())

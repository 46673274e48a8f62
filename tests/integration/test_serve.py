#!/usr/bin/env python3
"""Integration tests of `wixr serve`, the durable provisioning service.

Usage: test_serve.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Each test writes a wixr.yaml (with a `serve:` section listening on
127.0.0.1:0) and its hook scripts into a temporary folder of its own and
starts `wixr serve` there; the service writes its port to .wixr/serve.port.
With no WIX_* variables the hooks use the in-process emulator (.wixr/sandbox.db);
the crash test points them at a `wixr sandbox serve` over HTTP instead, so that
what was provisioned can be counted from outside. Covered: intake, auth and
hostile input; per-key ordering (also across a retry), overlap of other keys,
configurable order keys, a retry backlog that must not stall other events;
retries, dead events, `wixr events list|show|retry|purge`, the same idempotency
keys on every re-run; kill -9 while events flow (nothing lost, nothing
doubled), the attempt cap for runs that die with the process, a second service
on the same folder; hot reload under load, with a run of the old rules in
flight, broken scripts and configurations; chained events; the SIGTERM drain
and its deadline; /healthz and /metrics; journal failures (a full disk on a
small tmpfs, mounted as root; a journal deleted or overwritten under the
service) and the files' modes; the HTTP front (answers before the body,
ambiguous framing, NUL in a header, bidi ids). After each test its services are
checked for crashes and sanitizer reports, and every process started is killed
(also at exit).
Python 3 standard library only.
"""
import atexit
import calendar
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib  # noqa: E402
from testlib import (ARGS, JANE, P_SERVICE, SITE_JANE1, UNKNOWN_GUID, Client, Resp, Server, all_packages,  # noqa: E402
                     TestFailure, check, eq, json_body, ok, parse_args, read_log, run_tests, sanitizer_report,
                     wait_for_port_file, wix_error, work_folder)

TESTS = []
TOKEN = "serve-test-token-7c1e"
SANDBOX_NOTICE = "using the embedded sandbox emulator"
GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
DEFAULT = object()


# ---------------------------------------------------------------------------
# Processes: every `wixr serve` started is tracked, and killed after its test
# and at exit.
# ---------------------------------------------------------------------------

SERVICES = []


def kill_all_services():
    for s in list(SERVICES):
        s.kill()
    SERVICES.clear()


def remove_work_folders():
    kill_all_services()
    testlib.remove_work_folders()


atexit.register(kill_all_services)


def service_problems():
    """Crashes (death by a signal we did not send) and sanitizer reports of this test's services."""
    out = []
    for s in SERVICES:
        out += s.problems()
    return out


def test(fn):
    def wrapped():
        try:
            fn()
        except Exception as e:
            problems = service_problems()
            kill_all_services()
            if problems:
                what = "" if isinstance(e, TestFailure) else "%s: " % type(e).__name__
                raise TestFailure("%s%s [and: %s]" % (what, e, "; ".join(problems))) from None
            raise
        except BaseException:
            kill_all_services()
            raise
        problems = service_problems()
        kill_all_services()
        if problems:
            raise TestFailure("; ".join(problems))
    wrapped.__name__ = fn.__name__
    TESTS.append(wrapped)
    return wrapped


def clean_env(extra=None, token=TOKEN):
    return testlib.clean_env(dict({"WIXR_TOKEN": token} if token is not None else {}, **(extra or {})))


class Service:
    """A working folder with a wixr.yaml and scripts, and the `wixr serve` run in it."""

    def __init__(self, config, files=None, token=TOKEN, env=None):
        self.dir = work_folder("wixr-serve-")
        self.write("wixr.yaml", config)
        for name, text in (files or {}).items():
            self.write(name, text)
        self.token = token
        self.env = env or {}
        self.proc = None
        self.port = None
        self.starts = 0
        self.log_path = os.path.join(self.dir, "serve.log")
        self.logf = None
        self.crashes = []
        self.crashed_pids = set()

    # files
    def write(self, name, text):
        """Writes a file atomically (a reload never sees half of it)."""
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(os.path.dirname(path), ".tmp-" + os.path.basename(path))
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path

    def state(self, name):
        return os.path.join(self.dir, ".wixr", name)

    # process
    def spawn(self, *args, token=DEFAULT):
        """Starts `wixr serve` without waiting for it."""
        for f in ("serve.port",):
            try:
                os.unlink(self.state(f))
            except OSError:
                pass
        token = self.token if token is DEFAULT else token
        self.note_crash()
        if self.logf:
            self.logf.close()
        self.logf = open(self.log_path, "ab")
        self.log_mark = self.logf.tell()
        self.logf.write(("--- start %d\n" % (self.starts + 1)).encode())
        self.logf.flush()
        self.starts += 1
        self.proc = subprocess.Popen([ARGS.wixr, "serve"] + list(args), cwd=self.dir,
                                     env=clean_env(self.env, token), stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        if self not in SERVICES:
            SERVICES.append(self)
        return self.proc

    def start(self, *args, token=DEFAULT, timeout=10):
        self.spawn(*args, token=token)
        self.port = wait_for_port_file(self.proc, self.state("serve.port"), timeout, self.log_text, "wixr serve")
        return self

    def note_crash(self):
        """Remembers a previous process that died of a signal other than our SIGKILL."""
        if self.proc is not None and self.proc.poll() is not None and self.proc.returncode < 0 \
                and self.proc.returncode != -signal.SIGKILL and self.proc.pid not in self.crashed_pids:
            self.crashed_pids.add(self.proc.pid)
            self.crashes.append("wixr serve (pid %d, start %d) died of signal %d"
                                % (self.proc.pid, self.starts, -self.proc.returncode))

    def problems(self):
        self.note_crash()
        out = list(self.crashes)
        report = sanitizer_report(self.log_text(), 100, 1200)
        if report:
            out.append("sanitizer report: %s" % report)
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL (the crash test's weapon, and the clean-up)."""
        self.note_crash()
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except Exception:
                pass
        if self.logf:
            self.logf.close()
            self.logf = None

    def log_text(self):
        return read_log(self.log_path)

    def log_of_this_start(self):
        with open(self.log_path, "rb") as f:
            f.seek(getattr(self, "log_mark", 0))
            return f.read().decode("utf-8", "replace")

    def log_records(self):
        """The JSON log lines on stderr; anything else but the sandbox notice is a failure."""
        out = []
        for line in self.log_text().splitlines():
            if not line or line.startswith("--- start") or SANDBOX_NOTICE in line:
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                raise TestFailure("a log line of wixr serve is not JSON: %r" % line)
        return out

    # wixr commands in the folder
    def wixr(self, *args, timeout=20):
        p = subprocess.run([ARGS.wixr] + list(args), cwd=self.dir, env=clean_env(self.env, None),
                           capture_output=True, text=True, timeout=timeout, errors="replace")
        return p

    def events_json(self, *args):
        p = self.wixr("events", "list", "--json", "--limit", "0", *args)
        eq(p.returncode, 0, "wixr events list exit status (stderr %r)" % p.stderr[-300:])
        return [json.loads(x) for x in p.stdout.splitlines() if x.strip()]

    # HTTP
    def call(self, method, path, body=None, token=DEFAULT, headers=None, timeout=10, port=None):
        return http_call(port or self.port, method, path, body,
                         self.token if token is DEFAULT else token, headers, timeout)

    def post(self, name, data, event_id=None, **kw):
        h = dict(kw.pop("headers", None) or {})
        if event_id is not None:
            h["X-Event-Id"] = event_id
        return self.call("POST", "/v1/events/" + name, data, headers=h, **kw)

    def accept(self, name, data, event_id=None):
        r = self.post(name, data, event_id)
        check(r.status == 202, "POST /v1/events/%s: expected 202, got %s" % (name, r.short()))
        eq(r.json.get("state"), "accepted", "state of an accepted event")
        if event_id is not None:
            eq(r.json.get("id"), event_id, "id of the accepted event")
        return r.json["id"]

    def get(self, event_id):
        r = self.call("GET", "/v1/events/" + event_id)
        return ok(r, "GET /v1/events/%s" % event_id)

    def health(self):
        return ok(self.call("GET", "/healthz", token=None), "GET /healthz")

    def metrics(self):
        r = self.call("GET", "/metrics")
        eq(r.status, 200, "GET /metrics status (%s)" % r.short())
        return r.body.decode()

    def wait_event(self, event_id, states=("done",), timeout=10):
        deadline = time.time() + timeout
        ev = None
        while time.time() < deadline:
            ev = self.get(event_id)
            if ev["state"] in states:
                return ev
            time.sleep(0.02)
        raise TestFailure("event %s did not reach %s within %.1f s; it is %r"
                          % (event_id, "/".join(states), timeout, ev))

    def wait_health(self, pred, what, timeout=10):
        deadline = time.time() + timeout
        h = None
        while time.time() < deadline:
            h = self.health()
            if pred(h):
                return h
            time.sleep(0.03)
        raise TestFailure("/healthz never showed %s within %.1f s; last %r" % (what, timeout, h))

    def wait_metrics(self, pred, what, timeout=10):
        deadline = time.time() + timeout
        m = None
        while time.time() < deadline:
            m = parse_metrics(self.metrics())
            if pred(m):
                return m
            time.sleep(0.03)
        raise TestFailure("/metrics never showed %s within %.1f s; last %r" % (what, timeout, m))


def http_call(port, method, path, body=None, token=None, headers=None, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {}
        if token is not None:
            h["Authorization"] = "Bearer " + token
        data = json_body(body, h)
        h.update(headers or {})
        t0 = time.time()
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        payload = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, payload, time.time() - t0)
    finally:
        conn.close()


class KeepAlive:
    """One keep-alive connection for a stream of POSTs (the load tests)."""

    def __init__(self, svc):
        self.svc = svc
        self.conn = None
        self.port = None

    def post(self, name, data, event_id, timeout=10):
        if self.conn is None or self.port != self.svc.port:
            self.close()
            self.port = self.svc.port
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            self.conn.request("POST", "/v1/events/" + name, body=json.dumps(data).encode(),
                              headers={"Authorization": "Bearer " + self.svc.token, "X-Event-Id": event_id,
                                       "Content-Type": "application/json"})
            r = self.conn.getresponse()
            body = r.read()
            if r.will_close:
                self.close()
            return r.status, body
        except Exception:
            self.close()
            raise

    def close(self):
        if self.conn:
            self.conn.close()
        self.conn = None


def parse_metrics(text):
    """{'name{labels}': value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        out[name] = float(value)
    return out


def serve_config(serve="", hooks="", wix="", runtime=""):
    return ("wix:\n  rate_limit: {requests: 0}\n  sandbox: {catalog: %s}\n%s"
            "serve:\n  listen: 127.0.0.1:0\n%s%s"
            "hooks:\n%s") % (json.dumps(ARGS.catalog), wix, serve, runtime, hooks)


def hook_of(ev, i=0):
    res = ev.get("result")
    check(isinstance(res, dict) and isinstance(res.get("hooks"), list) and len(res["hooks"]) > i,
          "event %s has no result for hook %d: %r" % (ev.get("id"), i, ev))
    return res["hooks"][i]


def ms_of(iso):
    """ms since the epoch of an ISO time with ms (UTC)."""
    check(isinstance(iso, str) and ISO_RE.match(iso), "not an ISO time with ms: %r" % (iso,))
    t = time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(t) * 1000 + int(iso[20:23])


CREATE_LUA = """local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", external_id = event.sub,
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  return { sub = event.sub, package = p.id, event_id = ctx.event.id }
end
""" % (JANE, P_SERVICE)

COUNT_LUA = """local wix = require "wix"
return function(event, ctx)
  return { n = #wix.packages.all{ filter = { external_id = event.of } } }
end
"""

FAIL_LUA = """return function(event, ctx)
  if ctx.options.fail then
    error("told to fail (" .. tostring(event.n) .. ")")
  end
  return { fixed = true, n = event.n }
end
"""


def count_packages(svc, external_id):
    """Counts packages with an external id through a `count` event of the service."""
    eid = svc.accept("count", {"of": external_id})
    ev = svc.wait_event(eid)
    return hook_of(ev)["result"]["n"]


# ---------------------------------------------------------------------------
# 1. Intake, auth, hostile input
# ---------------------------------------------------------------------------

def intake_service(extra_serve="", files=None):
    hooks = ("  provision:\n    - script: create.lua\n"
             "  count:\n    - script: count.lua\n")
    fs = {"create.lua": CREATE_LUA, "count.lua": COUNT_LUA}
    fs.update(files or {})
    return Service(serve_config(serve=extra_serve, hooks=hooks), fs)


@test
def intake_refuses_to_start_without_a_token():
    svc = intake_service()
    for token in (None, ""):
        svc.spawn(token=token)
        rc = svc.wait_exit(10)
        text = svc.log_of_this_start()
        eq(rc, 3, "exit status with WIXR_TOKEN %r (log %r)" % (token, text[-400:]))
        check("WIXR_TOKEN is not set" in text and "--insecure-no-auth" in text,
              "the message names WIXR_TOKEN and --insecure-no-auth: %r" % text[-400:])
        check(not os.path.exists(svc.state("serve.pid")), "no pid file left by a refused start")
        check(not os.path.exists(svc.state("serve.port")), "no port file left by a refused start")
    # --insecure-no-auth is for loopback only
    svc.spawn("--insecure-no-auth", "--listen", "0.0.0.0:0", token=None)
    eq(svc.wait_exit(10), 3, "exit status of --insecure-no-auth on 0.0.0.0 (log %r)"
       % svc.log_of_this_start()[-300:])
    check("only allowed on a loopback address" in svc.log_of_this_start(),
          "message: %r" % svc.log_of_this_start()[-300:])
    # no configuration at all
    empty = work_folder("wixr-serve-")
    p = subprocess.run([ARGS.wixr, "serve"], cwd=empty, env=clean_env(), capture_output=True, text=True,
                       timeout=10)
    eq(p.returncode, 3, "exit status with no configuration (stderr %r)" % p.stderr)
    check("no configuration found" in p.stderr, "message: %r" % p.stderr)
    # usage
    p = svc.wixr("serve", "--bogus")
    eq(p.returncode, 2, "exit status of an unknown option")
    p = svc.wixr("serve", "--help")
    eq(p.returncode, 0, "serve --help exit status")
    check("POST /v1/events/NAME" in p.stdout, "help text: %r" % p.stdout[:200])


@test
def intake_insecure_no_auth_on_loopback():
    svc = intake_service().start("--insecure-no-auth", token=None)
    r = svc.post("provision", {"sub": "na-1"}, "na-1", token=None)
    eq(r.status, 202, "POST without a token under --insecure-no-auth (%s)" % r.short())
    ev = svc.wait_event("na-1")
    eq(hook_of(ev)["status"], "ok", "hook status")
    r = svc.call("GET", "/metrics", token=None)
    eq(r.status, 200, "/metrics without a token under --insecure-no-auth")
    check(any(x.get("msg") == "wixr serve listening" and x.get("fields", {}).get("auth") is False
              for x in svc.log_records()), "the listening log line says auth false: %r" % svc.log_text()[-500:])
    svc.kill()
    # A token in the environment wins over --insecure-no-auth: auth stays on.
    svc.start("--insecure-no-auth")
    eq(svc.post("provision", {"sub": "na-2"}, token=None).status, 401,
       "POST without a token when WIXR_TOKEN is set, even with --insecure-no-auth")


@test
def intake_auth_on_every_route_but_healthz():
    svc = intake_service().start()
    routes = [("POST", "/v1/events/provision", {"sub": "x"}), ("GET", "/v1/events/some-id", None),
              ("GET", "/metrics", None), ("GET", "/nowhere", None), ("DELETE", "/v1/events/some-id", None)]
    bad = [None, "Bearer wrong", "Bearer " + TOKEN + "x", "Bearer " + TOKEN[:-1], "Bearer ", TOKEN,
           "Basic " + TOKEN, "Bearer  " + TOKEN]
    for method, path, body in routes:
        for auth in bad:
            h = {} if auth is None else {"Authorization": auth}
            r = svc.call(method, path, body, token=None, headers=h)
            eq(r.status, 401, "%s %s with Authorization %r (%s)" % (method, path, auth, r.short()))
            eq(wix_error(r.json, "401")[0], "UNAUTHENTICATED", "401 error code")
    r = svc.call("GET", "/healthz", token=None)
    eq(r.status, 200, "/healthz without a token")
    h = r.json
    eq((h["status"], h["rules_version"], h["last_reload"]["ok"], h["reloads"], h["reload_failures"]),
       ("ok", 1, True, 0, 0), "fresh /healthz")
    eq(h["journal"], {"accepted": 0, "running": 0, "done": 0, "retrying": 0, "dead": 0, "depth": 0},
       "fresh journal counts")
    eq(svc.call("GET", "/healthz", token="wrong").status, 200, "/healthz with a wrong token is still served")
    eq(count_packages(svc, "x"), 0, "nothing was provisioned by refused requests")
    eq(len(svc.events_json()), 1, "the journal holds only the count event")
    with open(svc.state("serve.pid")) as f:
        eq(int(f.read().strip()), svc.proc.pid, "serve.pid holds the pid")


@test
def intake_accept_get_and_duplicate():
    svc = intake_service().start()
    r = svc.post("provision", {"sub": "sub-1", "account_id": JANE}, "ev-1")
    eq(r.status, 202, "first POST (%s)" % r.short())
    eq(r.json, {"id": "ev-1", "state": "accepted"}, "202 body")
    ev = svc.wait_event("ev-1")
    eq((ev["id"], ev["name"], ev["state"], ev["attempts"]), ("ev-1", "provision", "done", 1), "event fields")
    check(ISO_RE.match(ev["created"]) and ISO_RE.match(ev["updated"]), "times: %r" % ev)
    check(ms_of(ev["updated"]) >= ms_of(ev["created"]), "updated >= created: %r" % ev)
    eq(ev.get("order_key"), "account_id=" + JANE, "order key from account_id")
    eq(ev.get("last_error"), None, "no last_error on a done event")
    eq((ev.get("next_attempt"), ev.get("next_attempt_ms")), (None, None), "no next_attempt on a done event")
    res = ev["result"]
    eq((res["event"], res["id"], res["ok"]), ("provision", "ev-1", True), "run report")
    hk = hook_of(ev)
    eq((hk["hook"], hk["status"]), ("provision (create.lua)", "ok"), "hook report")
    eq(hk["result"]["sub"], "sub-1", "the hook's result")
    eq(hk["result"]["event_id"], "ev-1", "ctx.event.id is the event id")
    check(isinstance(hk["ms"], int) and hk["ms"] >= 0, "ms: %r" % hk)
    # the same id again: 200 duplicate, nothing runs twice
    for body in ({"sub": "sub-1"}, {"sub": "something else"}):
        r = svc.post("provision", body, "ev-1")
        eq(r.status, 200, "duplicate POST (%s)" % r.short())
        eq(r.json.get("duplicate"), True, "duplicate flag")
        eq((r.json["event"]["id"], r.json["event"]["state"], r.json["event"]["attempts"]), ("ev-1", "done", 1),
           "the duplicate answer carries the stored event")
    time.sleep(0.3)
    eq(svc.get("ev-1")["attempts"], 1, "attempts after the duplicates")
    eq(count_packages(svc, "sub-1"), 1, "packages provisioned for sub-1")
    eq(count_packages(svc, "something else"), 0, "the duplicate's data was not run")
    # a duplicate sent while the first is still queued
    ids = [svc.post("provision", {"sub": "sub-2"}, "ev-2") for _ in range(3)]
    eq([r.status for r in ids], [202, 200, 200], "the same id three times in a row")
    svc.wait_event("ev-2")
    eq(count_packages(svc, "sub-2"), 1, "packages provisioned for sub-2")
    # unknown id
    r = svc.call("GET", "/v1/events/no-such-event")
    eq(r.status, 404, "GET of an unknown id")
    eq(wix_error(r.json, "404")[0], "NOT_FOUND", "404 code")


@test
def intake_event_id_from_body_or_generated():
    svc = intake_service().start()
    r = svc.post("provision", {"sub": "b-1", "event_id": "body-id-1"})
    eq((r.status, r.json.get("id")), (202, "body-id-1"), "event_id in the body (%s)" % r.short())
    r = svc.post("provision", {"sub": "b-1", "event_id": "body-id-1"})
    eq((r.status, r.json.get("duplicate")), (200, True), "the same body event_id again")
    r = svc.post("provision", {"sub": "b-2", "event_id": "body-id-2"}, "header-id-2")
    eq((r.status, r.json.get("id")), (202, "header-id-2"), "X-Event-Id wins over the body")
    r = svc.post("provision", {"sub": "b-3"})
    eq(r.status, 202, "no id at all (%s)" % r.short())
    gen = r.json["id"]
    check(GUID_RE.match(gen), "a generated id is a GUID v4: %r" % gen)
    ev = svc.wait_event(gen)
    eq(hook_of(ev)["result"]["event_id"], gen, "the hook sees the generated id")
    eq(ev.get("order_key"), None, "no order key without external_id/subscription_id/account_id")
    for bad in ({"event_id": 42}, {"event_id": ""}, {"event_id": "x" * 201}, {"event_id": ["a"]}):
        r = svc.post("provision", bad)
        eq(r.status, 400, "event_id %r (%s)" % (str(bad)[:40], r.short()))
        eq(wix_error(r.json, "400")[0], "INVALID_ARGUMENT event_id", "error kind")
    r = svc.post("provision", {"sub": "b-5"}, "")
    eq(r.status, 400, "an empty X-Event-Id (%s)" % r.short())
    r = svc.post("provision", {"sub": "b-4"}, "y" * 200)
    eq(r.status, 202, "an id of 200 characters is accepted")
    svc.wait_event("body-id-1")
    svc.wait_event("header-id-2")
    eq(count_packages(svc, "b-1"), 1, "b-1 provisioned once")


@test
def intake_every_accepted_id_can_be_fetched():
    """An id that POST accepts must be readable with GET /v1/events/<percent-encoded id>
    (or be refused at intake with 400)."""
    svc = intake_service().start()
    for eid in ("ordre \u00e9 1", "a b", "x?y#z", "100%", "a%2Fb", "a/b", "../../healthz"):
        r = svc.post("provision", {"sub": "id-" + eid},
                     headers={"X-Event-Id": eid.encode("utf-8").decode("latin-1")})
        if r.status == 400:
            continue
        eq(r.status, 202, "POST with X-Event-Id %r (%s)" % (eid, r.short()))
        eq(r.json["id"], eid, "the id echoed back")
        g = svc.call("GET", "/v1/events/" + urllib.parse.quote(eid, safe=""))
        check(g.status == 200 and (g.json or {}).get("id") == eid,
              "event %r was accepted (202) but GET /v1/events/%s answers %s" %
              (eid, urllib.parse.quote(eid, safe=""), g.short()))


@test
def intake_hostile_input():
    svc = intake_service("  max_body_kb: 8\n").start()

    def error(r, status, code, what):
        eq(r.status, status, "%s (%s)" % (what, r.short()))
        check(isinstance(r.json, dict), "%s: a JSON body: %r" % (what, r.body[:200]))
        kind, text = wix_error(r.json, what)
        eq(kind, code, "%s: error code" % what)
        check(text, "%s: a description" % what)
        eq(r.headers.get("content-type"), "application/json", "%s: content type" % what)
        return text

    r = svc.post("nosuch.event", {"a": 1})
    error(r, 404, "UNKNOWN_EVENT", "unknown event name")
    msg = error(svc.post("provision", '{"sub": "a",\n  "x": }'), 400, "INVALID_ARGUMENT body", "bad JSON")
    check("line 2" in msg and "column" in msg, "the message gives line and column: %r" % msg)
    for body, kind in (("[1, 2]", "array"), ('"text"', "string"), ("42", "number"), ("null", "null"),
                       ("true", "boolean")):
        msg = error(svc.post("provision", body), 400, "INVALID_ARGUMENT body", "body %s" % body)
        check(msg.endswith("not %s" % kind), "the message names the type (%s): %r" % (kind, msg))
    for body, what in (("", "an empty body"), ("{}  {}", "two documents"), ('{"a": 1', "a cut document"),
                       (b'{"a": "\xff\xfe"}', "invalid UTF-8")):
        error(svc.post("provision", body), 400, "INVALID_ARGUMENT body", "body %s" % what)
    deep = '{"a": ' + "[" * 1000 + "]" * 1000 + "}"
    error(svc.post("provision", deep), 400, "INVALID_ARGUMENT body", "1000 levels of nesting")
    deep_obj = '{"a": ' + '{"b": ' * 1000 + "1" + "}" * 1000 + "}"
    error(svc.post("provision", deep_obj), 400, "INVALID_ARGUMENT body", "1000 levels of objects")
    # sizes: max_body_kb 8 = 8192 bytes
    pad = '{"sub": "big", "pad": "%s"}'
    exact = pad % ("p" * (8192 - len(pad % "")))
    eq(len(exact), 8192, "test body size")
    r = svc.post("provision", exact, "exactly-8192")
    eq(r.status, 202, "a body of exactly max_body_kb (%s)" % r.short())
    error(svc.post("provision", exact[:-2] + 'pp"}'), 413, "PAYLOAD_TOO_LARGE", "8193 bytes")
    error(svc.post("provision", pad % ("p" * 100000)), 413, "PAYLOAD_TOO_LARGE", "100 kB body")
    # chunked, no Content-Length: the cap still holds
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
    try:
        chunks = (b'{"pad": "' + b"q" * 4000, b"q" * 4000, b"q" * 4000 + b'"}')
        conn.request("POST", "/v1/events/provision", body=iter(chunks), encode_chunked=True,
                     headers={"Authorization": "Bearer " + TOKEN, "Transfer-Encoding": "chunked"})
        cr = conn.getresponse()
        eq(cr.status, 413, "chunked body over the cap (%s)" % cr.read()[:200])
    finally:
        conn.close()
    # names
    for name in ("bad$name", "x" * 101):
        error(svc.post(name, {"a": 1}), 400, "INVALID_ARGUMENT name", "event name %r" % name[:20])
    # routes and methods
    error(svc.call("GET", "/nowhere"), 404, "NOT_FOUND", "unknown route")
    error(svc.call("POST", "/v1/events/"), 404, "NOT_FOUND", "no event name")
    error(svc.call("POST", "/v1/events/provision/extra", {"a": 1}), 404, "NOT_FOUND", "a path below an event")
    error(svc.call("DELETE", "/v1/events/exactly-8192"), 405, "METHOD_NOT_ALLOWED", "DELETE an event")
    error(svc.call("PUT", "/v1/events/provision", {"a": 1}), 405, "METHOD_NOT_ALLOWED", "PUT an event")
    error(svc.call("POST", "/healthz", {}), 405, "METHOD_NOT_ALLOWED", "POST /healthz")
    error(svc.call("POST", "/metrics", {}), 405, "METHOD_NOT_ALLOWED", "POST /metrics")
    for method, path, allow in (("DELETE", "/v1/events/x", "GET, HEAD, POST"), ("POST", "/healthz", "GET, HEAD"),
                                ("PUT", "/metrics", "GET, HEAD")):
        eq(svc.call(method, path, {}).headers.get("allow"), allow, "Allow of a 405 for %s %s" % (method, path))
    # the service is fine after all that, and only the one good event was stored
    svc.wait_event("exactly-8192")
    eq(svc.health()["status"], "ok", "status after hostile input")
    evs = svc.events_json()
    eq([e["id"] for e in evs], ["exactly-8192"], "the journal holds only the valid event")
    check(svc.alive(), "the service is still running")


@test
def intake_accept_unknown_events():
    svc = intake_service("  accept_unknown_events: true\n").start()
    r = svc.post("not.configured", {"x": 1}, "u-1")
    eq(r.status, 202, "an unknown event with accept_unknown_events (%s)" % r.short())
    ev = svc.wait_event("u-1")
    eq((ev["name"], ev["result"]["ok"], ev["result"]["hooks"]), ("not.configured", True, []),
       "an event without hooks is done with no hook results")


@test
def intake_logs_are_json_lines():
    svc = intake_service().start()
    svc.accept("provision", {"sub": "log-1"}, "log-1")
    svc.wait_event("log-1")
    svc.signal(signal.SIGTERM)
    eq(svc.wait_exit(10), 0, "exit status after SIGTERM")
    recs = svc.log_records()
    msgs = [x.get("msg") for x in recs]
    check("wixr serve listening" in msgs and "wixr serve stopped" in msgs, "log messages: %r" % msgs)
    for x in recs:
        check(ISO_RE.match(x.get("ts", "")) and x.get("level") in ("debug", "info", "warn", "error"),
              "log line fields: %r" % x)
    listening = [x for x in recs if x["msg"] == "wixr serve listening"][0]
    eq(listening["fields"]["address"], "127.0.0.1:%d" % svc.port, "the listening line names the address")
    eq(listening["fields"]["auth"], True, "auth on")
    check(not os.path.exists(svc.state("serve.pid")), "serve.pid is removed on a clean stop")
    check(TOKEN not in svc.log_text(), "the token never appears in the log")


# ---------------------------------------------------------------------------
# 2. Ordering per key
# ---------------------------------------------------------------------------

# Two packages per run, one at its start and one at its end: their createdDate
# (ms, from the emulator's clock) shows when each run started and ended.
TIMED_LUA = """local wix = require "wix"
local function mark(tag, ctx)
  return wix.packages.create{ account_id = "%s", external_id = tag .. "-" .. ctx.event.id,
    idempotency_key = wix.uuid(),
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
end
return function(event, ctx)
  local a = mark("t0", ctx)
  local tries = #wix.packages.all{ filter = { external_id = "t0-" .. ctx.event.id } }
  if event.fail_first and tries < 2 then error("first attempt fails") end
  wix.sleep(event.ms or 100)
  local b = mark("t1", ctx)
  return { seq = event.seq, t0 = a.created_date, t1 = b.created_date, tries = tries }
end
""" % (JANE, P_SERVICE)


def timed_service(serve=""):
    return Service(serve_config(serve=serve, hooks="  timed:\n    - script: timed.lua\n"),
                   {"timed.lua": TIMED_LUA}).start()


def spans(svc, ids):
    out = []
    for i in ids:
        ev = svc.get(i)
        r = hook_of(ev)["result"]
        out.append((ms_of(r["t0"]), ms_of(r["t1"]), ev))
    return out


@test
def order_same_key_runs_one_at_a_time_in_order():
    svc = timed_service("  retry: {attempts: 3, base_ms: 400, max_ms: 400}\n")
    ids = ["same-%d" % i for i in range(5)]
    for i, eid in enumerate(ids):
        svc.accept("timed", {"external_id": "cust-1", "seq": i, "ms": 100}, eid)
    for eid in ids:
        svc.wait_event(eid, timeout=10)
    sp = spans(svc, ids)
    eq([hook_of(e)["result"]["seq"] for _, _, e in sp], list(range(5)), "results by seq")
    for _, _, e in sp:
        eq(e["order_key"], "external_id=cust-1", "order key")
    for i in range(4):
        t0a, t1a, _ = sp[i]
        t0b, t1b, _ = sp[i + 1]
        check(t1a - t0a >= 100, "run %d lasted at least its sleep: %r" % (i, sp[i][:2]))
        check(t0b >= t1a, "event %d started (%d) before event %d ended (%d): runs of one key overlapped"
              % (i + 1, t0b, i, t1a))
    # subscription_id and then account_id are keys too, in that order of preference
    svc.accept("timed", {"subscription_id": "s-9", "account_id": "a-9", "seq": 0, "ms": 1}, "k-sub")
    svc.accept("timed", {"account_id": "a-9", "seq": 0, "ms": 1}, "k-acc")
    svc.accept("timed", {"external_id": 77, "seq": 0, "ms": 1}, "k-num")
    eq(svc.wait_event("k-sub")["order_key"], "subscription_id=s-9", "subscription_id before account_id")
    eq(svc.wait_event("k-acc")["order_key"], "account_id=a-9", "account_id")
    eq(svc.wait_event("k-num")["order_key"], "external_id=77", "a number as key")


@test
def order_key_fields_are_configurable():
    svc = timed_service("  order_key: [tenant, region]\n")
    svc.accept("timed", {"tenant": "t-1", "external_id": "x", "seq": 0, "ms": 1}, "ok-1")
    svc.accept("timed", {"region": "eu", "external_id": "x", "seq": 1, "ms": 1}, "ok-2")
    svc.accept("timed", {"external_id": "x", "account_id": JANE, "seq": 2, "ms": 1}, "ok-3")
    eq(svc.wait_event("ok-1").get("order_key"), "tenant=t-1", "the first configured field")
    eq(svc.wait_event("ok-2").get("order_key"), "region=eu", "the second configured field")
    eq(svc.wait_event("ok-3").get("order_key"), None, "the default fields no longer count")


@test
def order_is_kept_across_a_retry():
    svc = timed_service("  retry: {attempts: 3, base_ms: 400, max_ms: 400}\n")
    svc.accept("timed", {"external_id": "cust-r", "fail_first": True, "seq": 0, "ms": 10}, "r-first")
    svc.accept("timed", {"external_id": "cust-r", "seq": 1, "ms": 10}, "r-second")
    svc.accept("timed", {"external_id": "other", "seq": 9, "ms": 10}, "r-other")
    a = svc.wait_event("r-first", timeout=10)
    b = svc.wait_event("r-second", timeout=10)
    o = svc.wait_event("r-other", timeout=10)
    eq((a["attempts"], hook_of(a)["result"]["tries"]), (2, 2), "the first event ran twice")
    eq(b["attempts"], 1, "the second event ran once")
    a_t0 = ms_of(hook_of(a)["result"]["t0"])
    b_t0 = ms_of(hook_of(b)["result"]["t0"])
    check(b_t0 >= ms_of(hook_of(a)["result"]["t1"]),
          "the second event of key cust-r ran (t0 %d) while the first was waiting for its retry "
          "(its successful attempt started at %d)" % (b_t0, a_t0))
    check(ms_of(hook_of(o)["result"]["t1"]) < a_t0, "another key was not held up by the retry")


@test
def order_different_keys_overlap():
    svc = timed_service("  concurrency: 8\n")
    ids = ["par-%d" % i for i in range(5)]
    t = time.time()
    for i, eid in enumerate(ids):
        svc.accept("timed", {"external_id": "cust-p%d" % i, "seq": i, "ms": 400}, eid)
    for eid in ids:
        svc.wait_event(eid, timeout=10)
    wall = time.time() - t
    sp = spans(svc, ids)
    check(max(s[0] for s in sp) < min(s[1] for s in sp),
          "runs of different keys did not all overlap: %r" % [s[:2] for s in sp])
    check(max(s[1] for s in sp) - min(s[0] for s in sp) < 1200,
          "5 runs of 400 ms on 5 keys took %d ms (serial would be 2000)"
          % (max(s[1] for s in sp) - min(s[0] for s in sp)))
    check(wall < 2.0, "5 events of 400 ms on different keys took %.2f s end to end" % wall)
    # no key at all overlaps too; concurrency caps how many at once
    ids = ["nokey-%d" % i for i in range(10)]
    for i, eid in enumerate(ids):
        svc.accept("timed", {"seq": i, "ms": 300}, eid)
    for eid in ids:
        svc.wait_event(eid, timeout=10)
    sp = spans(svc, ids)
    most = max(sum(1 for s in sp if s[0] <= p[0] < s[1]) for p in sp)
    check(2 <= most <= 8, "events without a key ran at most concurrency (8) at once, and some together: %d"
          % most)


@test
def order_a_backlog_of_retrying_events_does_not_stall_other_events():
    """2000 events waiting for their next attempt (a minute away) must not hold up a
    fresh event with no key."""
    n = 2000
    cfg = serve_config(serve="  retry: {attempts: 5, base_ms: 60000, max_ms: 60000}\n",
                       hooks="  flaky:\n    - script: flaky.lua\n      options: {fail: true}\n"
                             "  fine:\n    - script: fine.lua\n")
    svc = Service(cfg, {"flaky.lua": FAIL_LUA, "fine.lua": "return function(e) return { fine = true } end\n"})
    svc.start()
    errors = []

    def poster(k):
        ka = KeepAlive(svc)
        try:
            for i in range(k, n, 16):
                st, body = ka.post("flaky", {"n": i}, "bl-%d" % i)
                if st != 202:
                    errors.append((st, body[:100]))
        except Exception as e:
            errors.append(repr(e))
        finally:
            ka.close()

    ths = [threading.Thread(target=poster, args=(k,), daemon=True) for k in range(16)]
    for t in ths:
        t.start()
    for t in ths:
        t.join(30)
    check(not errors, "posting the backlog: %r" % errors[:3])
    svc.wait_health(lambda h: h["journal"]["retrying"] == n, "%d events retrying" % n, timeout=20)
    t = time.time()
    svc.accept("fine", {"x": 1}, "fresh-1")
    try:
        ev = svc.wait_event("fresh-1", timeout=3)
    except TestFailure:
        ev = svc.get("fresh-1")
        raise TestFailure("a fresh event without a key is still %r %.1f s after it was accepted, behind %d "
                          "events waiting a minute for their retry" % (ev["state"], time.time() - t, n))
    eq(hook_of(ev)["result"], {"fine": True}, "the fresh event's result")


# ---------------------------------------------------------------------------
# 3. Retry, dead, `wixr events`
# ---------------------------------------------------------------------------

def fail_config(fail, attempts=3, base_ms=300):
    return serve_config(serve="  retry: {attempts: %d, base_ms: %d, max_ms: %d}\n" % (attempts, base_ms, base_ms),
                        hooks="  flaky:\n    - script: flaky.lua\n      options: {fail: %s}\n"
                              % ("true" if fail else "false"))


@test
def retry_then_dead_then_events_retry():
    svc = Service(fail_config(True), {"flaky.lua": FAIL_LUA}).start()
    t = time.time()
    svc.accept("flaky", {"n": 1}, "fl-1")
    ev = svc.wait_event("fl-1", ("retrying",), timeout=5)
    eq(ev["attempts"], 1, "attempts while waiting for the second run")
    check("next_attempt" in ev and ms_of(ev["next_attempt"]) > ms_of(ev["updated"]),
          "a retrying event shows its next attempt: %r" % ev)
    check("told to fail (1)" in (ev.get("last_error") or ""), "last_error while retrying: %r" % ev)
    ev = svc.wait_event("fl-1", ("dead",), timeout=10)
    took = time.time() - t
    eq(ev["attempts"], 3, "attempts of a dead event (serve.retry.attempts)")
    err = ev.get("last_error") or ""
    check("told to fail (1)" in err and "flaky.lua:3" in err, "last_error names the script and line: %r" % err)
    hk = hook_of(ev)
    eq((ev["result"]["ok"], hk["status"]), (False, "failed"), "the last run's report")
    check("told to fail" in hk.get("error", ""), "hook error: %r" % hk)
    # two backoffs of 150..300 ms (jittered) lie between the three runs
    check(0.3 <= took < 5, "from accepted to dead took %.2f s" % took)
    dead_logs = [x for x in svc.log_records() if x.get("msg") == "event is dead"]
    eq([(x["fields"]["id"], x["fields"]["attempts"], x["fields"]["last_error"]) for x in dead_logs],
       [("fl-1", 3, err)], "the dead log line carries the last error")

    # wixr events list / show
    p = svc.wixr("events", "list", "--state", "dead")
    eq(p.returncode, 0, "events list --state dead (stderr %r)" % p.stderr)
    check("fl-1" in p.stdout and "dead" in p.stdout, "listing: %r" % p.stdout)
    check("1 of 1 dead event shown" in p.stdout, "listing footer: %r" % p.stdout)
    dead = svc.events_json("--state", "dead")
    eq([(e["id"], e["state"], e["attempts"]) for e in dead], [("fl-1", "dead", 3)], "dead events (json)")
    eq(dead[0]["data"], {"n": 1}, "stored data")
    eq(svc.events_json("--state", "done"), [], "no done events")
    p = svc.wixr("events", "show", "fl-1", "--json")
    eq(p.returncode, 0, "events show (stderr %r)" % p.stderr)
    shown = json.loads(p.stdout)
    eq((shown["id"], shown["state"], shown["attempts"], shown["last_error"]), ("fl-1", "dead", 3, err),
       "events show --json")
    p = svc.wixr("events", "show", "fl-1")
    eq(p.returncode, 0, "events show (text)")
    check("dead" in p.stdout and "told to fail" in p.stdout, "events show text: %r" % p.stdout)
    p = svc.wixr("events", "show", "nope")
    eq(p.returncode, 1, "events show of an unknown id")

    # fix the rules, retry the event: it runs again to done
    svc.write("wixr.yaml", fail_config(False))
    svc.wait_health(lambda h: h["rules_version"] == 2, "the fixed rules (rules_version 2)")
    p = svc.wixr("events", "retry", "fl-1")
    eq(p.returncode, 0, "events retry (stdout %r stderr %r)" % (p.stdout, p.stderr))
    t = time.time()
    ev = svc.wait_event("fl-1", timeout=5)
    check(time.time() - t < 0.8, "a retried event was picked up in %.2f s" % (time.time() - t))
    eq((ev["state"], ev["attempts"], ev.get("last_error")), ("done", 1, None), "after events retry")
    eq(hook_of(ev)["result"], {"fixed": True, "n": 1}, "the fixed rules ran")
    p = svc.wixr("events", "retry", "fl-1")
    eq(p.returncode, 1, "retrying a done event is refused (stdout %r)" % p.stdout)
    check("only dead or retrying" in p.stderr, "message: %r" % p.stderr)

    # --dead retries every dead event
    svc.write("wixr.yaml", fail_config(True, attempts=1))
    svc.wait_health(lambda h: h["rules_version"] == 3, "rules_version 3")
    for i in (2, 3):
        svc.accept("flaky", {"n": i}, "fl-%d" % i)
    for i in (2, 3):
        eq(svc.wait_event("fl-%d" % i, ("dead",))["attempts"], 1, "attempts with retry.attempts 1")
    svc.write("wixr.yaml", fail_config(False, attempts=1))
    svc.wait_health(lambda h: h["rules_version"] == 4, "rules_version 4")
    p = svc.wixr("events", "retry", "--dead")
    eq(p.returncode, 0, "events retry --dead")
    check(p.stdout.startswith("2 dead events set back to accepted"), "retry --dead output: %r" % p.stdout)
    for i in (2, 3):
        eq(hook_of(svc.wait_event("fl-%d" % i))["result"]["n"], i, "fl-%d done after retry --dead" % i)
    h = svc.wait_health(lambda h: h["journal"]["done"] == 3, "3 done")
    eq(h["journal"], {"accepted": 0, "running": 0, "done": 3, "retrying": 0, "dead": 0, "depth": 0},
       "journal counts at the end")

    # purge: finished events older than D go, the rest stay
    svc.accept("flaky", {"n": 4}, "fl-4")
    svc.wait_event("fl-4")
    p = svc.wixr("events", "purge", "--older-than", "1x")
    eq(p.returncode, 2, "purge with a bad duration (stderr %r)" % p.stderr)
    p = svc.wixr("events", "purge", "--older-than", "1h")
    eq(p.returncode, 0, "purge --older-than 1h (stderr %r)" % p.stderr)
    eq(len(svc.events_json()), 4, "nothing is an hour old")
    time.sleep(1.1)
    svc.write("wixr.yaml", fail_config(True, attempts=3, base_ms=60000))
    svc.wait_health(lambda h: h["rules_version"] == 5, "rules_version 5")
    svc.accept("flaky", {"n": 5}, "fl-5")
    svc.wait_event("fl-5", ("retrying",))
    p = svc.wixr("events", "purge", "--older-than", "1s")
    eq(p.returncode, 0, "purge --older-than 1s (stderr %r)" % p.stderr)
    eq([e["id"] for e in svc.events_json()], ["fl-5"], "only the unfinished event is left")
    eq(svc.call("GET", "/v1/events/fl-1").status, 404, "a purged event is gone")
    h = svc.wait_health(lambda h: h["journal"]["done"] == 0, "0 done after the purge")
    eq(h["journal"], {"accepted": 0, "running": 0, "done": 0, "retrying": 1, "dead": 0, "depth": 1},
       "journal counts after the purge")


CREATE_THEN_FAIL_LUA = """local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", external_id = event.sub,
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  if ctx.options.fail then error("failed after creating " .. p.id) end
  return { package = p.id }
end
""" % (JANE, P_SERVICE)


@test
def retry_runs_again_with_the_same_idempotency_keys():
    def cfg(fail):
        return serve_config(serve="  retry: {attempts: 3, base_ms: 20, max_ms: 20}\n",
                            hooks="  cf:\n    - script: cf.lua\n      options: {fail: %s}\n"
                                  "  count:\n    - script: count.lua\n" % ("true" if fail else "false"))
    svc = Service(cfg(True), {"cf.lua": CREATE_THEN_FAIL_LUA, "count.lua": COUNT_LUA}).start()
    svc.accept("cf", {"sub": "idem-1"}, "cf-1")
    ev = svc.wait_event("cf-1", ("dead",))
    eq(ev["attempts"], 3, "attempts")
    first = re.search(r"failed after creating ([0-9a-f-]{36})", ev["last_error"] or "")
    check(first, "last_error: %r" % ev["last_error"])
    eq(count_packages(svc, "idem-1"), 1, "packages after 3 attempts that each created one (same keys)")
    svc.write("wixr.yaml", cfg(False))
    svc.wait_health(lambda h: h["rules_version"] == 2, "rules_version 2")
    eq(svc.wixr("events", "retry", "cf-1").returncode, 0, "events retry")
    ev = svc.wait_event("cf-1")
    eq(hook_of(ev)["result"]["package"], first.group(1), "the retried run got the package of the first attempt")
    eq(count_packages(svc, "idem-1"), 1, "packages after events retry")


# ---------------------------------------------------------------------------
# 4. kill -9 while events flow
# ---------------------------------------------------------------------------

CRASH_LUA = """local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", external_id = ctx.event.id,
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  wix.sleep(10)
  return { package = p.id }
end
""" % (JANE, P_SERVICE)


@test
def crash_kill_9_loses_and_doubles_nothing():
    emu = Server().start()
    try:
        ok(Client(emu).admin("POST", "faults", {"pathPrefix": "/resellers/v2/packages", "latencyMs": 20}),
           "latency fault")
        svc = Service(serve_config(serve="  concurrency: 16\n",
                                   hooks="  crash:\n    - script: crash.lua\n"),
                      {"crash.lua": CRASH_LUA},
                      env={"WIX_BASE_URL": "http://127.0.0.1:%d" % emu.port, "WIX_API_KEY": "k"})
        svc.start()
        n = 200
        ids = ["crash-%03d" % i for i in range(n)]
        answers = {}
        stop = threading.Event()
        errors = []

        def poster():
            ka = KeepAlive(svc)
            try:
                for eid in ids:
                    deadline = time.time() + 20
                    while not stop.is_set():
                        if time.time() > deadline:
                            errors.append("%s never got an answer" % eid)
                            return
                        try:
                            st, body = ka.post("crash", {"n": eid}, eid, timeout=5)
                        except (OSError, http.client.HTTPException):
                            time.sleep(0.02)   # the service is down: send it again
                            continue
                        if st in (202, 200):
                            answers[eid] = st
                            break
                        errors.append("%s: %s %r" % (eid, st, body[:200]))
                        return
                    time.sleep(0.004)
            finally:
                ka.close()

        th = threading.Thread(target=poster, daemon=True)
        th.start()
        seed = int(time.time() * 1000) % 100000
        rnd = random.Random(seed)
        kills = 0
        try:
            for _ in range(3):
                time.sleep(rnd.uniform(0.15, 0.5))
                svc.kill()
                kills += 1
                svc.start()
            th.join(30)
        finally:
            stop.set()
        check(not th.is_alive(), "the poster did not finish")
        check(not errors, "posting failed (seed %d): %s" % (seed, errors[:3]))
        eq(len(answers), n, "events answered 202/200")
        h = svc.wait_health(lambda h: h["journal"]["done"] == n and h["journal"]["depth"] == 0,
                            "all %d events done, depth 0" % n, timeout=30)
        eq(h["journal"], {"accepted": 0, "running": 0, "done": n, "retrying": 0, "dead": 0, "depth": 0},
           "journal counts after %d kills (seed %d)" % (kills, seed))
        evs = svc.events_json()
        eq(sorted(e["id"] for e in evs), ids, "the journal holds each event once")
        pkgs = all_packages(emu)
        by_ext = {}
        for p in pkgs:
            by_ext.setdefault(p.get("externalId"), []).append(p["id"])
        missing = [i for i in ids if i not in by_ext]
        doubled = {k: len(v) for k, v in by_ext.items() if len(v) > 1}
        check(not missing, "events with no package (seed %d): %s" % (seed, missing[:10]))
        check(not doubled, "events provisioned twice (seed %d): %s" % (seed, dict(list(doubled.items())[:10])))
        eq(len(pkgs), n, "packages in the emulator")
        eq(ok(Client(emu).admin("GET", "stats"), "stats").get("packages"), n, "emulator stats: packages")
        # each event's result names the package that exists for it
        for e in evs:
            eq(e["result"]["hooks"][0]["result"]["package"], by_ext[e["id"]][0],
               "event %s's result names its package" % e["id"])
        # attempts count runs started: every run beyond the first was one interrupted by a kill
        reruns = sum(e["attempts"] - 1 for e in evs)
        recovered = [x for x in svc.log_records() if x.get("msg") == "events interrupted by the last stop run again"]
        eq(reruns, sum(x["fields"]["events"] for x in recovered),
           "runs started again vs the recovery log lines %r (seed %d)" % ([x["fields"] for x in recovered], seed))
    finally:
        emu.cleanup()


@test
def crash_runs_killed_with_the_process_count_toward_the_attempt_cap():
    """attempts counts runs started, so an event whose runs keep dying with the process
    still reaches serve.retry.attempts and goes dead instead of running forever."""
    svc = Service(serve_config(serve="  retry: {attempts: 2, base_ms: 50, max_ms: 50}\n",
                               hooks="  slow:\n    - script: slow.lua\n"), {"slow.lua": SLEEP_LUA}).start()
    svc.accept("slow", {"ms": 5000}, "poison-1")
    for k in (1, 2):
        ev = svc.wait_event("poison-1", ("running",), timeout=3)
        eq(ev["attempts"], k, "attempts of run %d" % k)
        time.sleep(0.1)
        svc.kill()           # the run "kills the process"
        svc.start()
    time.sleep(0.6)
    ev = svc.get("poison-1")
    check(ev["attempts"] <= 2,
          "with serve.retry.attempts 2 the event was started %d times (state %s) after its runs died "
          "with the process twice" % (ev["attempts"], ev["state"]))
    eq(ev["state"], "dead", "state of an event whose every attempt died with the process")
    dead = [x["fields"] for x in svc.log_records() if x["msg"] == "event is dead"]
    eq([(d["id"], d["event"], d["attempts"]) for d in dead], [("poison-1", "slow", 2)], "the dead line")
    check("attempts were used up" in dead[0]["why"], "why: %r" % dead[0])


@test
def crash_a_second_service_on_the_same_folder_runs_nothing_twice():
    """Two `wixr serve` on one state folder (an overlapping restart) must not both run
    the journal's events: the second should refuse to start."""
    svc = Service(serve_config(hooks="  twice:\n    - script: twice.lua\n"), {"twice.lua": SLEEP_LUA}).start()
    second = Service.__new__(Service)
    second.__dict__.update(svc.__dict__)
    second.proc, second.logf, second.starts = None, None, 0
    second.crashes, second.crashed_pids = [], set()
    second.log_path = os.path.join(svc.dir, "serve-second.log")
    second.spawn()
    rc = second.wait_exit(1.5)
    if rc is None:
        # it is running too: see what it does to the events
        for i in range(10):
            svc.accept("twice", {"ms": 300}, "two-%d" % i)
        svc.wait_health(lambda h: h["journal"]["depth"] == 0 and h["journal"]["accepted"] == 0
                        and h["journal"]["done"] + h["journal"]["dead"] == 10, "10 finished")
        evs = svc.events_json()
        twice = [e["id"] for e in evs if e["attempts"] > 1]
        dead = ["%s: %s" % (e["id"], e["last_error"]) for e in evs if e["state"] == "dead"]
        raise TestFailure("a second wixr serve started on the same state folder (pid %d, beside pid %d); "
                          "%d of 10 events then ran twice (attempts > 1): %s; dead: %s"
                          % (second.proc.pid, svc.proc.pid, len(twice), twice[:5], dead[:3]))
    check(rc != 0, "the second service exited with %r" % rc)
    check(svc.alive(), "the first service is still running")
    svc.accept("twice", {"ms": 1}, "one-1")
    eq(svc.wait_event("one-1")["attempts"], 1, "the first service still works")


# ---------------------------------------------------------------------------
# 5. Hot reload
# ---------------------------------------------------------------------------

def version_lua(v):
    return ('local wix = require "wix"\nreturn function(event, ctx)\n'
            '  if event.ms then wix.sleep(event.ms) end\n'
            '  return { version = %d, seq = event.seq }\nend\n') % v


BROKEN_LUA = 'local wix = require "wix"\nreturn function(event, ctx)\n  return { version = \nend\n'


def reload_service(extra_serve=""):
    return Service(serve_config(serve=extra_serve, hooks="  v:\n    - script: v.lua\n"),
                   {"v.lua": version_lua(0)}).start()


@test
def reload_while_a_run_of_the_old_rules_is_in_flight():
    """Runs in flight keep the rules they started with; the old rules go when their
    last run ends."""
    svc = reload_service()
    svc.accept("v", {"seq": 1, "ms": 400}, "fl-old")
    svc.wait_event("fl-old", ("running",), timeout=3)
    svc.write("v.lua", version_lua(1))
    svc.signal(signal.SIGHUP)
    svc.wait_health(lambda h: h["rules_version"] >= 2, "the reload", timeout=3)
    ev = svc.wait_event("fl-old", ("done", "dead"), timeout=5)
    time.sleep(0.1)
    check(svc.alive(), "wixr serve died (exit status %s) when the last run of the old rules ended"
          % svc.proc.returncode)
    eq((ev["state"], hook_of(ev)["result"]["version"]), ("done", 0), "the run in flight kept its rules")
    svc.accept("v", {"seq": 2}, "fl-new")
    eq(hook_of(svc.wait_event("fl-new"))["result"]["version"], 1, "a new event runs the new rules")


COUNTER_LUA = ("local runs = 0\nreturn function(event, ctx)\n  runs = runs + 1\n"
               "  return { runs = runs, tag = %r }\nend\n")


@test
def reload_builds_only_the_hooks_that_changed():
    """A reload keeps the Lua state of every hook whose script and entry did not change (its
    top-level values carry on) and builds the others anew: a changed script, a changed option,
    a hook whose place among its event's hooks moved. The log line counts the kept ones."""
    hooks = ("  a:\n    - script: a.lua\n  b:\n    - script: %s\n"
             "  c:\n    - script: c.lua\n      options: {n: %d}\n")
    svc = Service(serve_config(serve="  workers: 1\n", hooks=hooks % ("b.lua", 1)),
                  {"a.lua": COUNTER_LUA % "a", "b.lua": COUNTER_LUA % "b", "c.lua": COUNTER_LUA % "c"}).start()
    seq = [0]

    def run(name):
        seq[0] += 1
        eid = "%s-%d" % (name, seq[0])
        svc.accept(name, {}, eid)
        return svc.wait_event(eid)["result"]["hooks"]

    for name in "abc":
        eq(run(name)[0]["result"]["runs"], 1, "%s's first run" % name)
        eq(run(name)[0]["result"]["runs"], 2, "%s's second run" % name)
    # b gets another script and c another option, in one write of the configuration; a stays
    svc.write("b2.lua", COUNTER_LUA % "b2")
    time.sleep(0.5)  # (the folder's change reloads nothing that changed)
    svc.write("wixr.yaml", serve_config(serve="  workers: 1\n", hooks=hooks % ("b2.lua", 2)))
    deadline = time.time() + 10
    while run("b")[0]["result"]["tag"] != "b2":
        check(time.time() < deadline, "the reload did not take b2.lua in 10 s")
        time.sleep(0.1)
    eq(run("a")[0]["result"]["runs"], 3, "a kept its state: its count goes on")
    eq(run("c")[0]["result"]["runs"], 1, "c's options changed: a new state")
    loaded = [x for x in svc.log_records() if x.get("msg") == "rules reloaded"]
    check(loaded and loaded[-1]["fields"].get("kept") == 1, "kept counted in the log: %r" % loaded[-1:])
    # a hook above a on the same event moves a's place (its derived keys follow its place): both are new
    svc.write("wixr.yaml", serve_config(serve="  workers: 1\n", hooks=hooks.replace(
        "  a:\n", "  a:\n    - script: b.lua\n") % ("b2.lua", 2)))
    deadline = time.time() + 10
    while len(run("a")) != 2:
        check(time.time() < deadline, "the reload did not add a's second hook in 10 s")
        time.sleep(0.1)
    eq([x["result"]["runs"] for x in run("a")], [2, 2], "both hooks of a are new states (this is their 2nd run)")
    # a script changed in place, to text of the same length, a while after it was read: its file's times tell
    time.sleep(1.2)
    before = svc.health()["reloads"]
    svc.signal(signal.SIGHUP)  # (c.lua is read again, found the same, and its times noted)
    svc.wait_health(lambda h: h["reloads"] > before, "the reload on SIGHUP", timeout=10)
    eq(run("c")[0]["result"]["runs"], 2, "c kept its state")
    time.sleep(1.2)
    svc.write("c.lua", COUNTER_LUA % "C")
    deadline = time.time() + 10
    while run("c")[0]["result"]["tag"] != "C":
        check(time.time() < deadline, "the reload did not take the new c.lua in 10 s")
        time.sleep(0.1)
    eq(svc.health()["reload_failures"], 0, "no reload failed")


@test
def reload_reads_the_option_declarations_of_a_changed_script_again():
    """A reload reuses the `---@option` declarations of scripts whose files did not change,
    and reads them again from a script that did: a declaration changed in place, long after the
    file was first read, is checked against the unchanged configuration."""
    decl = "---@option n %s\n" + COUNTER_LUA % "d"
    cfg = serve_config(serve="  workers: 1\n", hooks="  d:\n    - script: d.lua\n      options: {n: 1}\n")
    svc = Service(cfg, {"d.lua": decl % "integer"}).start()
    time.sleep(1.2)  # the file settles: its stamp now stands for its text
    svc.signal(signal.SIGHUP)
    svc.wait_health(lambda h: h["reloads"] >= 1 and h["last_reload"]["ok"], "the reload on SIGHUP", timeout=10)
    time.sleep(1.2)
    svc.write("d.lua", decl % "string ")  # the same length: only the text and the times tell
    h = svc.wait_health(lambda h: h["reload_failures"] >= 1, "the changed declaration refused", timeout=10)
    err = h["last_reload"].get("error") or ""
    check("options.n" in err and "string" in err, "the error names the option and its declared type: %r" % err)
    svc.write("wixr.yaml", cfg.replace("{n: 1}", "{n: one}"))
    svc.wait_health(lambda h: h["status"] == "ok" and h["last_reload"]["ok"], "the fixed options loaded", timeout=10)
    svc.accept("d", {}, "decl-1")
    eq(hook_of(svc.wait_event("decl-1"))["result"]["tag"], "d", "the hook runs with its new options")


@test
def reload_under_load_drops_nothing():
    svc = reload_service()
    n, nreloads = 300, 50
    ids = ["ld-%03d" % i for i in range(n)]
    statuses = {}
    errors = []

    def poster():
        ka = KeepAlive(svc)
        try:
            for i, eid in enumerate(ids):
                try:
                    st, body = ka.post("v", {"seq": i, "ms": 40}, eid)
                except (OSError, http.client.HTTPException) as e:
                    errors.append("%s: %r" % (eid, e))
                    continue
                statuses[eid] = st
                if st != 202:
                    errors.append("%s: %s %r" % (eid, st, body[:200]))
                time.sleep(0.008)
        finally:
            ka.close()

    th = threading.Thread(target=poster, daemon=True)
    th.start()
    reload_cmd_failures = []
    for k in range(1, nreloads + 1):
        svc.write("v.lua", version_lua(k))
        if k % 2:
            svc.signal(signal.SIGHUP)
        else:
            p = svc.wixr("reload")
            if p.returncode != 0 or "reload requested (pid %d)" % svc.proc.pid not in p.stdout:
                reload_cmd_failures.append((p.returncode, p.stdout, p.stderr))
        time.sleep(0.05)
    th.join(30)
    check(svc.alive(), "wixr serve died (exit status %s) during %d reloads under load; log: %s"
          % (svc.proc.returncode, nreloads, svc.log_text()[-300:]))
    check(not th.is_alive(), "the poster did not finish")
    check(not reload_cmd_failures, "wixr reload failed: %r" % reload_cmd_failures[:2])
    check(not errors, "posting during reloads failed: %s" % errors[:5])
    eq(sorted(statuses.values()), [202] * n, "every POST answered 202")
    h = svc.wait_health(lambda h: h["journal"]["done"] == n, "%d done" % n, timeout=20)
    eq(h["journal"], {"accepted": 0, "running": 0, "done": n, "retrying": 0, "dead": 0, "depth": 0},
       "journal after the reloads")
    eq((h["status"], h["reload_failures"], h["last_reload"]["ok"]), ("ok", 0, True), "health after the reloads")
    # (requests that come while the workers load a reload are taken by the next one, which
    # loads the files as they are then: fewer reloads than requests, the last files in force)
    check(h["reloads"] >= 1, "reloads counted: %d" % h["reloads"])
    # the last files written are in force once the reload they started ends
    deadline, k, got = time.time() + 10, 0, None
    while got != nreloads and time.time() < deadline:
        k += 1
        svc.accept("v", {"seq": -1}, "ld-last-%d" % k)
        got = svc.wait_event("ld-last-%d" % k)["result"]["hooks"][0]["result"]["version"]
    eq(got, nreloads, "the version in force at last")
    eq(h["rules_version"], h["reloads"] + 1, "rules_version = reloads + 1")
    check(ISO_RE.match(h["last_reload"].get("at", "")), "last_reload.at: %r" % h["last_reload"])
    evs = {e["id"]: e for e in svc.events_json()}
    eq(len(evs), n + k, "events in the journal (and the ld-last ones)")
    versions = []
    for i, eid in enumerate(ids):
        e = evs[eid]
        eq((e["state"], e["attempts"], e["result"]["ok"]), ("done", 1, True), "event %s" % eid)
        r = e["result"]["hooks"][0]["result"]
        eq(r["seq"], i, "event %s's result" % eid)
        check(0 <= r["version"] <= nreloads, "event %s ran version %r" % (eid, r["version"]))
        versions.append(r["version"])
    check(len(set(versions)) >= 5, "the events saw several versions: %r" % sorted(set(versions)))
    # once the last reload is in, new events get the last version
    svc.accept("v", {"seq": 1000}, "after-1")
    eq(hook_of(svc.wait_event("after-1"))["result"]["version"], nreloads, "the last version is in force")
    m = parse_metrics(svc.metrics())
    eq(m.get("wixr_reload_failures_total"), 0.0, "wixr_reload_failures_total")
    # a file-watch reload may still land after /healthz was read: counts only grow
    check(m.get("wixr_reloads_total", 0) >= float(h["reloads"]), "wixr_reloads_total %r < %r"
          % (m.get("wixr_reloads_total"), h["reloads"]))
    # (the metrics are a snapshot, 250 ms apart: a reload that ended just now is logged before it counts)
    deadline = time.time() + 5
    while True:
        reloaded = [x for x in svc.log_records() if x.get("msg") == "rules reloaded"]
        counted = parse_metrics(svc.metrics()).get("wixr_reloads_total")
        if float(len(reloaded)) == counted or time.time() > deadline:
            break
        time.sleep(0.1)
    eq(float(len(reloaded)), counted, "one log line per reload")
    check({x["fields"]["why"] for x in reloaded} >= {"SIGHUP"}, "reload reasons: %r"
          % {x["fields"]["why"] for x in reloaded})


@test
def reload_broken_script_keeps_the_old_rules():
    svc = reload_service()
    svc.write("v.lua", version_lua(1))
    svc.wait_health(lambda h: h["rules_version"] == 2, "the file change reloaded (rules_version 2)", timeout=5)
    svc.accept("v", {"seq": 1}, "b-1")
    eq(hook_of(svc.wait_event("b-1"))["result"]["version"], 1, "version after the file change")
    svc.write("v.lua", BROKEN_LUA)
    h = svc.wait_health(lambda h: h["status"] == "degraded", "status degraded", timeout=5)
    eq((h["last_reload"]["ok"], h["rules_version"], h["reload_failures"]), (False, 2, 1), "health after a bad file")
    err = h["last_reload"].get("error") or ""
    check("v.lua:4:" in err, "the error names the file and line: %r" % err)
    m = parse_metrics(svc.metrics())
    check(m.get("wixr_reload_failures_total", 0) >= 1, "wixr_reload_failures_total: %r"
          % m.get("wixr_reload_failures_total"))
    eq(m.get("wixr_rules_version"), 2.0, "wixr_rules_version stays")
    for i in range(3):
        svc.accept("v", {"seq": 10 + i}, "b-old-%d" % i)
    for i in range(3):
        ev = svc.wait_event("b-old-%d" % i)
        eq(hook_of(ev)["result"]["version"], 1, "events run with the old rules while the file is broken")
    # SIGHUP with the file still broken: still degraded, one more failure
    svc.signal(signal.SIGHUP)
    svc.wait_health(lambda h: h["reload_failures"] == 2, "a second failure counted", timeout=5)
    failed = [x for x in svc.log_records() if x.get("msg") == "reload failed; the previous rules stay in force"]
    check(len(failed) >= 2 and "v.lua:4:" in failed[0]["fields"]["error"], "failure log lines: %r" % failed)
    # fixed: ok again
    svc.write("v.lua", version_lua(2))
    h = svc.wait_health(lambda h: h["status"] == "ok", "status ok again", timeout=5)
    eq((h["last_reload"]["ok"], h["rules_version"]), (True, 3), "health after the fix")
    check("error" not in h["last_reload"], "no error after the fix: %r" % h["last_reload"])
    svc.accept("v", {"seq": 2}, "b-2")
    eq(hook_of(svc.wait_event("b-2"))["result"]["version"], 2, "the fixed rules run")


@test
def reload_config_changes_and_errors():
    svc = reload_service()
    eq(svc.post("w", {"a": 1}).status, 404, "event w before it is configured")
    cfg = serve_config(hooks="  v:\n    - script: v.lua\n  w:\n    - script: w.lua\n")
    svc.write("w.lua", "return function(event, ctx) return { w = true, opt = ctx.options.o } end\n")
    svc.write("wixr.yaml", cfg)
    svc.wait_health(lambda h: h["rules_version"] >= 2, "a reload after the config change", timeout=5)
    r = svc.post("w", {"a": 1}, "w-1")
    eq(r.status, 202, "a newly configured event is accepted (%s)" % r.short())
    eq(hook_of(svc.wait_event("w-1"))["result"], {"w": True}, "its hook ran")
    version = svc.health()["rules_version"]
    # a configuration error: degraded, naming wixr.yaml and the line
    svc.write("wixr.yaml", cfg + "      bogus_key: 1\n")
    h = svc.wait_health(lambda h: h["status"] == "degraded", "degraded after a config error", timeout=5)
    err = h["last_reload"].get("error") or ""
    check("wixr.yaml:" in err and "bogus_key" in err, "the error names wixr.yaml and the key: %r" % err)
    line = len(cfg.splitlines()) + 1
    check("wixr.yaml:%d:" % line in err, "the error gives line %d: %r" % (line, err))
    eq(h["rules_version"], version, "rules stay")
    eq(svc.post("w", {"a": 2}, "w-2").status, 202, "event w still accepted under the old rules")
    svc.wait_event("w-2")
    # the event removed: 404 again
    svc.write("wixr.yaml", serve_config(hooks="  v:\n    - script: v.lua\n"))
    svc.wait_health(lambda h: h["status"] == "ok" and h["rules_version"] > version, "ok again", timeout=5)
    r = svc.post("w", {"a": 3})
    eq(r.status, 404, "a removed event is unknown again (%s)" % r.short())


@test
def chain_emitted_events_run_inside_the_event():
    parent = ('return function(event, ctx)\n  ctx.emit("child", { v = event.v })\n'
              '  return { parent = true }\nend\n')
    child = ('return function(event, ctx)\n  if event.v == "bad" then error("child refuses") end\n'
             '  return { child = event.v, id = ctx.event.id, depth = ctx.event.depth }\nend\n')
    svc = Service(serve_config(serve="  retry: {attempts: 1}\n",
                               hooks="  parent:\n    - script: parent.lua\n  child:\n    - script: child.lua\n"),
                  {"parent.lua": parent, "child.lua": child}).start()
    svc.accept("parent", {"v": "x"}, "ch-1")
    ev = svc.wait_event("ch-1")
    res = ev["result"]
    eq(hook_of(ev)["result"], {"parent": True}, "the parent's result")
    eq(len(res.get("chained", [])), 1, "one chained event: %r" % res)
    c = res["chained"][0]
    eq((c["event"], c["id"], c["ok"]), ("child", "ch-1/1", True), "the chained report")
    eq(c["hooks"][0]["result"], {"child": "x", "id": "ch-1/1", "depth": 1}, "the child's result")
    svc.accept("parent", {"v": "bad"}, "ch-2")
    ev = svc.wait_event("ch-2", ("dead",))
    check("child refuses" in (ev.get("last_error") or ""), "a failing chained event fails the event: %r" % ev)
    eq(ev["result"]["chained"][0]["ok"], False, "the chained report says failed")


# ---------------------------------------------------------------------------
# 6. SIGTERM drain
# ---------------------------------------------------------------------------

SLEEP_LUA = """local wix = require "wix"
return function(event, ctx)
  wix.sleep(event.ms)
  return { slept = event.ms }
end
"""


def sleep_service(extra_serve=""):
    return Service(serve_config(serve=extra_serve, hooks="  slow:\n    - script: slow.lua\n"),
                   {"slow.lua": SLEEP_LUA}).start()


@test
def drain_sigterm_finishes_runs_in_flight():
    svc = sleep_service()
    ids = ["dr-%d" % i for i in range(3)]
    for eid in ids:
        svc.accept("slow", {"ms": 1000}, eid)
    for eid in ids:
        svc.wait_event(eid, ("running",), timeout=3)
    h = svc.wait_health(lambda h: h["in_flight"] == 3, "3 in flight", timeout=3)
    eq(h["journal"]["running"], 3, "running in the journal")
    t = time.time()
    svc.signal(signal.SIGTERM)
    time.sleep(0.15)
    saw = None
    try:
        r = svc.post("slow", {"ms": 1}, "dr-late")
        saw = r.status
        eq(r.status, 503, "intake while draining (%s)" % r.short())
        eq(wix_error(r.json, "503")[0], "SHUTTING_DOWN", "503 code")
    except (ConnectionRefusedError, ConnectionResetError, http.client.RemoteDisconnected):
        saw = "refused"
    rc = svc.wait_exit(10)
    took = time.time() - t
    eq(rc, 0, "exit status after SIGTERM (log %r)" % svc.log_text()[-500:])
    check(0.6 <= took <= 2.5, "exit %.2f s after SIGTERM (runs of 1 s were in flight)" % took)
    check(saw in (503, "refused"), "intake during the drain: %r" % saw)
    evs = {e["id"]: e for e in svc.events_json()}
    for eid in ids:
        eq((evs[eid]["state"], evs[eid]["attempts"]), ("done", 1), "event %s after the drain" % eid)
        eq(evs[eid]["result"]["hooks"][0]["result"], {"slept": 1000}, "event %s's result" % eid)
    check("dr-late" not in evs, "the event sent while draining was not stored")
    msgs = [x for x in svc.log_records() if x.get("msg", "").startswith("stopping")]
    eq([x["fields"] for x in msgs], [{"in_flight": 3}], "the stopping log line")
    check(not os.path.exists(svc.state("serve.pid")), "serve.pid removed")
    p = svc.wixr("reload")
    eq(p.returncode, 1, "wixr reload with no service running (stdout %r)" % p.stdout)
    check("no running service" in p.stderr, "message: %r" % p.stderr)


@test
def drain_leaves_events_not_started_for_the_next_start():
    svc = sleep_service("  concurrency: 1\n")
    ids = ["q-%d" % i for i in range(3)]
    for eid in ids:
        svc.accept("slow", {"ms": 500}, eid)
    svc.wait_event("q-0", ("running",), timeout=3)
    svc.signal(signal.SIGTERM)
    eq(svc.wait_exit(5), 0, "exit status")
    states = {e["id"]: (e["state"], e["attempts"]) for e in svc.events_json()}
    eq(states, {"q-0": ("done", 1), "q-1": ("accepted", 0), "q-2": ("accepted", 0)},
       "the run in flight finished; the others were not started while draining")
    svc.start()
    for eid in ids:
        eq(svc.wait_event(eid, timeout=5)["attempts"], 1, "%s after the restart" % eid)


@test
def drain_deadline_leaves_the_event_for_the_next_start():
    svc = sleep_service("  drain_ms: 200\n")
    svc.accept("slow", {"ms": 3000}, "long-1")
    svc.wait_event("long-1", ("running",), timeout=3)
    time.sleep(0.1)
    t = time.time()
    svc.signal(signal.SIGTERM)
    rc = svc.wait_exit(5)
    took = time.time() - t
    eq(rc, 0, "exit status after the drain deadline (log %r)" % svc.log_text()[-500:])
    check(0.15 <= took < 1.2, "exit %.2f s after SIGTERM with drain_ms 200" % took)
    check(any(x.get("msg", "").startswith("drain deadline reached") and x["fields"] == {"events": 1}
              for x in svc.log_records()), "the drain deadline log line: %r" % svc.log_text()[-600:])
    p = svc.wixr("events", "show", "long-1", "--json")
    e = json.loads(p.stdout)
    eq((e["state"], e["attempts"]), ("running", 1), "the unfinished event stays running in the journal")
    t = time.time()
    svc.start()
    ev = svc.wait_event("long-1", timeout=8)
    eq((ev["state"], ev["attempts"]), ("done", 2), "the event ran again at the next start")
    eq(hook_of(ev)["result"], {"slept": 3000}, "its result")
    check(time.time() - t >= 2.9, "the second run took its full 3 s")
    rec = [x for x in svc.log_records() if x.get("msg") == "events interrupted by the last stop run again"]
    eq([x["fields"] for x in rec], [{"events": 1}], "the recovery log line")


# ---------------------------------------------------------------------------
# 7. /metrics
# ---------------------------------------------------------------------------

METRICS_LUA = """local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", external_id = event.sub,
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  local ok1, e1 = pcall(wix.instances.unassign, "%s")
  local ok2, e2 = pcall(wix.instances.assign, "%s", "%s")
  local ok3, e3 = pcall(wix.packages.get, "%s")
  return { package = p.id, unassign = e1.status, assign = e2.status, get = e3.status }
end
""" % (JANE, P_SERVICE, UNKNOWN_GUID, UNKNOWN_GUID, SITE_JANE1, UNKNOWN_GUID)


@test
def metrics_after_some_events():
    cfg = serve_config(serve="  retry: {attempts: 2, base_ms: 20, max_ms: 20}\n",
                       hooks="  mx:\n    - script: mx.lua\n"
                             "  bad:\n    - script: bad.lua\n      options: {fail: true}\n")
    svc = Service(cfg, {"mx.lua": METRICS_LUA, "bad.lua": FAIL_LUA}).start()
    r = svc.call("GET", "/metrics", token=None)
    eq(r.status, 401, "/metrics needs the token")
    for i in range(3):
        svc.accept("mx", {"sub": "m-%d" % i}, "mx-%d" % i)
    svc.accept("bad", {"n": 9}, "bad-1")
    eq(svc.post("mx", {"sub": "m-0"}, "mx-0").status, 200, "a duplicate")
    for i in range(3):
        ev = svc.wait_event("mx-%d" % i)
        eq(hook_of(ev)["result"]["unassign"], 428, "unassign of an unknown instance")
        eq(hook_of(ev)["result"]["assign"], 428, "assign of an unknown instance")
        eq(hook_of(ev)["result"]["get"], 404, "get of an unknown package")
    svc.wait_event("bad-1", ("dead",))
    m = svc.wait_metrics(lambda m: m.get('wixr_events{state="dead"}') == 1 and m.get('wixr_events{state="done"}') == 3,
                         "3 done and 1 dead")
    r = svc.call("GET", "/metrics")
    check(r.headers.get("content-type", "").startswith("text/plain"), "content type: %r" % r.headers)
    text = r.body.decode()
    expect = {
        'wixr_events{state="accepted"}': 0, 'wixr_events{state="running"}': 0,
        'wixr_events{state="retrying"}': 0, 'wixr_events{state="done"}': 3, 'wixr_events{state="dead"}': 1,
        "wixr_events_accepted_total": 4, "wixr_events_duplicate_total": 1,
        "wixr_event_runs_failed_total": 2, "wixr_event_retries_total": 1, "wixr_events_dead_total": 1,
        "wixr_event_run_seconds_count": 5,
        'wixr_api_calls_total{endpoint="POST /resellers/v2/packages",status="200"}': 3,
        'wixr_api_calls_total{endpoint="GET /resellers/v1/packages/{id}",status="404"}': 3,
        'wixr_api_calls_total{endpoint="PATCH /resellers/v1/packages/product-instances/{instanceId}/unassign",'
        'status="428"}': 3,
        'wixr_api_calls_total{endpoint="PATCH /resellers/v1/packages/product-instances/{instanceId}/{siteId}",'
        'status="428"}': 3,
        "wixr_api_retries_total": 0, "wixr_rate_limit_waits_total": 0,
        "wixr_reloads_total": 0, "wixr_reload_failures_total": 0, "wixr_rules_version": 1,
        "wixr_events_in_flight": 0,
    }
    wrong = {k: (v, m.get(k)) for k, v in expect.items() if m.get(k) != float(v)}
    api = {k: v for k, v in m.items() if k.startswith("wixr_api_calls_total")}
    check(not wrong, "metrics (expected, got): %r; api call samples: %r" % (wrong, api))
    eq(len(api), 4, "api call samples: %r" % api)
    # histogram: cumulative buckets, +Inf = count, a plausible sum
    les = [k for k in m if k.startswith("wixr_event_run_seconds_bucket")]
    vals = [m[k] for k in les]
    eq(vals, sorted(vals), "buckets are cumulative")
    eq(m.get('wixr_event_run_seconds_bucket{le="+Inf"}'), 5.0, "+Inf bucket")
    check(0 < m.get("wixr_event_run_seconds_sum", 0) < 5, "run seconds sum: %r" % m.get("wixr_event_run_seconds_sum"))
    for name in ("wixr_events", "wixr_events_accepted_total", "wixr_event_runs_failed_total",
                 "wixr_event_retries_total", "wixr_events_dead_total", "wixr_event_run_seconds",
                 "wixr_api_calls_total", "wixr_api_retries_total", "wixr_rate_limit_waits_total",
                 "wixr_reloads_total", "wixr_reload_failures_total", "wixr_rules_version", "wixr_events_in_flight"):
        check("# TYPE %s " % name in text and "# HELP %s " % name in text, "HELP/TYPE of %s" % name)
    h = svc.health()
    eq(h["journal"], {"accepted": 0, "running": 0, "done": 3, "retrying": 0, "dead": 1, "depth": 0},
       "healthz journal counts agree")


@test
def poller_turns_a_status_change_into_an_event():
    """The emulator's admin API fails an instance; the poller journals wix.product_instance_failed."""
    emu = Server().start()
    try:
        c = Client(emu)
        r = c.create([{"catalogProductId": "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03", "countryCode": "DE"}],
                     external="poll-1")
        iid = ok(r, "create")["package"]["productInstances"][0]["instanceId"]
        failed_lua = ("return function(event, ctx)\n"
                      "  return { instance = event.product_instance_id, prev = event.previous_status,\n"
                      "           code = event.reason and event.reason.code, ext = event.external_id }\nend\n")
        svc = Service(serve_config(wix="  account_id: 11111111-2222-4333-8444-555555555555\n",
                                   runtime="poller: {enabled: true, interval_ms: 200}\n",
                                   hooks="  wix.product_instance_failed:\n    - script: failed.lua\n"),
                      {"failed.lua": failed_lua},
                      env={"WIX_BASE_URL": "http://127.0.0.1:%d" % emu.port, "WIX_API_KEY": "k"})
        svc.start()
        time.sleep(0.6)  # first polls: the instance is seen (PENDING/ENABLED), no event
        ok(c.admin("POST", "instances/%s/status" % iid,
                   {"status": "FAILED", "failure": {"code": "EXTERNAL_FAILURE", "message": "boom"}}), "force FAILED")
        deadline = time.time() + 5
        found = None
        while time.time() < deadline and not found:
            out = subprocess.run([ARGS.wixr, "events", "list", "--json"], cwd=svc.dir, capture_output=True, text=True,
                                 env=clean_env())
            for line in out.stdout.splitlines():
                ev = json.loads(line)
                if ev.get("name") == "wix.product_instance_failed" and ev.get("state") == "done":
                    found = ev
            time.sleep(0.1)
        check(found is not None, "no wix.product_instance_failed event was journaled and run")
        ev = svc.get(found["id"])
        res = hook_of(ev)["result"]
        eq(res, {"instance": iid, "prev": res.get("prev"), "code": "EXTERNAL_FAILURE", "ext": "poll-1"}, "hook input")
        check(res.get("prev") in ("PENDING", "ENABLED"), "previous status: %r" % res)
        check(found["id"].startswith("poll:%s:FAILED:" % iid), "event id: %r" % found["id"])
        time.sleep(0.5)  # more polls: the same change is not journaled again
        out = subprocess.run([ARGS.wixr, "events", "list", "--json"], cwd=svc.dir, capture_output=True, text=True,
                             env=clean_env())
        eq(sum(1 for l in out.stdout.splitlines() if json.loads(l).get("name") == "wix.product_instance_failed"), 1,
           "one event per change")
        check("wixr_poll_events_total 1" in svc.metrics(), "poll metrics")
    finally:
        emu.cleanup()


@test
def print_in_a_hook_is_a_json_log_line():
    """Every line wixr serve writes is JSON: a hook's print() too, naming its hook and event."""
    script = ('return function(event, ctx)\n'
              '  print("hello", event.n, "two\\nlines")\n'
              '  return { ok = true }\nend\n')
    svc = Service(serve_config(hooks="  p:\n    - script: p.lua\n"), {"p.lua": script}).start()
    svc.accept("p", {"n": 7}, "pr-1")
    svc.wait_event("pr-1")
    lines = [x for x in svc.log_records() if (x.get("fields") or {}).get("source") == "print"]
    eq(len(lines), 1, "one print line: %r" % lines)
    eq((lines[0]["level"], lines[0]["msg"], lines[0]["fields"]),
       ("info", "hello\t7\ttwo\nlines", {"source": "print", "hook": "p (p.lua)", "event_id": "pr-1"}),
       "the print line")
    svc.signal(signal.SIGTERM)
    eq(svc.wait_exit(10), 0, "a clean stop")


# ---------------------------------------------------------------------------
# 9. Trust: one JSON writer for every line; production semantics
# ---------------------------------------------------------------------------

# The keys of an event, in order, wherever it is shown (GET /v1/events/ID, the
# duplicate answer, wixr events list|show --json).
EVENT_KEYS = ["seq", "id", "name", "state", "attempts", "order_key", "created", "created_ms", "updated",
              "updated_ms", "next_attempt", "next_attempt_ms", "last_error", "data", "result"]
ATTEMPT_KEYS = {"id", "event", "hook", "attempt", "max_attempts", "code", "error", "permanent", "will_retry"}

ALWAYS_FAIL_LUA = 'return function(event, ctx)\n  error("refused: " .. tostring(event.n))\nend\n'


def event_keys(what, ev):
    check(isinstance(ev, dict), "%s: not a JSON object: %r" % (what, ev))
    eq(list(ev.keys()), EVENT_KEYS, "%s: the keys of an event" % what)


def wixr_bytes(svc, *args):
    """`wixr ARGS` with bytes arguments (an id that is not UTF-8); stdout as bytes."""
    return subprocess.run([ARGS.wixr.encode()] + list(args), cwd=svc.dir, env=clean_env(svc.env, None),
                          capture_output=True, timeout=20)


@test
def trust_hostile_ids_keep_every_json_line_whole():
    """An id or name full of quotes, backslashes, control characters, bytes that are not
    UTF-8 or 10 KB long cannot inject fields into a log line or break GET /v1/events/ID or
    wixr events list|show --json: each stays one JSON object with the same keys. Intake
    refuses such ids with a 400 naming the field; ids already in the journal (the
    poller's, wixr fire's) are written safely anyway."""
    svc = Service(serve_config(serve="  retry: {attempts: 1}\n", hooks="  nope:\n    - script: nope.lua\n"),
                  {"nope.lua": ALWAYS_FAIL_LUA}).start()
    accepted = ['x","forged":"1', "q'uo\"te\"", "\u00fcn\u00efcode-\u2603"]
    for i, eid in enumerate(accepted):
        if i % 2:
            r = svc.post("nope", {"n": i, "event_id": eid})
        else:
            r = svc.post("nope", {"n": i}, headers={"X-Event-Id": eid.encode("utf-8")})
        eq((r.status, r.json.get("id")), (202, eid), "POST with id %r (%s)" % (eid, r.short()))
    refused_headers = [b"back\\slash", b"ctl\x01char", b"del\x7f", b"bad\xffutf8", b"c1\xc2\x85", b"z" * 10240]
    for h in refused_headers:
        r = svc.post("nope", {"n": 9}, headers={"X-Event-Id": h})
        eq(r.status, 400, "X-Event-Id %r (%s)" % (h[:20], r.short()))
        eq(wix_error(r.json, "400")[0], "INVALID_ARGUMENT X-Event-Id", "the field named")
    for bad in ("nul\u0000after", "ctl\u0001", "line\nbreak", "z" * 10240, "\u0085c1"):
        r = svc.post("nope", {"n": 9, "event_id": bad})
        eq(r.status, 400, "event_id %r (%s)" % (bad[:20], r.short()))
        eq(wix_error(r.json, "400")[0], "INVALID_ARGUMENT event_id", "the field named")
    # a lone surrogate is not a JSON string of UTF-8: the body is refused
    r = svc.post("nope", b'{"event_id": "x\\ud800y"}')
    eq(r.status, 400, "a lone surrogate in event_id (%s)" % r.short())
    for eid in accepted:
        svc.wait_event(urllib.parse.quote(eid, safe=""), ("dead",))
    # ids already in the journal, whatever their bytes (written as another writer would)
    import sqlite3
    big = b'"\\\x01\xff' * 2560
    odd = [(b"j-ctl\x01\x1f\x7f\n", b"name\"\\", b"{not json", b"err \"quoted\"\nsecond line"),
           (b"j-bad\xff\xfe\xc3(", big, b'{"a": 1}', big),
           (b"j-" + b"k" * 10240, b"n", b"[]", None)]
    db = sqlite3.connect(svc.state("journal.db"), timeout=10)
    with db:
        for eid, name, data, err in odd:
            db.execute("INSERT INTO events(id, name, data, state, attempts, next_attempt_ms, created_ms, updated_ms,"
                       " last_error) VALUES (CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), 'dead', 1, 0,"
                       " 1700000000000, 1700000000000, CAST(? AS TEXT))", (eid, name, data, err))
    db.close()
    # every log line is one JSON object: nothing forged, the id whole
    recs = svc.log_records()
    for x in recs:
        check(set(x) == {"ts", "level", "msg", "fields"}, "a log line's keys: %r" % (x,))
        check("forged" not in x["fields"], "a field was injected into a log line: %r" % x)
    for eid in accepted:
        failed = [x for x in recs if x["msg"] == "event attempt failed" and x["fields"].get("id") == eid]
        dead = [x for x in recs if x["msg"] == "event is dead" and x["fields"].get("id") == eid]
        eq((len(failed), len(dead)), (1, 1), "one failed-attempt and one dead line for %r" % eid)
    # GET, events show --json and events list --json: one rendering, the same keys
    listed = svc.events_json()
    eq(len(listed), len(accepted) + len(odd), "events listed (one line each)")
    for ev in listed:
        event_keys("events list --json", ev)
    for eid in accepted:
        g = svc.get(urllib.parse.quote(eid, safe=""))
        event_keys("GET %r" % eid, g)
        eq((g["id"], g["state"], g["attempts"]), (eid, "dead", 1), "GET %r" % eid)
        eq(g["data"].get("n"), accepted.index(eid), "GET includes the event's data")
        p = svc.wixr("events", "show", eid, "--json")
        eq(p.returncode, 0, "events show %r (stderr %r)" % (eid, p.stderr))
        eq(json.loads(p.stdout), g, "events show --json and GET render the same event")
        eq([e for e in listed if e["id"] == eid], [g], "events list --json renders it the same")
    by_id = {e["id"]: e for e in listed}
    ctl = by_id.get("j-ctl\x01\x1f\x7f\n")
    check(ctl is not None, "the id with control characters comes out whole: %r" % list(by_id)[:5])
    eq((ctl["name"], ctl["data"], ctl["last_error"]), ('name"\\', "{not json", 'err "quoted"\nsecond line'),
       "strings kept, stored text that is not JSON written as a string")
    check("j-bad\ufffd\ufffd\ufffd(" in by_id, "bytes that are not UTF-8 become U+FFFD: %r" % list(by_id)[:5])
    eq(len(by_id["j-bad\ufffd\ufffd\ufffd("]["name"]), 10240, "a 10 KB name (each bad byte one U+FFFD)")
    eq(by_id["j-" + "k" * 10240]["data"], [], "a 10 KB id")
    p = wixr_bytes(svc, b"events", b"show", odd[1][0], b"--json")
    eq(p.returncode, 0, "events show of an id that is not UTF-8 (stderr %r)" % p.stderr[-200:])
    shown = json.loads(p.stdout.decode("utf-8"))
    event_keys("events show --json (not UTF-8)", shown)
    eq(shown["last_error"], by_id["j-bad\ufffd\ufffd\ufffd("]["last_error"], "the same rendering")
    g = svc.get(urllib.parse.quote("j-ctl\x01\x1f\x7f\n", safe=""))
    eq(g, ctl, "GET of the id with control characters renders what events list does")
    p = svc.wixr("events", "show", "nope\x1b[31m")
    eq(p.returncode, 1, "events show of an unknown id")
    check("\x1b" not in p.stderr and "no event 'nope?[31m'" in p.stderr, "no terminal escape: %r" % p.stderr)


SITE_LUA = """local wix = require "wix"
return function(event, ctx)
  wix.packages.create{ account_id = "%s", products = {{ catalog_product_id = "%s", site_id = "%s",
    country_code = "DE" }} }
end
""" % (JANE, P_SERVICE, testlib.SITE_OTHER)


def api_calls(m):
    return sum(v for k, v in m.items() if k.startswith("wixr_api_calls_total{"))


@test
def trust_site_not_found_costs_one_call_and_one_attempt():
    """A Wix 404 SITE_NOT_FOUND is permanent: one API call, one attempt, dead at once with
    the reason (serve.retry would allow 5)."""
    svc = Service(serve_config(serve="  retry: {attempts: 5, base_ms: 20, max_ms: 20}\n",
                               hooks="  site:\n    - script: site.lua\n"), {"site.lua": SITE_LUA}).start()
    svc.accept("site", {"n": 1}, "site-1")
    ev = svc.wait_event("site-1", ("dead",))
    time.sleep(0.3)  # a retry, were there one, would have run by now
    ev = svc.get("site-1")
    eq((ev["state"], ev["attempts"]), ("dead", 1), "a permanent failure is dead after one attempt")
    err = ev["last_error"] or ""
    check(err.startswith("permanent: ") and "SITE_NOT_FOUND" in err, "last_error gives the reason: %r" % err)
    m = svc.wait_metrics(lambda m: m.get("wixr_events_permanent_total") == 1, "one permanent event")
    eq(api_calls(m), 1, "API calls: %r" % {k: v for k, v in m.items() if k.startswith("wixr_api")})
    eq(m.get("wixr_api_retries_total"), 0, "API retries")
    eq(m.get("wixr_event_retries_total"), 0, "event retries")
    eq(m.get('wixr_hook_runs_total{event="site",hook="site.lua",outcome="permanent"}'), 1, "hook runs by outcome")
    eq(m.get('wixr_event_outcomes_total{event="site",outcome="dead"}'), 1, "event outcomes")
    lines = [x["fields"] for x in svc.log_records() if x["msg"] == "event attempt failed"]
    eq(len(lines), 1, "one failed attempt: %r" % lines)
    f = lines[0]
    eq(set(f), ATTEMPT_KEYS, "the failed attempt's fields")
    eq((f["id"], f["event"], f["hook"], f["attempt"], f["code"], f["permanent"], f["will_retry"]),
       ("site-1", "site", "site (site.lua)", 1, "SITE_NOT_FOUND", True, False), "the failed attempt")
    dead = [x["fields"] for x in svc.log_records() if x["msg"] == "event is dead"]
    eq([(d["id"], d["code"], d["attempts"]) for d in dead], [("site-1", "SITE_NOT_FOUND", 1)], "the dead line")
    check("SITE_NOT_FOUND" in dead[0]["last_error"] and "permanent" in dead[0]["why"], "dead line: %r" % dead)


REFUSE_LUA = """local wix = require "wix"
return function(event, ctx)
  error(wix.permanent("no such plan: " .. tostring(event.plan), { code = "UNKNOWN_PLAN" }))
end
"""


@test
def trust_wix_permanent_is_dead_at_once_a_plain_error_is_retried():
    svc = Service(serve_config(serve="  retry: {attempts: 3, base_ms: 20, max_ms: 20}\n",
                               hooks="  refuse:\n    - script: refuse.lua\n  oops:\n    - script: oops.lua\n"),
                  {"refuse.lua": REFUSE_LUA, "oops.lua": ALWAYS_FAIL_LUA}).start()
    svc.accept("refuse", {"plan": "gold"}, "rf-1")
    svc.accept("oops", {"n": 7}, "op-1")
    rf = svc.wait_event("rf-1", ("dead",))
    op = svc.wait_event("op-1", ("dead",))
    eq(rf["attempts"], 1, "wix.permanent: dead after one attempt")
    check("UNKNOWN_PLAN" in rf["last_error"] and "no such plan: gold" in rf["last_error"]
          and "refuse.lua:3" in rf["last_error"], "the reason and where: %r" % rf["last_error"])
    eq(op["attempts"], 3, "a plain error is retried up to serve.retry.attempts")
    check("refused: 7" in op["last_error"] and not op["last_error"].startswith("permanent"),
          "last_error: %r" % op["last_error"])
    recs = svc.log_records()
    attempts = [x for x in recs if x["msg"] == "event attempt failed" and x["fields"]["id"] == "op-1"]
    eq([(x["level"], x["fields"]["attempt"], x["fields"]["will_retry"], x["fields"]["permanent"])
        for x in attempts], [("warn", 1, True, False), ("warn", 2, True, False), ("error", 3, False, False)],
       "one line per failed attempt, saying whether it will be retried")
    for x in attempts:
        f = x["fields"]
        eq(set(f) - {"retry_in_ms"}, ATTEMPT_KEYS, "fields of a failed attempt")
        eq((f["event"], f["hook"], f["code"], f["max_attempts"]), ("oops", "oops (oops.lua)", "ERROR", 3), "fields")
        check("refused: 7" in f["error"], "the error message: %r" % f)
        check(("retry_in_ms" in f) == f["will_retry"], "retry_in_ms when it will be retried: %r" % f)
    rl = [x["fields"] for x in recs if x["msg"] == "event attempt failed" and x["fields"]["id"] == "rf-1"]
    eq([(f["code"], f["permanent"], f["will_retry"]) for f in rl], [("UNKNOWN_PLAN", True, False)],
       "the refusal's line")
    m = svc.wait_metrics(lambda m: m.get('wixr_event_outcomes_total{event="oops",outcome="dead"}') == 1,
                         "oops dead in the metrics")
    expect = {'wixr_hook_runs_total{event="oops",hook="oops.lua",outcome="failed"}': 3,
              'wixr_hook_runs_total{event="refuse",hook="refuse.lua",outcome="permanent"}': 1,
              'wixr_event_outcomes_total{event="oops",outcome="retry"}': 2,
              'wixr_event_outcomes_total{event="refuse",outcome="dead"}': 1,
              'wixr_event_outcomes_total{event="refuse",outcome="retry"}': 0,
              "wixr_events_permanent_total": 1}
    eq({k: m.get(k) for k in expect}, {k: float(v) for k, v in expect.items()}, "metrics by event and hook")


@test
def trust_start_line_names_transport_and_base_url():
    svc = intake_service().start()
    recs = svc.log_records()
    first = recs[0]
    eq(first["msg"], "wixr serve starting", "the first line")
    eq((first["fields"]["transport"], first["fields"]["sandbox_db"]), ("sandbox", ".wixr/sandbox.db"),
       "the sandbox transport and its file")
    check(SANDBOX_NOTICE not in svc.log_text(), "no line but JSON: %r" % svc.log_text()[:300])
    svc.kill()
    secret = "api-key-not-for-logs-42"
    svc = Service(serve_config(hooks="  v:\n    - script: v.lua\n"), {"v.lua": version_lua(1)},
                  env={"WIX_API_KEY": secret, "WIX_BASE_URL": "http://user:pw-not-for-logs@127.0.0.1:9"}).start()
    first = svc.log_records()[0]
    eq((first["msg"], first["fields"]["transport"], first["fields"]["base_url"]),
       ("wixr serve starting", "http", "http://127.0.0.1:9"), "the http transport and its base URL")
    check(secret not in svc.log_text() and "pw-not-for-logs" not in svc.log_text(), "no secret in the log")


@test
def trust_healthz_is_503_draining_after_sigterm():
    svc = sleep_service()
    svc.accept("slow", {"ms": 1500}, "hz-1")
    svc.wait_event("hz-1", ("running",), timeout=3)
    eq(svc.call("GET", "/healthz", token=None).status, 200, "/healthz before SIGTERM")
    svc.signal(signal.SIGTERM)
    deadline, r = time.time() + 1.0, None
    while time.time() < deadline:
        r = svc.call("GET", "/healthz", token=None)
        if r.status == 503:
            break
        time.sleep(0.02)
    eq(r.status, 503, "/healthz while draining (%s)" % r.short())
    eq((r.json["status"], r.json["draining"]), ("draining", True), "the draining body")
    eq(svc.call("HEAD", "/healthz", token=None).status, 503, "HEAD /healthz while draining")
    eq(svc.wait_exit(10), 0, "exit status after the drain")


@test
def trust_reload_of_wix_or_serve_says_a_restart_is_needed():
    svc = reload_service()
    svc.write("wixr.yaml", serve_config(serve="  max_body_kb: 64\n", hooks="  v:\n    - script: v.lua\n")
              .replace("rate_limit: {requests: 0}", "rate_limit: {requests: 5}"))
    h = svc.wait_health(lambda h: h["rules_version"] == 2, "the reload", timeout=5)
    eq(h.get("restart_needed"), "wix.rate_limit, serve.max_body_kb", "/healthz names what waits for a restart")
    lines = [x for x in svc.log_records() if "need a restart" in x["msg"]]
    eq([x["fields"] for x in lines], [{"restart_needed": ["wix.rate_limit", "serve.max_body_kb"]}],
       "the reload's log line")
    eq(lines[0]["level"], "warn", "level")
    # back to the settings it started with: nothing waits any more
    svc.write("wixr.yaml", serve_config(hooks="  v:\n    - script: v.lua\n"))
    h = svc.wait_health(lambda h: h["rules_version"] == 3, "the second reload", timeout=5)
    check("restart_needed" not in h, "nothing waits for a restart: %r" % h)


HOG_LUA = """return function(event, ctx)
  if event.hog then
    local t = {}
    for i = 1, 10000000 do t[i] = string.rep("x", 64) .. i end
  end
  return { fine = true }
end
"""


@test
def trust_healthz_degraded_while_a_hook_keeps_breaking():
    """A hook whose state breaks its memory cap is rebuilt (counted in /metrics); three
    rebuilds within a minute make /healthz degraded, naming the hook."""
    svc = Service(serve_config(serve="  concurrency: 1\n  retry: {attempts: 1}\n",
                               hooks="  hog:\n    - script: hog.lua\n      limits: {memory_mb: 2}\n"),
                  {"hog.lua": HOG_LUA}).start()
    svc.accept("hog", {"hog": True}, "hog-1")
    svc.wait_event("hog-1", ("dead",))
    svc.accept("hog", {"hog": False}, "ok-1")
    eq(svc.wait_event("ok-1")["state"], "done", "the next run, on a rebuilt state, is fine")
    m = svc.wait_metrics(lambda m: m.get('wixr_hook_rebuilds_total{event="hog",hook="hog.lua"}') == 1, "1 rebuild")
    eq(svc.health()["status"], "ok", "one rebuild is not degraded")
    for i in (2, 3):
        svc.accept("hog", {"hog": True}, "hog-%d" % i)
        svc.wait_event("hog-%d" % i, ("dead",))
    svc.accept("hog", {"hog": False}, "ok-2")
    svc.wait_event("ok-2")
    h = svc.wait_health(lambda h: h["status"] == "degraded", "degraded after 3 rebuilds", timeout=5)
    eq([(b["hook"], b["rebuilds"]) for b in h.get("breaking_hooks", [])], [("hog (hog.lua)", 3)], "breaking hooks")
    m = parse_metrics(svc.metrics())
    eq(m.get('wixr_hook_rebuilds_total{event="hog",hook="hog.lua"}'), 3, "rebuilds in /metrics")


@test
def trust_a_reload_that_keeps_a_breaking_hook_does_not_count_its_rebuilds_again():
    """A reload keeps the states of unchanged hooks, with their rebuild counters: the new
    rules count rebuilds from the reload on, not again the ones before it."""
    svc = Service(serve_config(serve="  concurrency: 1\n  retry: {attempts: 1}\n  workers: 1\n",
                               hooks="  hog:\n    - script: hog.lua\n      limits: {memory_mb: 2}\n"
                                     "  v:\n    - script: v.lua\n"),
                  {"hog.lua": HOG_LUA, "v.lua": version_lua(0)}).start()

    def break_it(tag):
        svc.accept("hog", {"hog": True}, "hog-" + tag)
        svc.wait_event("hog-" + tag, ("dead",))
        svc.accept("hog", {"hog": False}, "ok-" + tag)
        eq(svc.wait_event("ok-" + tag)["state"], "done", "the run after %s, on a rebuilt state" % tag)

    for i in (1, 2, 3):
        break_it("a%d" % i)
    svc.wait_health(lambda h: h["status"] == "degraded", "degraded after 3 rebuilds", timeout=5)
    svc.write("v.lua", version_lua(1))  # hog.lua is unchanged: its state is kept
    svc.wait_health(lambda h: h["rules_version"] == 2, "the reload", timeout=5)
    reloaded = [x["fields"] for x in svc.log_records() if x["msg"] == "rules reloaded"]
    eq(reloaded[-1].get("kept"), 1, "the reload kept hog's state")
    svc.accept("hog", {"hog": False}, "ok-b0")  # (a report from the worker on the new rules)
    svc.wait_event("ok-b0")
    time.sleep(0.6)  # (two /healthz snapshots)
    h = svc.health()
    eq((h["status"], h.get("breaking_hooks", [])), ("ok", []), "after the reload, nothing counted again")
    break_it("b1")
    break_it("b2")
    time.sleep(0.6)
    eq(svc.health()["status"], "ok", "two rebuilds since the reload are not degraded")
    break_it("b3")
    h = svc.wait_health(lambda h: h["status"] == "degraded", "degraded after 3 rebuilds since the reload", timeout=5)
    eq([(b["hook"], b["rebuilds"]) for b in h.get("breaking_hooks", [])], [("hog (hog.lua)", 3)], "breaking hooks")


@test
def trust_a_hooks_retry_overrides_what_is_retried():
    """retry: always retries even a permanent failure; retry: never makes every failure final;
    a bad value is an error at its line and column."""
    hooks = ("  refuse:\n    - script: refuse.lua\n      retry: always\n"
             "  oops:\n    - script: oops.lua\n      retry: never\n")
    svc = Service(serve_config(serve="  retry: {attempts: 3, base_ms: 20, max_ms: 20}\n", hooks=hooks),
                  {"refuse.lua": REFUSE_LUA, "oops.lua": ALWAYS_FAIL_LUA}).start()
    svc.accept("refuse", {"plan": "x"}, "ra-1")
    svc.accept("oops", {"n": 1}, "on-1")
    ra = svc.wait_event("ra-1", ("dead",))
    on = svc.wait_event("on-1", ("dead",))
    eq((ra["attempts"], on["attempts"]), (3, 1), "attempts with retry: always / never")
    check(on["last_error"].startswith("permanent: ") and "refused: 1" in on["last_error"],
          "last_error: %r" % on["last_error"])
    dead = {x["fields"]["id"]: x["fields"]["why"] for x in svc.log_records() if x["msg"] == "event is dead"}
    eq(dead, {"ra-1": "its last attempt failed", "on-1": "the hook's retry is never"}, "why each is dead")
    svc.kill()
    svc.write("wixr.yaml", serve_config(hooks="  oops:\n    - script: oops.lua\n      retry: sometimes\n"))
    svc.spawn()
    eq(svc.wait_exit(10), 3, "exit status with a bad retry value")
    text = svc.log_of_this_start()
    line = len(serve_config(hooks="").splitlines()) + 3
    lines = [json.loads(x) for x in text.splitlines() if x and not x.startswith("--- start")]
    eq([x["level"] for x in lines], ["error"], "a refused start is one JSON log line too: %r" % text[-300:])
    check("wixr.yaml:%d:14: retry: 'sometimes' is not transient, always or never" % line in lines[0]["msg"],
          "the error names the place: %r" % lines[0]["msg"])


# ---- the HTTP front: framing, bodies before authentication, ids ----

def raw_request(port, head, body=b"", timeout=5):
    """Sends head (the request line and headers, without the blank line) and
    body, and reads until the server closes or timeout; returns (status, headers,
    body, seconds to the first byte of the answer) or (None, {}, b"", None)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        t0 = time.time()
        s.sendall(head + b"\r\n\r\n" + body)
        data, first = b"", None
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            if first is None:
                first = time.time() - t0
            data += chunk
            if b"\r\n\r\n" in data:
                top, rest = data.split(b"\r\n\r\n", 1)
                m = re.search(rb"(?im)^content-length:\s*(\d+)", top)
                if m and len(rest) >= int(m.group(1)):
                    break
    finally:
        s.close()
    if not data:
        return None, {}, b"", None
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers, rest, first


@test
def http_front_answers_before_the_body_and_refuses_ambiguous_requests():
    svc = intake_service().start()
    auth = ("Authorization: Bearer %s" % TOKEN).encode()
    big = b"Content-Length: 10485760"

    def answer(head, status, code, what, body=b""):
        st, hs, b, first = raw_request(svc.port, head, body)
        eq(st, status, "%s: status (answer %r)" % (what, b[:200]))
        kind, _ = wix_error(json.loads(b), what)
        eq(kind, code, "%s: error code" % what)
        return first

    # a 10 MB body announced but not sent: the answer comes from the headers alone
    for head, status, code, what in (
            (b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n" + big, 401, "UNAUTHENTICATED", "no token"),
            (b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n" + big, 401,
             "UNAUTHENTICATED", "a wrong token"),
            (b"POST /metrics HTTP/1.1\r\nHost: x\r\n" + big, 401, "UNAUTHENTICATED", "/metrics without a token"),
            (b"POST /healthz HTTP/1.1\r\nHost: x\r\n" + big, 405, "METHOD_NOT_ALLOWED", "POST /healthz"),
            (b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n" + big, 413,
             "PAYLOAD_TOO_LARGE", "over the cap, with the token")):
        first = answer(head, status, code, what + ", 10 MB announced")
        check(first is not None and first < 2, "%s: answered before the body (%.2f s)" % (what, first or -1))
    st, _, b, first = raw_request(svc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big)
    eq(st, 200, "GET /healthz with 10 MB announced (%r)" % b[:200])
    eq(json.loads(b)["status"], "ok", "its body")
    # framing a proxy might read otherwise: 400, whatever the token
    post = b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    body = b'{"of": "smuggled"}'
    n = str(len(body)).encode()
    answer(post + b"Content-Length: " + n + b"\r\nContent-Length: " + n, 400, "BAD_REQUEST",
           "two equal Content-Length", body)
    answer(post + b"Content-Length: " + n + b"\r\nContent-Length: 5", 400, "BAD_REQUEST",
           "two different Content-Length", body)
    answer(post + b"Content-Length: " + n + b"\r\nTransfer-Encoding: chunked", 400, "BAD_REQUEST",
           "Content-Length and chunked", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    answer(post + b"Transfer-Encoding: chunked\r\nContent-Length: " + n, 400, "BAD_REQUEST",
           "chunked and Content-Length", b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    st, _, b, _ = raw_request(svc.port, post + b"X-Event-Id: ab\x00cd\r\nContent-Length: " + n, body)
    eq(st, 400, "a NUL in a header value (%r)" % b[:200])
    st, _, b, _ = raw_request(svc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Junk: a\x00b")
    eq(st, 400, "a NUL in a header value of /healthz (%r)" % b[:200])
    many = b"".join(b"\r\nX-H%d: v" % i for i in range(300))
    st, _, b, _ = raw_request(svc.port, b"GET /healthz HTTP/1.1\r\nHost: x" + many)
    eq(st, 400, "300 headers (%r)" % b[:200])
    check(b"more than 256 headers" in b, "the answer says why: %r" % b[:200])
    few = b"".join(b"\r\nX-H%d: v" % i for i in range(200))
    st, _, b, _ = raw_request(svc.port, b"GET /healthz HTTP/1.1\r\nHost: x" + few)
    eq(st, 200, "200 headers (%r)" % b[:200])
    # ids: a bidi control would make one id read as another
    for ident in ("abc\u202edcba", "x\u2066y", "x\u200fy"):
        r = svc.post("provision", {"of": "bidi"}, ident.encode("utf-8").decode("latin-1"))
        eq(r.status, 400, "X-Event-Id with a bidi control %r (%s)" % (ident, r.short()))
        eq(wix_error(r.json)[0], "INVALID_ARGUMENT X-Event-Id", "the field named")
        r = svc.post("provision", {"of": "bidi", "event_id": ident})
        eq(r.status, 400, "event_id with a bidi control %r (%s)" % (ident, r.short()))
        eq(wix_error(r.json)[0], "INVALID_ARGUMENT event_id", "the field named")
    # none of it was stored, and the service is fine
    svc.accept("provision", {"of": "after"}, "after-1")
    eq([e["id"] for e in svc.events_json()], ["after-1"], "the journal holds only the valid event")
    check(svc.alive(), "the service is still running")


# ---- journal failures are failures ----

def health_raw(svc):
    r = svc.call("GET", "/healthz", token=None)
    return r.status, r.json


def wait_health_status(svc, status, pred, what, timeout=5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = health_raw(svc)
        if last[0] == status and pred(last[1]):
            return last[1]
        time.sleep(0.05)
    raise TestFailure("/healthz never answered %d with %s within %.1f s; last %r" % (status, what, timeout, last))


@test
def journal_disk_full_answers_503_and_resumes_when_there_is_room():
    jfs = work_folder("wixr-jfs-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", jfs], check=True)
    svc = None
    try:
        svc = Service(serve_config(serve="  journal: %s\n" % json.dumps(os.path.join(jfs, "journal.db")),
                                   hooks="  count:\n    - script: count.lua\n  slow:\n    - script: slow.lua\n"),
                      {"count.lua": COUNT_LUA, "slow.lua": SLEEP_LUA}).start()
        svc.accept("count", {"of": "before"}, "before-1")
        svc.wait_event("before-1")
        # a run in flight when the disk fills: its outcome cannot be written
        svc.accept("slow", {"ms": 1500}, "slow-1")
        svc.wait_event("slow-1", ("running",))
        with open(os.path.join(jfs, "filler"), "wb", buffering=0) as f:  # (unbuffered: nothing left to write at close)
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        accepted, refused = [], None
        pad = "p" * 30000
        for i in range(300):
            r = svc.post("count", {"of": "full", "pad": pad}, "full-%d" % i)
            if r.status == 202:
                accepted.append("full-%d" % i)
                continue
            refused = r
            break
        check(refused is not None, "a full disk never refused an event (%d accepted)" % len(accepted))
        eq(refused.status, 503, "intake on a full disk (%s)" % refused.short())
        kind, text = wix_error(refused.json, "intake on a full disk")
        eq(kind, "JOURNAL", "error code")
        check("full" in text and "send it again later" in text, "the answer says why: %r" % text)
        h = wait_health_status(svc, 503, lambda h: "journal_failure" in h, "the journal failing")
        eq(h["status"], "journal_failing", "/healthz status")
        check("full" in h["journal_failure"]["error"], "/healthz says why: %r" % h)
        eq(h["journal_failure"]["restart_needed"], False, "a full disk needs no restart")
        # while it fails no run starts: slow-1, whose outcome could not be written,
        # does not run again and again
        def runs():
            return sum(v for k, v in parse_metrics(svc.metrics()).items() if k.startswith("wixr_hook_runs_total"))
        deadline = time.time() + 5
        while runs() < 2 and time.time() < deadline:  # before-1 and slow-1's first run
            time.sleep(0.05)
        eq(runs(), 2, "hook runs once slow-1's first run ended")
        time.sleep(3.2)  # two more runs of slow-1, were it started again
        eq(health_raw(svc)[0], 503, "/healthz still 503 on a full disk")
        eq(runs(), 2, "hook runs while the journal fails (slow-1 is not run again)")
        # while it fails, every event is refused at once (nothing taken that cannot be kept)
        r = svc.post("count", {"of": "small"}, "small-1")
        eq((r.status, wix_error(r.json)[0]), (503, "JOURNAL"), "a small event while failing (%s)" % r.short())
        errors = [x for x in svc.log_records() if x["msg"].startswith("the journal cannot be written")]
        eq(len(errors), 1, "one error line in the log for the failure, not one per event: %r" % errors)
        # room again: the probe sees it, intake and runs resume, nothing accepted was lost
        os.unlink(os.path.join(jfs, "filler"))
        h = wait_health_status(svc, 200, lambda h: "journal_failure" not in h, "the journal ok again", timeout=10)
        eq(h["status"], "ok", "/healthz status after the disk has room")
        svc.accept("count", {"of": "after"}, "after-1")
        for ident in accepted + ["after-1", "slow-1"]:
            svc.wait_event(ident, timeout=20)
        check(any(x["msg"].startswith("the journal takes writes again") for x in svc.log_records()),
              "the recovery is logged")
    finally:
        if svc:
            svc.kill()
        subprocess.run(["umount", "-l", jfs], check=False)


@test
def journal_deleted_under_the_service_answers_503():
    svc = intake_service().start()
    svc.accept("count", {"of": "before"}, "before-1")
    svc.wait_event("before-1")
    os.unlink(svc.state("journal.db"))
    h = wait_health_status(svc, 503, lambda h: "journal_failure" in h, "the journal failing", timeout=3)
    eq(h["status"], "journal_failing", "/healthz status")
    check("deleted" in h["journal_failure"]["error"] and "restart" in h["journal_failure"]["error"],
          "/healthz says why: %r" % h)
    eq(h["journal_failure"]["restart_needed"], True, "a deleted journal needs a restart")
    r = svc.post("count", {"of": "lost"}, "lost-1")
    eq(r.status, 503, "intake with the journal deleted (%s)" % r.short())
    kind, text = wix_error(r.json, "intake with the journal deleted")
    eq(kind, "JOURNAL", "error code")
    check("deleted" in text, "the answer says why: %r" % text)
    time.sleep(2.5)  # past a probe: a deleted file stays failed
    eq(health_raw(svc)[0], 503, "/healthz still 503 after a probe")
    check(svc.alive(), "the service is still running")


@test
def journal_corrupted_under_the_service_answers_503():
    svc = intake_service().start()
    svc.accept("count", {"of": "before"}, "before-1")
    svc.wait_event("before-1")
    path = svc.state("journal.db")
    with open(path, "r+b") as f:  # the page cache and the WAL would hide this from reads
        f.write(os.urandom(4096))
    h = wait_health_status(svc, 503, lambda h: "journal_failure" in h, "the journal failing", timeout=3)
    check("corrupted" in h["journal_failure"]["error"], "/healthz says why: %r" % h)
    eq(h["journal_failure"]["restart_needed"], True, "a corrupted journal needs a restart")
    r = svc.post("count", {"of": "lost"}, "lost-1")
    eq((r.status, wix_error(r.json)[0]), (503, "JOURNAL"), "intake with the journal corrupted (%s)" % r.short())
    check(svc.alive(), "the service is still running")


@test
def journal_wal_stays_under_its_bound_under_sustained_intake():
    """A checkpoint beside a writer that keeps appending never lets the WAL start over: the writer
    checkpoints what it wrote between its group commits (and past serve.journal_wal_mb waits for
    readers and truncates it), so intake as fast as it goes cannot grow it without end (it grew by
    12-53 KB an event, for ever: 400 MB in these 8 s)."""
    svc = intake_service("  accept_unknown_events: true\n  journal_wal_mb: 2\n").start()
    wal = os.path.join(svc.dir, ".wixr", "journal.db-wal")
    stop = time.time() + 8
    errors = []

    def poster(t):
        ka = KeepAlive(svc)
        i = 0
        try:
            while time.time() < stop:
                st, body = ka.post("bulk", {"n": i, "pad": "x" * 4000}, "w%d-%d" % (t, i))
                if st != 202:
                    errors.append((st, body[:200]))
                    return
                i += 1
        finally:
            ka.close()

    threads = [threading.Thread(target=poster, args=(t,), daemon=True) for t in range(4)]
    for th in threads:
        th.start()
    biggest = 0
    while any(th.is_alive() for th in threads):
        try:
            biggest = max(biggest, os.stat(wal).st_size)
        except OSError:
            pass
        time.sleep(0.02)
    check(not errors, "intake failed: %r" % errors[:3])
    m = parse_metrics(svc.metrics())
    accepted = m.get("wixr_events_accepted_total", 0)
    check(accepted > 2000, "only %d events accepted in 8 s" % accepted)
    # the bound, plus what the group commits of one look (50 ms) can add
    check(biggest < 6 * 1024 * 1024, "the WAL reached %.1f MB (bound 2 MB) after %d events"
          % (biggest / 1048576, accepted))


@test
def journal_retention_keeps_the_newest_finished_events():
    """serve.journal_keep_events: the writer deletes the oldest finished events beyond the count,
    in the background; unfinished ones are never touched, and the counts follow."""
    svc = Service(serve_config(serve="  journal_keep_events: 5\n  concurrency: 1\n",
                               hooks="  count:\n    - script: count.lua\n"), {"count.lua": COUNT_LUA}).start()
    for i in range(12):
        svc.accept("count", {"of": i}, "keep-%02d" % i)
    h = svc.wait_health(lambda h: h["journal"]["done"] == 5 and h["journal"]["accepted"] == 0
                        and h["journal"]["running"] == 0, "5 done events kept", timeout=20)
    eq(h["journal"]["dead"], 0, "no dead events")
    ids = [e["id"] for e in svc.events_json()]
    eq(len(ids), 5, "five events in the journal: %r" % ids)
    check("keep-11" in ids, "the last one finished is kept: %r" % ids)
    eq(parse_metrics(svc.metrics()).get("wixr_events_purged_total"), 7.0, "wixr_events_purged_total")


@test
def journal_and_state_files_are_private():
    old = os.umask(0o022)
    try:
        svc = intake_service().start()
    finally:
        os.umask(old)
    svc.accept("count", {"of": "x"}, "x-1")
    svc.wait_event("x-1")
    for name in ("journal.db", "journal.db-wal", "journal.db-shm", "serve.pid", "serve.port"):
        mode = os.stat(svc.state(name)).st_mode & 0o777
        eq(oct(mode), oct(0o600), "mode of %s" % name)


def main():
    only = parse_args(__doc__)
    try:
        return run_tests(TESTS, only)
    finally:
        remove_work_folders()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Integration tests of the wix Lua module through `wixr run`.

Usage: test_wix_module.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Runs tests/lua scripts over both transports (the in-process sandbox and HTTP
to `wixr sandbox serve`), and checks retries against injected faults (attempt
counts, one idempotency key, no duplicate package), dry-run, the rate limiter,
concurrency, error reporting and that the API key never leaks.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import ARGS, JANE, Client, Server, TestFailure, check, eq, ok, parse_args, run_tests  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(os.path.dirname(HERE), "lua")
SERVICE = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"
SECRET = "sk-test-SECRET-4f9a7c2e"
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Run:
    def __init__(self, rc, out, err, elapsed):
        self.rc, self.out, self.err, self.elapsed = rc, out, err, elapsed

    @property
    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            raise TestFailure("not JSON on stdout: %r (stderr %r)" % (self.out[:300], self.err[:300]))

    def __str__(self):
        return "rc=%s stdout=%r stderr=%r" % (self.rc, self.out[-400:], self.err[-600:])


class Work:
    """A temporary working folder with a config file; runs wixr there."""

    def __init__(self, config="wix:\n  rate_limit: {requests: 0}\n"):
        self.dir = tempfile.mkdtemp(prefix="wixr-run-")
        self.config = self.write("wixr.yaml", config)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def run(self, *args, env=None, stdin=None, timeout=60):
        e = {k: v for k, v in os.environ.items() if not k.startswith("WIX_")}
        e.update(env or {})
        t0 = time.time()
        p = subprocess.run([ARGS.wixr, "run"] + list(args), cwd=self.dir, env=e, input=stdin,
                           capture_output=True, text=True, timeout=timeout)
        return Run(p.returncode, p.stdout, p.stderr, time.time() - t0)

    def files_text(self):
        """Everything under the folder, as text (for leak checks)."""
        chunks = []
        for root, _, files in os.walk(self.dir):
            for f in files:
                with open(os.path.join(root, f), "rb") as fh:
                    chunks.append(fh.read().decode("latin-1"))
        return "\n".join(chunks)


def http_env(server, key="test-key"):
    return {"WIX_BASE_URL": "http://127.0.0.1:%d" % server.port, "WIX_API_KEY": key}


def server():
    return Server().start()


def stats(srv):
    return ok(Client(srv).admin("GET", "stats"), "stats")


def request_log(srv):
    return ok(Client(srv).admin("GET", "requests"), "request log")["requests"]


def fault(srv, rule):
    ok(Client(srv).admin("POST", "faults", rule), "add fault")


CREATE_ONE = """
local wix = require "wix"
local p = wix.packages.create{ account_id = "%s", idempotency_key = "order-42",
  products = {{ catalog_product_id = "%s", country_code = "DE" }} }
return { id = p.id, n = #p.product_instances }
""" % (JANE, SERVICE)

RETRY_CONFIG = """wix:
  rate_limit: {requests: 0}
  retry: {attempts: %d, base_ms: 10, max_ms: 50}
  audit: audit.log
  timeout_ms: %d
"""


def audit_lines(w):
    with open(os.path.join(w.dir, "audit.log")) as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------
# The whole API, both transports
# ---------------------------------------------------------------------------

@test
def api_over_the_in_process_sandbox():
    w = Work()
    r = w.run(os.path.join(LUA, "wix_api.lua"), "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.json["result"]["transport"], "sandbox", "transport")
    check(r.json["result"]["checks"] >= 60, "checks run: %r" % r.json)
    check("using the embedded sandbox emulator" in r.err, "says it uses the sandbox: %r" % r.err)
    check(os.path.exists(os.path.join(w.dir, ".wixr", "sandbox.db")), "sandbox state in .wixr/")


@test
def api_over_http_to_sandbox_serve():
    srv = server()
    w = Work()
    r = w.run(os.path.join(LUA, "wix_api.lua"), "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.json["result"]["transport"], "http", "transport")
    check("sandbox" not in r.err, "no sandbox notice over http: %r" % r.err)
    check(stats(srv)["packages"] >= 8, "packages created on the server")


# ---------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------

@test
def retry_5xx_after_apply_reuses_the_key_and_creates_one_package():
    srv = server()
    fault(srv, {"pathPrefix": "/resellers/v2/packages", "errorRate": 1, "after": True, "count": 2})
    w = Work(RETRY_CONFIG % (5, 5000))
    w.write("create.lua", CREATE_ONE)
    r = w.run("create.lua", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.json["stats"]["attempts"], 3, "attempts")
    eq(r.json["stats"]["retries"], 2, "retries")
    eq(stats(srv)["packages"], 1, "packages on the server (no duplicate)")
    log = [x for x in request_log(srv) if x["method"] == "POST"]
    eq([x["status"] for x in log], [503, 503, 200], "statuses seen by the server")
    eq({x["idempotencyKey"] for x in log}, {"order-42"}, "one idempotency key for every attempt")
    lines = audit_lines(w)
    eq([(x["attempt"], x["status"]) for x in lines], [(1, 503), (2, 503), (3, 200)], "audit attempts")
    check(all(x["idempotency_key"] == "order-42" and x["transport"] == "http" for x in lines), "audit fields")


@test
def retry_generated_key_survives_dropped_answers():
    srv = server()
    fault(srv, {"pathPrefix": "/resellers/v2/packages", "dropRate": 1, "after": True, "count": 2})
    w = Work(RETRY_CONFIG % (5, 5000))
    w.write("create.lua", CREATE_ONE.replace('idempotency_key = "order-42",', ""))
    r = w.run("create.lua", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(stats(srv)["packages"], 1, "one package although two answers were lost")
    keys = {x.get("idempotencyKey") for x in request_log(srv) if x["method"] == "POST"}
    eq(len(keys), 1, "the generated key is reused: %r" % keys)
    check(all(k and len(k) == 36 for k in keys), "generated key is a GUID")
    check(any("error" in x for x in audit_lines(w)), "audit records the transport error")


@test
def retry_honours_retry_after_on_429():
    srv = server()
    fault(srv, {"pathPrefix": "/resellers/v2/packages", "throttleRate": 1, "retryAfter": 1, "count": 1})
    w = Work(RETRY_CONFIG % (3, 5000))
    w.write("create.lua", CREATE_ONE)
    r = w.run("create.lua", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.json["stats"]["attempts"], 2, "attempts")
    check(r.elapsed >= 1.0, "waited for Retry-After: %.2f s" % r.elapsed)
    eq(stats(srv)["packages"], 1, "packages")


@test
def retry_gives_up_after_the_last_attempt_with_a_structured_error():
    srv = server()
    fault(srv, {"pathPrefix": "/resellers/v2/packages", "errorRate": 1, "errorStatus": 503})
    w = Work(RETRY_CONFIG % (3, 5000))
    w.write("create.lua", CREATE_ONE)
    r = w.run("create.lua", "--json", env=http_env(srv))
    eq(r.rc, 1, "exit status (%s)" % r)
    err = r.json["error"]
    check("create.lua:3: wix: 503 UNAVAILABLE" in err and "3 attempts" in err, "error text: %r" % err)
    eq(len([x for x in request_log(srv) if x["method"] == "POST"]), 3, "requests sent")
    eq(stats(srv)["packages"], 0, "nothing created")


@test
def transport_errors_name_the_url_they_could_not_reach():
    # a port nothing listens on; the base URL carries credentials, which the message leaves out
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    w = Work(RETRY_CONFIG % (2, 2000))
    w.write("create.lua", CREATE_ONE)
    r = w.run("create.lua", "--json", env={"WIX_BASE_URL": "http://user:pa55word@127.0.0.1:%d" % port,
                                           "WIX_API_KEY": "k"})
    eq(r.rc, 1, "exit status (%s)" % r)
    err = r.json["error"]
    check("TRANSPORT" in err and "(http://127.0.0.1:%d/resellers/v2/packages)" % port in err,
          "the error names the URL: %r" % err)
    check("pa55word" not in r.out + r.err and "user:" not in err, "no credentials in the message: %r" % err)
    check("pa55word" not in "".join(json.dumps(x) for x in audit_lines(w)), "no credentials in the audit log")


@test
def retry_after_a_timeout():
    srv = server()
    fault(srv, {"pathPrefix": "/resellers/v2/packages", "latencyMs": 1500, "count": 1, "errorRate": 1,
                "errorStatus": 503})
    w = Work(RETRY_CONFIG % (3, 300))
    w.write("create.lua", CREATE_ONE)
    r = w.run("create.lua", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    lines = audit_lines(w)
    eq(lines[0]["status"], 0, "first attempt got no answer")
    check("imeout" in lines[0].get("error", ""), "timeout recorded: %r" % lines[0])
    eq(lines[-1]["status"], 200, "last attempt")


@test
def client_errors_are_not_retried():
    srv = server()
    w = Work(RETRY_CONFIG % (5, 5000))
    w.write("bad.lua", CREATE_ONE.replace(SERVICE, "00000000-0000-4000-8000-000000000000"))
    r = w.run("bad.lua", "--json", env=http_env(srv))
    eq(r.rc, 1, "exit status")
    check("404 PRODUCT_NOT_FOUND" in r.json["error"], "error: %r" % r.json)
    eq(r.json["stats"]["attempts"], 1, "a 404 is not retried")


# ---------------------------------------------------------------------------
# Dry run, rate limit, concurrency
# ---------------------------------------------------------------------------

DRY = """
local wix = require "wix"
local me = { account_id = "%s" }
return function(event, ctx)
  local p = wix.packages.create{ account_id = me.account_id, external_id = "dry",
    products = {{ catalog_product_id = "%s", country_code = "de" }} }
  local real = wix.packages.query({ filter = { external_id = "keep" } }, me).packages[1]
  local moved = wix.instances.unassign(real.product_instances[1].instance_id, me)
  local ok, e = pcall(wix.instances.cancel, "00000000-0000-4000-8000-000000000000", me)
  return { dry = ctx.dry_run, simulated = p.dry_run, pending = p.product_instances[1].status,
           moved_site = moved.product_instances[1].site_id or "floating", missing = e.code }
end
""" % (JANE, SERVICE)


@test
def dry_run_sends_no_mutation_and_prints_the_plan():
    srv = server()
    c = Client(srv)
    body = {"externalId": "keep", "products": [{"catalogProductId": SERVICE, "countryCode": "DE",
                                                 "siteId": "c0000000-0000-4000-8000-000000000001"}]}
    ok(c.call("POST", "/resellers/v2/packages", body), "seed package")
    w = Work()
    w.write("dry.lua", DRY)
    r = w.run("dry.lua", "--dry-run", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    res = r.json["result"]
    eq(res, {"dry": True, "simulated": True, "pending": "PENDING", "moved_site": "floating",
             "missing": "PRODUCT_INSTANCE_NOT_FOUND"}, "result")
    planned = r.json["planned"]
    eq([(p["method"], p["path"].split("/")[-1]) for p in planned], [("POST", "packages"), ("PATCH", "unassign")],
       "planned calls")
    eq(planned[0]["body"]["products"][0]["countryCode"], "DE", "plan shows wire (camelCase) bodies")
    eq(stats(srv)["packages"], 1, "nothing created")
    log = request_log(srv)
    check(all(x["method"] in ("GET", "POST") for x in log), "no mutating request sent: %r" % log)
    check(not [x for x in log if x["path"] == "/resellers/v2/packages" and x["accountId"] == JANE][1:],
          "only the seed create reached the server")
    r2 = w.run("dry.lua", "--dry-run", env=http_env(srv))
    check("dry run: 2 mutating calls not sent" in r2.err and "PATCH /resellers/v1/packages/product-instances/" in r2.err,
          "human plan on stderr: %r" % r2.err)


@test
def rate_limiter_spaces_calls_without_429s():
    srv = server()
    ok(Client(srv).admin("POST", "settings", {"rateLimit": True, "requestsPerMinute": 6}), "server limit 6/min")
    w = Work("wix:\n  rate_limit: {requests: 3, per_seconds: 1}\n")
    w.write("gets.lua", """
local wix = require "wix"
for i = 1, 6 do pcall(wix.packages.get, "0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b", { account_id = "%s" }) end
return wix.stats()
""" % JANE)
    r = w.run("gets.lua", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    check(r.elapsed >= 1.0, "6 calls at 3/s take a second or more: %.2f" % r.elapsed)
    check(r.json["result"]["rate_waits"] >= 1, "rate waits counted: %r" % r.json)
    eq([x["status"] for x in request_log(srv)], [404] * 6, "no 429 reached the client")


CONCURRENT = """
local wix = require "wix"
local fns = {}
for i = 1, 16 do
  fns[i] = function() return pcall(wix.packages.get, "0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b", { account_id = "%s" }) end
end
wix.all(fns)
return wix.stats()
""" % JANE


@test
def calls_overlap_up_to_the_concurrency_bound():
    srv = server()
    fault(srv, {"latencyMs": 200})
    w = Work("wix:\n  rate_limit: {requests: 0}\n  concurrency: 16\n")
    w.write("conc.lua", CONCURRENT)
    r = w.run("conc.lua", "--json", env=http_env(srv))
    eq(r.rc, 0, "exit status (%s)" % r)
    check(r.elapsed < 1.5, "16 calls of 200 ms at once: %.2f s (sequential would be 3.2 s)" % r.elapsed)
    w4 = Work("wix:\n  rate_limit: {requests: 0}\n  concurrency: 4\n")
    w4.write("conc.lua", CONCURRENT)
    r4 = w4.run("conc.lua", "--json", env=http_env(srv))
    eq(r4.rc, 0, "exit status (%s)" % r4)
    check(r4.elapsed >= 0.8, "4 at a time: 4 rounds of 200 ms, got %.2f s" % r4.elapsed)


# ---------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------

@test
def the_api_key_never_appears_in_output_audit_errors_or_state():
    srv = Server("--keys", SECRET).start()
    w = Work(RETRY_CONFIG % (2, 5000))
    w.write("create.lua", CREATE_ONE)
    w.write("fail.lua", CREATE_ONE.replace(SERVICE, "00000000-0000-4000-8000-000000000000"))
    runs = [w.run("create.lua", "--json", env=http_env(srv, SECRET)),
            w.run("fail.lua", "--trace", env=http_env(srv, SECRET)),
            w.run("fail.lua", "--json", "--dry-run", env=http_env(srv, SECRET)),
            w.run("create.lua", env=http_env(srv, SECRET + "-wrong"))]
    eq(runs[0].rc, 0, "the right key works (%s)" % runs[0])
    eq(runs[3].rc, 1, "a wrong key is refused")
    check("401 UNAUTHENTICATED" in runs[3].err, "401 reported: %r" % runs[3].err)
    w2 = Work("wix:\n  api_key_file: key.txt\n  audit: audit.log\n  rate_limit: {requests: 0}\n")
    w2.write("key.txt", SECRET + "\n")
    w2.write("create.lua", CREATE_ONE.replace("order-42", "order-43"))
    e = http_env(srv)
    del e["WIX_API_KEY"]
    runs.append(w2.run("create.lua", "--json", env=e))
    eq(runs[-1].rc, 0, "key from wix.api_key_file (%s)" % runs[-1])
    everything = "".join(r.out + r.err for r in runs) + w.files_text() + srv.log_text() + \
        json.dumps(request_log(srv)) + w2.files_text().replace(SECRET + "\n", "")
    check(SECRET not in everything, "the API key leaked somewhere")
    check(os.path.getsize(os.path.join(w.dir, "audit.log")) > 0, "the audit log was written")


# ---------------------------------------------------------------------------
# Scripts, events, configuration
# ---------------------------------------------------------------------------

@test
def lua_errors_say_script_and_line():
    w = Work()
    w.write("syntax.lua", "local x = 1\nlocal = 2\n")
    r = w.run("syntax.lua")
    eq(r.rc, 3, "syntax error exit status")
    check("syntax.lua:2:" in r.err, "position: %r" % r.err)
    w.write("boom.lua", "return function(event)\n  local t = nil\n  error('kaboom: ' .. event.name)\nend\n")
    r = w.run("boom.lua", "--event", "-", stdin='{"name": "x"}')
    eq(r.rc, 1, "runtime error exit status")
    check("boom.lua:3: kaboom: x" in r.err, "message: %r" % r.err)
    r = w.run("boom.lua", "--event", "-", "--trace", stdin='{"name": "x"}')
    check("stack traceback" in r.err, "--trace prints a traceback: %r" % r.err)
    w.write("badcall.lua", "local wix = require 'wix'\nlocal function f()\n  wix.packages.get('nope')\nend\nf()\n")
    r = w.run("badcall.lua")
    eq(r.rc, 1, "wix error exit status")
    check("badcall.lua:3: wix: 400 INVALID_ARGUMENT: id: must be a GUID" in r.err, "wix error position: %r" % r.err)


@test
def the_handler_gets_the_event_and_ctx():
    w = Work()
    w.write("h.lua", "return function(event, ctx)\n  ctx.log('info', 'handling', { n = event.n })\n"
                     "  return { n = event.n * 2, dry = ctx.dry_run, name = ctx.event.name }\nend\n")
    w.write("ev.json", '{"n": 21}')
    r = w.run("h.lua", "--event", "ev.json", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.json["result"], {"n": 42, "dry": False, "name": "run"}, "result")
    log = [json.loads(x) for x in r.err.splitlines() if x.startswith("{")]
    eq([(x["level"], x["msg"], x["fields"]) for x in log], [("info", "handling", {"n": 21})], "ctx.log line")
    r = w.run("h.lua", "--event", "ev.json")
    check('"n": 42' in r.out, "human output is indented JSON: %r" % r.out)
    w.write("bad.json", '{"n": 21,\n  "m": }')
    r = w.run("h.lua", "--event", "bad.json")
    eq(r.rc, 3, "bad event exit status")
    check("bad.json:2:8: unexpected character" in r.err, "event error position: %r" % r.err)


@test
def configuration_errors_are_positioned():
    w = Work("wix:\n  retyr: {attempts: 2}\n")
    w.write("s.lua", "return 1\n")
    r = w.run("s.lua")
    eq(r.rc, 3, "exit status")
    check("wixr.yaml:2:3: unknown key 'retyr' in wix (did you mean 'retry'?)" in r.err, "message: %r" % r.err)
    w = Work("wix:\n  account_id: ${WIXR_TEST_UNSET_VAR}\n")
    w.write("s.lua", "return 1\n")
    r = w.run("s.lua")
    check(r.rc == 3 and "wixr.yaml:2:15: ${WIXR_TEST_UNSET_VAR} is not set" in r.err, "unset reference: %s" % r)
    w = Work("wix:\n  transport: http\n")
    w.write("s.lua", "return 1\n")
    r = w.run("s.lua")
    check(r.rc == 3 and "no API key" in r.err, "http without a key: %s" % r)
    w = Work("wix:\n  concurrency: lots\n")
    w.write("s.lua", "return 1\n")
    r = w.run("s.lua")
    check(r.rc == 3 and "wixr.yaml:2:16: wix.concurrency: expected a whole number" in r.err, "type error: %s" % r)


@test
def help_and_usage():
    w = Work()
    r = w.run("--help")
    eq(r.rc, 0, "--help exit status")
    check("usage: wixr run SCRIPT.lua" in r.out, "usage text")
    r = w.run()
    eq(r.rc, 2, "no script: usage error")
    r = w.run("a.lua", "--bogus")
    eq(r.rc, 2, "unknown option: usage error")


def main():
    return run_tests(TESTS, parse_args(__doc__))


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the integration tests: the seed data of config/catalog.yaml,
a `wixr sandbox serve` process on a free port, waiting for a port file, a
keep-alive HTTP client, the result of a `wixr` command (Run), a temporary
folder to run wixr in (Folder), sanitizer checks, the assertions and the
runner that prints "N passed, N failed".
Python 3 standard library only."""
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

# Set by the test program from its --wixr and --catalog arguments.
class _Args:
    wixr = None
    catalog = None


ARGS = _Args()
SERVERS = []

# ---------------------------------------------------------------------------
# Seed data (config/catalog.yaml)
# ---------------------------------------------------------------------------

RESELLER = "11111111-2222-4333-8444-555555555555"
TEAM = "22222222-3333-4444-8555-666666666666"
JANE = "33333333-4444-4555-8666-777777777777"
BOB = "44444444-5555-4666-8777-888888888888"
OTHER = "99999999-8888-4777-8666-555555555555"

SITE_RESELLER = "a0000000-0000-4000-8000-000000000001"
SITE_TEAM1 = "b0000000-0000-4000-8000-000000000001"
SITE_TEAM2 = "b0000000-0000-4000-8000-000000000002"
SITE_TEAM3 = "b0000000-0000-4000-8000-000000000003"
SITE_JANE1 = "c0000000-0000-4000-8000-000000000001"
SITE_JANE2 = "c0000000-0000-4000-8000-000000000002"
SITE_BOB = "d0000000-0000-4000-8000-000000000001"
SITE_OTHER = "e0000000-0000-4000-8000-000000000001"

P_LIGHT = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b01"      # premium-plan, M1/Y1/Y2
P_CORE = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02"       # premium-plan, M1/Y1/Y2
P_BUSINESS = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b03"   # premium-plan, M1/Y1/Y2
P_ELITE = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b04"      # premium-plan, M1/Y1
P_LEGACY_BASIC = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1c01"  # premium-plan, Y1 only
P_LEGACY_VIP = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1c03"    # premium-plan, Y1 only
P_COMBO = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1c04"      # resellable: false
P_DOMAIN = "4d0a9b3e-8c7f-4e21-a5b6-1f2e3d4c5b01"     # requires premium-plan, Y1, 365 days
P_ASCEND_BASIC = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a01"  # ascend, one per site, M1/Y1
P_ASCEND_PRO = "5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a02"
P_MAILBOX = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d01"    # delivery AWAITING_ACTION, M1
P_BOOSTER = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d02"    # limit 3 per reseller, M1
P_SERVICE = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03"    # ONE_TIME
P_LOGO = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d04"       # has_settings: false
P_EMAILFWD = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d05"   # delivery FAILED / DELIVERY_TIMEOUT, Y1

UNKNOWN_GUID = "0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b"

GUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

V2 = "/resellers/v2/packages"
V1 = "/resellers/v1/packages"
QUERY = "/resellers/v1/packages/query"
INST = "/resellers/v1/packages/product-instances"


# ---------------------------------------------------------------------------
# Servers
# ---------------------------------------------------------------------------

class Server:
    """One `wixr sandbox serve` process on a free port."""

    def __init__(self, *extra, db=":memory:", seed="1"):
        self.extra = list(extra)
        self.db = db
        self.seed = seed
        self.dir = tempfile.mkdtemp(prefix="wixr-http-")
        self.proc = None
        self.port = None
        self.log = None

    def start(self):
        port_file = os.path.join(self.dir, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        cmd = [ARGS.wixr, "sandbox", "serve", "--db", self.db, "--listen", "127.0.0.1:0",
               "--port-file", port_file, "--catalog", ARGS.catalog]
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        cmd += self.extra
        self.log = open(os.path.join(self.dir, "server.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        if self not in SERVERS:
            SERVERS.append(self)
        self.port = wait_for_port_file(self.proc, port_file, 10, self.log_text, "server")
        return self

    def log_text(self):
        return read_log(os.path.join(self.dir, "server.log"))

    def stop(self):
        """SIGTERM, wait; returns the exit code (kills after 5 s)."""
        if not self.proc or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        finally:
            if self.log:
                self.log.close()

    def cleanup(self):
        self.stop()
        if self in SERVERS:
            SERVERS.remove(self)
        shutil.rmtree(self.dir, ignore_errors=True)


def read_log(path):
    """The text of a log file (UTF-8, bad bytes replaced); "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def wait_for_port_file(proc, path, timeout, log_text, name="server"):
    """Waits until proc writes its port into the file at path; returns the port.
    Fails (naming `name`, with the tail of log_text()) when proc exits first or
    timeout seconds go by."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise TestFailure("%s exited with %s before listening: %s"
                              % (name, proc.returncode, log_text()[-800:]))
        try:
            with open(path) as f:
                text = f.read().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise TestFailure("%s did not write its port file %s within %g s: %s"
                      % (name, os.path.basename(path), timeout, log_text()[-800:]))


def kill_all_servers():
    for s in list(SERVERS):
        try:
            if s.proc and s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait(timeout=5)
        except Exception:
            pass
        shutil.rmtree(s.dir, ignore_errors=True)
    SERVERS.clear()


atexit.register(kill_all_servers)


# ---------------------------------------------------------------------------
# HTTP client
# ---------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body, elapsed):
        self.status = status
        self.headers = headers          # lower-case name -> value
        self.body = body                # bytes
        self.elapsed = elapsed
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def app_code(self):
        try:
            return self.json["details"]["applicationError"]["code"]
        except (TypeError, KeyError):
            return None

    @property
    def violations(self):
        try:
            return self.json["details"]["validationError"]["fieldViolations"]
        except (TypeError, KeyError):
            return []

    @property
    def fields(self):
        return [v.get("field") for v in self.violations]

    @property
    def package(self):
        return (self.json or {}).get("package")

    def short(self):
        return "%s %s" % (self.status, self.body[:300].decode("utf-8", "replace"))


DEFAULT = object()


def json_body(body, headers):
    """The request bytes for body (bytes, text or a value to send as JSON); sets Content-Type."""
    if body is None:
        return None
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers["Content-Type"] = "application/json"
    return data.encode() if isinstance(data, str) else data


class Client:
    """A persistent http.client connection to one server."""

    def __init__(self, server, account=JANE, auth="test-key"):
        self.server = server
        self.account = account
        self.auth = auth
        self.conn = None
        self.last_use = 0.0

    def close(self):
        if self.conn:
            self.conn.close()
        self.conn = None

    def call(self, method, path, body=None, account=DEFAULT, auth=DEFAULT, headers=None, timeout=15):
        # The server closes idle connections after 10 s: reconnect well before.
        if self.conn is None or time.time() - self.last_use > 5:
            self.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=timeout)
        h = {}
        account = self.account if account is DEFAULT else account
        auth = self.auth if auth is DEFAULT else auth
        if auth is not None:
            h["Authorization"] = auth
        if account is not None:
            h["wix-account-id"] = account
        data = json_body(body, h)
        h.update(headers or {})
        t0 = time.time()
        try:
            self.conn.request(method, path, body=data, headers=h)
            r = self.conn.getresponse()
            payload = r.read()
        except Exception:
            self.close()
            raise
        self.last_use = time.time()
        resp = Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, payload, time.time() - t0)
        if r.will_close:
            self.close()
        return resp

    # Resellers API shorthands
    def create(self, products, v=2, external=None, idem=None, account=DEFAULT, extra=None):
        body = {"products": products}
        if external is not None:
            body["externalId"] = external
        if idem is not None:
            body["idempotencyKey"] = idem
        body.update(extra or {})
        return self.call("POST", V2 if v == 2 else V1, body, account=account)

    def get(self, pkg_id, account=DEFAULT):
        return self.call("GET", "%s/%s" % (V1, pkg_id), account=account)

    def query(self, query, account=DEFAULT):
        return self.call("POST", QUERY, {"query": query}, account=account)

    def cancel_package(self, pkg_id, body=None, account=DEFAULT):
        return self.call("DELETE", "%s/%s" % (V1, pkg_id), body, account=account)

    def set_external(self, pkg_id, ext, account=DEFAULT):
        return self.call("PATCH", "%s/update/%s/%s" % (V1, pkg_id, urllib.parse.quote(ext, safe="")),
                         account=account)

    def assign(self, inst, site, body=None, account=DEFAULT):
        return self.call("PATCH", "%s/%s/%s" % (INST, inst, site), body, account=account)

    def unassign(self, inst, body=None, account=DEFAULT):
        return self.call("PATCH", "%s/%s/unassign" % (INST, inst), body, account=account)

    def adjust(self, inst, body, account=DEFAULT):
        return self.call("PATCH", "%s/%s" % (INST, inst), body, account=account)

    def cancel_instance(self, inst, body=None, account=DEFAULT):
        return self.call("DELETE", "%s/%s" % (INST, inst), body, account=account)

    # admin API (no auth)
    def admin(self, method, what, body=None):
        r = self.call(method, "/__admin/" + what, body, account=None, auth=None)
        return r


# ---------------------------------------------------------------------------
# Assertions
# ---------------------------------------------------------------------------

class TestFailure(AssertionError):
    pass


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def eq(actual, expected, what):
    if actual != expected:
        raise TestFailure("%s: expected %r, got %r" % (what, expected, actual))


def ok(r, what="request"):
    """Asserts a 200 with a JSON body; returns the parsed body."""
    check(r.status == 200, "%s: expected 200, got %s" % (what, r.short()))
    check(isinstance(r.json, dict), "%s: 200 without a JSON object body" % what)
    return r.json


def wix_error(doc, what="error"):
    """Checks that doc is a Wix error body (resellers-api.md 4.0) and returns
    (kind, text): kind is the applicationError code, or "INVALID_ARGUMENT FIELD"
    for a validationError (FIELD of its first violation); text is the description."""
    check(isinstance(doc, dict) and isinstance(doc.get("message"), str) and doc["message"],
          "%s: a Wix error body has a message: %r" % (what, doc))
    details = doc.get("details")
    check(isinstance(details, dict) and len(details) == 1, "%s: one kind of details: %r" % (what, doc))
    if "applicationError" in details:
        app = details["applicationError"]
        check(isinstance(app.get("code"), str) and isinstance(app.get("description"), str)
              and app.get("data") == {}, "%s: applicationError {code, description, data}: %r" % (what, app))
        return app["code"], app["description"]
    violations = (details.get("validationError") or {}).get("fieldViolations")
    check(isinstance(violations, list) and violations, "%s: validationError with fieldViolations: %r" % (what, doc))
    for v in violations:
        eq(sorted(v), ["data", "description", "field", "ruleName", "violatedRule"], "%s: fieldViolation keys" % what)
        eq(v["ruleName"], "VALIDATION_ERROR", "%s: ruleName" % what)
    check(doc["message"].startswith("INVALID_ARGUMENT: " + violations[0]["field"]),
          "%s: the message names the field: %r" % (what, doc["message"]))
    return "INVALID_ARGUMENT " + violations[0]["field"], violations[0]["description"]


def all_packages(server, account=JANE, max_pages=1000):
    """Every package the account sees on the emulator, following cursors."""
    c = Client(server, account=account)
    out, cursor = [], None
    try:
        for _ in range(max_pages):
            q = {"cursorPaging": {"limit": 100}}
            if cursor:
                q["cursorPaging"]["cursor"] = cursor
            body = ok(c.query(q), "query packages")
            out += body["packages"]
            cursor = ((body.get("metadata") or {}).get("cursors") or {}).get("next")
            if not cursor:
                return out
    finally:
        c.close()
    raise TestFailure("query paging did not end within %d pages" % max_pages)


# ---------------------------------------------------------------------------
# The result of one `wixr` command
# ---------------------------------------------------------------------------

class Run:
    """What one `wixr` invocation gave: its args, exit code, stdout, stderr,
    seconds taken and whether it was killed at its timeout. timeout_hint is
    added to the failure when a run timed out (what that means to the suite)."""

    def __init__(self, args, rc, out, err, elapsed, timed_out, timeout_hint=None):
        self.args, self.rc, self.out, self.err = args, rc, out, err
        self.elapsed, self.timed_out = elapsed, timed_out
        self.timeout_hint = timeout_hint

    @property
    def json(self):
        if self.timed_out:
            raise TestFailure("wixr %s did not finish within its time limit (killed after %.1f s)%s; stderr %r"
                              % (" ".join(self.args), self.elapsed,
                                 ": " + self.timeout_hint if self.timeout_hint else "", self.err[-300:]))
        if self.rc is not None and self.rc < 0:
            raise TestFailure("wixr %s died with signal %d; stderr %r" % (" ".join(self.args), -self.rc,
                                                                          self.err[-500:]))
        try:
            return json.loads(self.out)
        except ValueError:
            raise TestFailure("not JSON on stdout: %r (rc %s, stderr %r)" % (self.out[:300], self.rc,
                                                                             self.err[-400:]))

    def lines(self, stream="err"):
        """The lines of stderr (or stdout), without the sandbox notice."""
        text = self.err if stream == "err" else self.out
        return [x for x in text.splitlines() if "using the embedded sandbox emulator" not in x]

    def log_lines(self):
        """The JSON lines (ctx.log) on stderr."""
        out = []
        for x in self.lines():
            if x.startswith("{"):
                try:
                    out.append(json.loads(x))
                except ValueError:
                    raise TestFailure("a log line on stderr is not JSON: %r" % x)
        return out

    def __str__(self):
        return "rc=%s%s stdout=%r stderr=%r" % (self.rc, " (timed out)" if self.timed_out else "",
                                               self.out[-500:], self.err[-700:])


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", ": runtime error:")


def sanitizer_report(text, before=200, after=1500):
    """The first sanitizer report in text (with some context), or None."""
    for mark in SANITIZER_MARKS:
        if mark in text:
            at = text.index(mark)
            return text[max(0, at - before):at + after]
    return None


def no_sanitizer_report(text, what):
    report = sanitizer_report(text)
    if report:
        raise TestFailure("sanitizer report from %s: %s" % (what, report))


def clean_env(extra=None):
    """This environment without what would steer wixr (WIX_*, WIXR_CONFIG, WIXR_TOKEN), plus extra."""
    e = {k: v for k, v in os.environ.items()
         if not k.startswith("WIX_") and k not in ("WIXR_CONFIG", "WIXR_TOKEN")}
    e.update(extra or {})
    return e


WORK_FOLDERS = []


def work_folder(prefix="wixr-"):
    """A temporary folder, removed at exit."""
    d = tempfile.mkdtemp(prefix=prefix)
    WORK_FOLDERS.append(d)
    return d


def remove_work_folders():
    for d in WORK_FOLDERS:
        shutil.rmtree(d, ignore_errors=True)
    WORK_FOLDERS.clear()


atexit.register(remove_work_folders)


class Folder:
    """A temporary folder with a wixr.yaml and other files; runs wixr there, in a
    clean environment, and fails on any sanitizer report."""
    prefix = "wixr-"
    timeout_hint = None

    def __init__(self, config=None, files=None):
        self.dir = work_folder(self.prefix)
        if config is not None:
            self.write("wixr.yaml", config)
        for name, text in (files or {}).items():
            self.write(name, text)

    def write(self, name, text):
        path = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def path(self, name):
        return os.path.join(self.dir, name)

    def run(self, *args, env=None, stdin=None, timeout=20):
        t0 = time.time()
        try:
            p = subprocess.run([ARGS.wixr] + list(args), cwd=self.dir, env=clean_env(env), input=stdin,
                               capture_output=True, text=True, timeout=timeout, errors="replace")
            r = Run(args, p.returncode, p.stdout, p.stderr, time.time() - t0, False, self.timeout_hint)
        except subprocess.TimeoutExpired as te:
            def text(b):
                return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")
            r = Run(args, None, text(te.stdout), text(te.stderr), time.time() - t0, True, self.timeout_hint)
        no_sanitizer_report(r.err, "wixr " + " ".join(args))
        return r


def run_tests(tests, only=None, before_each=None):
    """Runs each test function, printing ok/FAIL; returns the exit status."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    passed = failed = 0
    t0 = time.time()
    try:
        for fn in tests:
            name = fn.__name__
            if only and only not in name:
                continue
            try:
                if before_each:
                    before_each()
                fn()
            except TestFailure as e:
                failed += 1
                print("FAIL %s: %s" % (name, e), flush=True)
            except Exception as e:  # an unexpected exception is a failure too
                failed += 1
                tb = traceback.extract_tb(e.__traceback__)
                where = "%s:%d" % (os.path.basename(tb[-1].filename), tb[-1].lineno) if tb else "?"
                print("FAIL %s: %s: %s (at %s)" % (name, type(e).__name__, e, where), flush=True)
            else:
                passed += 1
                print("ok   %s" % name, flush=True)
    finally:
        for s in list(SERVERS):
            s.cleanup()
        kill_all_servers()
    print("runtime %.1f s" % (time.time() - t0), flush=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    return 1 if failed else 0


def parse_args(doc):
    """--wixr, --catalog and -k, into ARGS; returns the -k filter."""
    import argparse
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--wixr", required=True, help="path to the wixr binary")
    ap.add_argument("--catalog", required=True, help="path to config/catalog.yaml")
    ap.add_argument("-k", dest="only", default=None, help="run only tests whose name contains this")
    args = ap.parse_args()
    ARGS.wixr = os.path.abspath(args.wixr)
    ARGS.catalog = os.path.abspath(args.catalog)
    return args.only

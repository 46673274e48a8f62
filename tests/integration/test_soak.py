#!/usr/bin/env python3
"""Fault soak: `wixr serve` against a faulty `wixr sandbox serve`, killed and restarted.

Usage: test_soak.py --wixr PATH/wixr --catalog PATH/catalog.yaml [--seed N] [--events N]
                    [--rate N] [--kills N]

A client sends --events events (default 5000, or $WIXR_SOAK_EVENTS) to `wixr serve`,
which runs them through the example policies of config/wixr.yaml (lua/policies/) against
an emulator that answers 10 % of the API requests with a 5xx, 5 % with 429 and
Retry-After, drops 2 % of the connections, and adds random latency; half of the 5xx and
of the drops happen after the emulator applied the request (the answer is lost, the
write is not). While the events flow the service is killed with SIGKILL --kills times
(default 5) at random moments, during intake and while the backlog is processed, and
started again on the same journal; the client re-sends every event whose intake it did
not see answered 2xx (the service deduplicates by event id).

The events are a seeded mix of subscriptions: DIY and DIFM orders (one or two plans, on a
site or floating), upgrades, refused downgrades, billing changes, voucher add-ons,
cancellations of a plan or of the whole subscription, and deliveries of these again. All
events of one subscription carry its subscription_id, the service's order key, so they run
in the order they were sent; the test computes the state each subscription must end in.
A few events must end dead with a permanent error (a site of another account, a domain
with no plan on its site, a site that already holds a plan, an unknown account, a billing
cycle the plan does not offer, an upgrade Wix refuses for want of a billing cycle, an
unknown plan).

At the end (nothing pending in the journal, faults off): every event sent is in the
journal once, done, but exactly the expected dead ones; the emulator holds exactly the
expected packages (account, external id, products, statuses, billing, sites, voucher
references): nothing lost, nothing doubled. The seed is printed (a failure is reproduced
with --seed), and one line of figures. Python 3 standard library only.
"""
import argparse
import http.client
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import (ARGS, BOB, JANE, OTHER, P_BUSINESS, P_CORE, P_DOMAIN, P_ELITE, P_LIGHT,  # noqa: E402
                     RESELLER, SITE_BOB, SITE_OTHER, TEAM, UNKNOWN_GUID, Client, Server, TestFailure, all_packages,
                     check, clean_env, eq, json_body, ok, read_log, run_tests, sanitizer_report,
                     wait_for_port_file)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOKEN = "soak-token-5f0c"

PLANS = {"light": P_LIGHT, "core": P_CORE, "business": P_BUSINESS, "elite": P_ELITE, "domain": P_DOMAIN}
PLAN_OF = {v: k for k, v in PLANS.items()}
PREMIUM = ("light", "core", "business", "elite")
# change_plan.lua's TRANSITIONS
UP = {"light": ["core", "business", "elite"], "core": ["business", "elite"], "business": ["elite"], "elite": []}
DOWN = {"light": [], "core": ["light"], "business": ["light", "core"], "elite": ["business"]}
CYCLES = {"monthly": ("MONTH", 1), "yearly": ("YEAR", 1), "2-years": ("YEAR", 2)}
BILLINGS = {"light": ["monthly", "yearly", "2-years"], "core": ["monthly", "yearly", "2-years"],
            "business": ["monthly", "yearly", "2-years"], "elite": ["monthly", "yearly"]}
VOUCHER_PLANS = ("core", "business", "elite")   # voucher_addon.lua: free-domain comes with these, billed per YEAR


class Opts:
    seed = None
    events = 5000
    rate = None
    kills = 5


OPTS = Opts()


# ---------------------------------------------------------------------------
# The service: `wixr serve` in a folder of its own, killed and started again
# ---------------------------------------------------------------------------

class Service:
    def __init__(self, config, env):
        self.dir = tempfile.mkdtemp(prefix="wixr-soak-")
        with open(os.path.join(self.dir, "wixr.yaml"), "w") as f:
            f.write(config)
        self.env = clean_env(dict(env, WIXR_TOKEN=TOKEN))
        self.proc = None
        self.port = None          # None while the service is down
        self.starts = 0
        self.ended = set()        # pids we sent SIGKILL or SIGTERM
        self.log_path = os.path.join(self.dir, "serve.log")
        self.logf = None

    def start(self, timeout=20):
        port_file = os.path.join(self.dir, ".wixr", "serve.port")
        try:
            os.unlink(port_file)
        except OSError:
            pass
        if self.logf:
            self.logf.close()
        self.logf = open(self.log_path, "ab")
        self.starts += 1
        self.logf.write(("--- start %d\n" % self.starts).encode())
        self.logf.flush()
        self.proc = subprocess.Popen([ARGS.wixr, "serve"], cwd=self.dir, env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        self.port = wait_for_port_file(self.proc, port_file, timeout, self.log_text, "wixr serve")

    def kill(self):
        self.port = None
        if self.proc and self.proc.poll() is None:
            self.ended.add(self.proc.pid)
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self):
        """SIGTERM and wait: the exit status (None when it had to be killed)."""
        rc = None
        if self.proc and self.proc.poll() is None:
            self.ended.add(self.proc.pid)
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.logf:
            self.logf.close()
            self.logf = None
        return rc

    def crashed(self):
        """The process ended on its own (not by our SIGKILL or SIGTERM)."""
        return self.proc is not None and self.proc.poll() is not None and self.proc.pid not in self.ended

    def log_text(self):
        return read_log(self.log_path)

    def problems(self):
        text = self.log_text()
        out = []
        report = sanitizer_report(text, 200, 2000)
        if report:
            out.append("sanitizer report: %s" % report)
        if self.crashed():
            out.append("wixr serve (start %d) exited with %s on its own; log tail: %s"
                       % (self.starts, self.proc.returncode, text[-1500:]))
        return out

    def call(self, method, path, body=None, timeout=10):
        port = self.port
        if port is None:
            raise ConnectionRefusedError("the service is down")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            h = {"Authorization": "Bearer " + TOKEN}
            data = json_body(body, h)
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def health(self):
        st, body = self.call("GET", "/healthz")
        eq(st, 200, "GET /healthz")
        return json.loads(body)

    def metrics(self):
        st, body = self.call("GET", "/metrics")
        eq(st, 200, "GET /metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def events_json(self):
        p = subprocess.run([ARGS.wixr, "events", "list", "--json", "--limit", "0"], cwd=self.dir, env=self.env,
                           capture_output=True, text=True, timeout=120, errors="replace")
        eq(p.returncode, 0, "wixr events list exit status (stderr %r)" % p.stderr[-300:])
        return [json.loads(x) for x in p.stdout.splitlines() if x.strip()]

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def soak_config():
    """The defaults and hooks of config/wixr.yaml (the example policies, their options and allow
    lists) with a `serve:` section and a wix section that points at the emulator."""
    with open(os.path.join(ROOT, "config", "wixr.yaml")) as f:
        text = f.read()
    at = text.find("\ndefaults:\n")
    if at < 0:
        at = text.find("\nhooks:\n")
    check(at >= 0 and "\nhooks:\n" in text[at:], "config/wixr.yaml has no defaults: or hooks: section")
    hooks = text[at + 1:].replace("../lua/policies/", os.path.join(ROOT, "lua", "policies") + "/")
    return ("wix:\n"
            "  transport: http\n"
            "  rate_limit: {requests: 0}\n"          # the emulator's limit is off; the faults throttle
            "  concurrency: 32\n"
            "  timeout_ms: 15000\n"
            "  retry: {attempts: 5, base_ms: 100, max_ms: 2000, total_ms: 20000}\n"
            "serve:\n"
            "  listen: 127.0.0.1:0\n"
            "  concurrency: 64\n"
            "  order_key: [subscription_id]\n"
            # runs cut short by a kill count as attempts: with 8, five kills alone never make an event dead
            "  retry: {attempts: 8, base_ms: 250, max_ms: 2000}\n"
            + hooks)


# ---------------------------------------------------------------------------
# The events and the state they must leave
# ---------------------------------------------------------------------------

class Sub:
    """One subscription (an order and what follows it) and the state it must end in."""

    def __init__(self, sid, model, account, items, country):
        self.id = sid
        self.model = model
        self.account = account
        # items of the order package, in order: plan, billing, site (None: floating), live
        self.items = [dict(it, live=True) for it in items]
        self.country = country
        self.vouchers = []        # add-on packages: {"ref": item index, "site": ..., "live": bool}
        self.events = []          # (name, id, data)
        self.dead = {}            # event id -> the text its last_error must hold
        self.created = True       # False: the order itself is expected dead

    def live_premium(self):
        return [i for i, it in enumerate(self.items) if it["live"] and it["plan"] in PREMIUM]


class Generator:
    def __init__(self, rnd, emu_client):
        self.rnd = rnd
        self.c = emu_client
        self.subs = []
        self.n_events = 0
        self.customers = []
        self.pre_taken = []       # packages made before the service starts: (account, site, external id)

    # setup on the emulator (through its admin API and one direct create)
    def new_site(self, account):
        r = self.c.admin("POST", "sites", {"accountId": account})
        return ok(r, "admin: add a site")["site"]["id"]

    def setup_accounts(self, n):
        self.customers = [JANE, BOB]
        for i in range(n):
            r = self.c.admin("POST", "accounts", {"parentAccountId": RESELLER, "type": "SUB_ACCOUNT",
                                                   "name": "soak customer %d" % i})
            self.customers.append(ok(r, "admin: add an account")["account"]["id"])

    def taken_site(self, k):
        """A site that already holds a Premium plan (created before the service starts)."""
        site = self.new_site(JANE)
        ext = "pre-taken-%d" % k
        r = self.c.create([{"catalogProductId": P_CORE, "siteId": site, "countryCode": "DE",
                            "billingInfo": {"type": "RECURRING", "cycleDuration": {"unit": "YEAR", "count": 1}}}],
                          external=ext, account=JANE)
        ok(r, "create the package that takes a site")
        self.pre_taken.append((JANE, site, ext))
        return site

    # one event
    def add(self, sub, name, eid, data, dead=None):
        data = dict(data, subscription_id=sub.id)
        sub.events.append((name, eid, data))
        if dead:
            sub.dead[eid] = dead
        self.n_events += 1

    def order_event(self, sub):
        data = {"order_id": sub.id, "model": sub.model,
                "items": [{k: v for k, v in (("plan", it["plan"]), ("billing", it["billing"]),
                                             ("site_id", it["site"])) if v is not None} for it in sub.items]}
        if sub.model == "DIY":
            data["account_id"] = sub.account
        if sub.country:
            data["country_code"] = sub.country
        return data

    def new_sub(self):
        rnd = self.rnd
        n = len(self.subs) + 1
        model = "DIY" if rnd.random() < 0.65 else "DIFM"
        account = rnd.choice(self.customers) if model == "DIY" else TEAM
        plan = rnd.choice(PREMIUM)
        site = self.new_site(account) if rnd.random() < 0.75 else None
        items = [{"plan": plan, "billing": rnd.choice(BILLINGS[plan]), "site": site}]
        if rnd.random() < 0.15:
            other = rnd.choice([p for p in PREMIUM if p != plan])
            items.append({"plan": other, "billing": rnd.choice(BILLINGS[other]), "site": None})
        sub = Sub("sub-%05d" % n, model, account, items, rnd.choice([None, None, "FR", "NL"]))
        self.subs.append(sub)
        self.add(sub, "order.created", "ord-%05d" % n, self.order_event(sub))
        return sub

    def follow_up(self, sub, k):
        """One more event of sub, chosen from what its state allows; applies it to the model."""
        rnd = self.rnd
        eid = "%s-e%d" % (sub.id, k)
        roll = rnd.random()
        live = sub.live_premium()
        if roll < 0.45 and live:
            i = rnd.choice(live)
            it = sub.items[i]
            others = {sub.items[j]["plan"] for j in live if j != i}
            data = {}
            if len(live) > 1 or rnd.random() < 0.3:
                data["from_plan"] = it["plan"]
            what = rnd.random()
            if what < 0.55 and [p for p in UP[it["plan"]] if p not in others]:
                to = rnd.choice([p for p in UP[it["plan"]] if p not in others])
                data["to_plan"] = to
                if it["billing"] not in BILLINGS[to]:
                    data["billing"] = rnd.choice(BILLINGS[to])   # elite is not sold for 2 years
                it["plan"] = to
                it["billing"] = data.get("billing", it["billing"])
            elif what < 0.75 and DOWN[it["plan"]]:
                data["to_plan"] = rnd.choice(DOWN[it["plan"]])   # refused: allow_downgrade is off
            else:
                data["billing"] = rnd.choice(BILLINGS[it["plan"]])  # may be the one it has: nothing to do
                it["billing"] = data["billing"]
            self.add(sub, "subscription.changed", eid, data)
        elif roll < 0.65:
            self.add(sub, "order.voucher", eid, {"voucher": "free-domain"})
            # voucher_addon.lua: the first live plan that earns the voucher (instances in the
            # order of the order's items); a plan serves once. Else refused: nothing changes.
            qualifying = [i for i in live if sub.items[i]["plan"] in VOUCHER_PLANS
                          and CYCLES[sub.items[i]["billing"]][0] == "YEAR"]
            if qualifying and qualifying[0] not in [v["ref"] for v in sub.vouchers]:
                ref = qualifying[0]
                sub.vouchers.append({"ref": ref, "site": sub.items[ref]["site"], "live": True})
        elif roll < 0.9 or not live:
            if live and rnd.random() < 0.4:
                i = rnd.choice(live)
                self.add(sub, "subscription.canceled", eid, {"plan": sub.items[i]["plan"]})
                sub.items[i]["live"] = False
                for v in sub.vouchers:
                    if v["ref"] == i:
                        v["live"] = False                # cancel_addons: the add-on goes with its plan
            else:
                self.add(sub, "subscription.canceled", eid, {})
                for it in sub.items + sub.vouchers:
                    it["live"] = False
        else:
            # the same order delivered again under another event id: provisions nothing
            self.add(sub, "order.created", eid, dict(sub.events[0][2], subscription_id=sub.id))

    def dead_subs(self, per_kind):
        """Subscriptions with an event that must end dead, and the error it must hold."""
        rnd = self.rnd
        made = []

        def sub_of(model, account, items):
            sub = Sub("sub-%05d" % (len(self.subs) + 1), model, account, items, None)
            self.subs.append(sub)
            made.append(sub)
            return sub

        for k in range(per_kind):
            cases = [
                # a DIY order on a site of another account
                ("SITE_NOT_FOUND", "DIY", JANE, {"plan": "core", "billing": "yearly", "site": SITE_BOB}),
                ("SITE_NOT_FOUND", "DIY", BOB, {"plan": "light", "billing": "monthly", "site": SITE_OTHER}),
                # a domain needs a Premium plan on its site
                ("PRODUCT_NOT_SUPPORTED_ON_SITE", "DIFM", TEAM,
                 {"plan": "domain", "billing": "yearly", "site": self.new_site(TEAM)}),
                # one Premium plan per site
                ("PRODUCT_TYPE_ALREADY_ASSIGNED", "DIY", JANE,
                 {"plan": "business", "billing": "yearly", "site": self.taken_site(k)}),
                # no such account
                ("ACCOUNT_NOT_FOUND", "DIY", UNKNOWN_GUID, {"plan": "core", "billing": "yearly", "site": None}),
                # Business Elite is not sold for two years
                ("INCOMPATIBLE_BILLING_CYCLE", "DIFM", TEAM, {"plan": "elite", "billing": "2-years", "site": None}),
                # bad input: the policy refuses a plan it does not know
                ('"platinum" is not a plan', "DIY", BOB, {"plan": "platinum", "billing": "yearly", "site": None}),
            ]
            for code, model, account, item in cases:
                sub = sub_of(model, account, [item])
                sub.created = False
                eid = "ord-%s-dead" % sub.id[4:]
                self.add(sub, "order.created", eid, self.order_event(sub), dead=code)
            # an upgrade Wix refuses: a 2-year plan moved to Elite with no billing cycle
            plan = rnd.choice(["core", "business"])
            sub = sub_of("DIY", rnd.choice(self.customers), [{"plan": plan, "billing": "2-years", "site": None}])
            self.add(sub, "order.created", "ord-%s" % sub.id[4:], self.order_event(sub))
            self.add(sub, "subscription.changed", "%s-up-dead" % sub.id, {"to_plan": "elite"},
                     dead="MISSING_BILLING_CYCLE")
            # the key is free again once the event is dead: the next event of the subscription runs
            self.add(sub, "subscription.canceled", "%s-cxl" % sub.id, {})
            sub.items[0]["live"] = False
        return made

    def generate(self, total):
        per_kind = max(1, int(round(total / 2500.0)))
        self.dead_subs(per_kind)
        while self.n_events < total:
            sub = self.new_sub()
            k = self.rnd.choices([0, 1, 2, 3, 4], weights=[30, 28, 22, 13, 7])[0]
            for j in range(k):
                if self.n_events >= total:
                    break
                self.follow_up(sub, j + 1)
        return self.subs


def interleave(rnd, subs, nthreads):
    """Each sender's queue: the events of its subscriptions, each subscription's in order,
    subscriptions mixed at random."""
    queues = [[] for _ in range(nthreads)]
    owned = [[] for _ in range(nthreads)]
    for i, sub in enumerate(subs):
        owned[i % nthreads].append(list(sub.events))
    for t in range(nthreads):
        lists = [l for l in owned[t] if l]
        while lists:
            i = rnd.randrange(len(lists))
            queues[t].append(lists[i].pop(0))
            if not lists[i]:
                lists.pop(i)
    return queues


# ---------------------------------------------------------------------------
# The client: senders, and a watcher of the emulator's request log
# ---------------------------------------------------------------------------

class Intake:
    """Sends queues of events on several threads at a paced rate; an event counts as sent
    once the intake answered 2xx; connection errors (the service was killed) mean: send it
    again, once the service is back."""

    def __init__(self, svc, queues, rate):
        self.svc = svc
        self.queues = queues
        self.interval = 1.0 / rate if rate else 0.0
        self.lock = threading.Lock()
        self.next_at = time.time()
        self.sent = {}            # event id -> status of the answer that counted (202 or 200)
        self.resends = 0          # sends after a connection error or a non-2xx answer
        self.conn_errors = 0
        self.dup_answers = 0      # 200 {"duplicate": true}: the first send had reached the journal
        self.errors = []
        self.stop = threading.Event()
        self.threads = []

    def pace(self):
        if not self.interval:
            return
        with self.lock:
            at = max(self.next_at, time.time())
            self.next_at = at + self.interval
        delay = at - time.time()
        if delay > 0:
            time.sleep(delay)

    def send_one(self, conn_box, name, eid, data):
        body = json.dumps(data).encode()
        deadline = time.time() + 60
        tries = 0
        while not self.stop.is_set():
            if time.time() > deadline:
                self.errors.append("%s: no 2xx from the intake within 60 s" % eid)
                return False
            port = self.svc.port
            if port is None:
                time.sleep(0.02)
                continue
            tries += 1
            try:
                if conn_box[0] is None or conn_box[1] != port:
                    if conn_box[0] is not None:
                        conn_box[0].close()
                    conn_box[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
                    conn_box[1] = port
                conn_box[0].request("POST", "/v1/events/" + name, body=body,
                                    headers={"Authorization": "Bearer " + TOKEN, "X-Event-Id": eid,
                                             "Content-Type": "application/json"})
                r = conn_box[0].getresponse()
                payload = r.read()
                if r.will_close:
                    conn_box[0].close()
                    conn_box[0] = None
            except (OSError, http.client.HTTPException):
                if conn_box[0] is not None:
                    conn_box[0].close()
                conn_box[0] = None
                with self.lock:
                    self.conn_errors += 1
                    self.resends += 1
                time.sleep(0.02)
                continue
            if r.status in (200, 202):
                ans = json.loads(payload)
                if r.status == 200:
                    if not ans.get("duplicate") or (ans.get("event") or {}).get("id") != eid:
                        self.errors.append("%s: 200 that is not a duplicate of it: %r" % (eid, payload[:200]))
                        return False
                    with self.lock:
                        self.dup_answers += 1
                elif ans.get("id") != eid or ans.get("state") != "accepted":
                    self.errors.append("%s: 202 with %r" % (eid, payload[:200]))
                    return False
                with self.lock:
                    self.sent[eid] = r.status
                return True
            if r.status == 503 or r.status >= 500:
                with self.lock:
                    self.resends += 1
                time.sleep(0.05)
                continue
            self.errors.append("%s: intake answered %s %r" % (eid, r.status, payload[:300]))
            return False
        return False

    def sender(self, queue):
        conn_box = [None, None]
        try:
            for name, eid, data in queue:
                self.pace()
                if not self.send_one(conn_box, name, eid, data):
                    return
        except Exception as e:   # reported by the test, not lost in a thread
            self.errors.append("sender: %s: %s" % (type(e).__name__, e))
        finally:
            if conn_box[0] is not None:
                conn_box[0].close()

    def start(self):
        for q in self.queues:
            th = threading.Thread(target=self.sender, args=(q,), daemon=True)
            th.start()
            self.threads.append(th)

    def running(self):
        return any(t.is_alive() for t in self.threads)

    def join(self, timeout):
        deadline = time.time() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.time()))
        return not self.running()


class RequestLog:
    """Follows the emulator's request log (a ring of 4096) so that every API request is counted."""

    def __init__(self, emu):
        self.c = Client(emu)
        self.last = 0
        self.count = 0
        self.by_fault = {}
        self.gaps = 0
        self.stop = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.error = None

    def poll(self):
        while True:
            r = self.c.admin("GET", "requests?since=%d&limit=1000" % self.last)
            body = ok(r, "admin: requests")
            reqs = body.get("requests") or []
            if reqs and reqs[0]["seq"] != self.last + 1:
                self.gaps += reqs[0]["seq"] - self.last - 1
            for q in reqs:
                self.count += 1
                f = q.get("fault") or ""
                if f:
                    self.by_fault[f] = self.by_fault.get(f, 0) + 1
                self.last = q["seq"]
            if len(reqs) < 1000:
                return

    def run(self):
        while not self.stop.wait(0.25):
            try:
                self.poll()
            except Exception as e:
                self.error = "%s: %s" % (type(e).__name__, e)
                return

    def start(self):
        self.th.start()

    def finish(self):
        self.stop.set()
        self.th.join(10)
        self.poll()


# ---------------------------------------------------------------------------
# The end state
# ---------------------------------------------------------------------------

def cycle_of(inst):
    b = inst.get("billingInfo") or {}
    d = b.get("cycleDuration") or {}
    return (d.get("unit"), d.get("count"))


def compare_state(subs, pre_taken, packages):
    """The differences between the packages the emulator holds and the expected ones;
    returns (problems, lost, doubled)."""
    by_ext = {}
    for p in packages:
        by_ext.setdefault(p.get("externalId"), []).append(p)
    problems, lost, doubled = [], [], []
    expected_ext = set()
    for account, site, ext in pre_taken:
        expected_ext.add(ext)
        got = by_ext.get(ext, [])
        if len(got) != 1 or got[0]["accountId"] != account:
            problems.append("%s: the package made before the start: %r" % (ext, got))
    for sub in subs:
        got = by_ext.get(sub.id, [])
        if not sub.created:
            if got:
                problems.append("%s: its order must be refused, yet it holds %d package(s)" % (sub.id, len(got)))
            continue
        expected_ext.add(sub.id)
        orders = [p for p in got if not any(i.get("referenceProductInstanceId") for i in p["productInstances"])]
        vouchers = [p for p in got if any(i.get("referenceProductInstanceId") for i in p["productInstances"])]
        if len(orders) > 1:
            doubled.append("%s: %d order packages" % (sub.id, len(orders)))
        if len(vouchers) > len(sub.vouchers):
            doubled.append("%s: %d voucher packages, expected %d" % (sub.id, len(vouchers), len(sub.vouchers)))
        if not orders:
            lost.append("%s: no order package" % sub.id)
            continue
        if len(vouchers) < len(sub.vouchers):
            lost.append("%s: %d voucher packages, expected %d" % (sub.id, len(vouchers), len(sub.vouchers)))
        pkg = orders[0]
        where = "%s (package %s)" % (sub.id, pkg["id"])
        if pkg["accountId"] != sub.account:
            problems.append("%s: account %s, expected %s" % (where, pkg["accountId"], sub.account))
        insts = pkg["productInstances"]
        if len(insts) != len(sub.items):
            problems.append("%s: %d instances, expected %d" % (where, len(insts), len(sub.items)))
            continue
        for it, inst in zip(sub.items, insts):
            exp = (PLANS[it["plan"]], "ENABLED" if it["live"] else "CANCELED", CYCLES[it["billing"]])
            act = (inst.get("catalogProductId"), inst.get("status"), cycle_of(inst))
            if exp != act:
                problems.append("%s: instance %s is (%s, %s, %s), expected (%s, %s, %s)"
                                % (where, inst.get("instanceId"), PLAN_OF.get(act[0], act[0]), act[1], act[2],
                                   it["plan"], exp[1], exp[2]))
            if it["live"] and inst.get("siteId") != it["site"]:
                problems.append("%s: instance %s on site %s, expected %s"
                                % (where, inst.get("instanceId"), inst.get("siteId"), it["site"]))
        by_ref = {}
        for v in vouchers:
            by_ref.setdefault(v["productInstances"][0].get("referenceProductInstanceId"), []).append(v)
        for want in sub.vouchers:
            ref = insts[want["ref"]]["instanceId"]
            got_v = by_ref.get(ref, [])
            if len(got_v) != 1:
                problems.append("%s: %d voucher packages refer to instance %s, expected 1" % (sub.id, len(got_v), ref))
                continue
            v = got_v[0]
            vi = v["productInstances"]
            exp = (sub.account, 1, P_DOMAIN, "ENABLED" if want["live"] else "CANCELED", ("YEAR", 1))
            act = (v["accountId"], len(vi), vi[0].get("catalogProductId"), vi[0].get("status"), cycle_of(vi[0]))
            if exp != act:
                problems.append("%s: voucher package %s is %r, expected %r" % (sub.id, v["id"], act, exp))
            if want["live"] and vi[0].get("siteId") != want["site"]:
                problems.append("%s: voucher domain on site %s, expected %s"
                                % (sub.id, vi[0].get("siteId"), want["site"]))
    extra = sorted(set(by_ext) - expected_ext)
    if extra:
        problems.append("packages nobody ordered, external ids %s" % extra[:10])
    return problems, lost, doubled


# ---------------------------------------------------------------------------
# The soak
# ---------------------------------------------------------------------------

def soak():
    seed = OPTS.seed if OPTS.seed is not None else random.SystemRandom().randrange(1, 10 ** 9)
    total = OPTS.events
    print("soak: seed %d, %d events, %d kills (reproduce with --seed %d --events %d)"
          % (seed, total, OPTS.kills, seed, total), flush=True)
    rnd = random.Random(seed)
    t_start = time.time()
    emu = Server(seed=str(seed % 2 ** 31)).start()
    svc = None
    intake = None
    log = None
    try:
        ec = Client(emu, account=RESELLER)
        gen = Generator(rnd, ec)
        gen.setup_accounts(40)
        subs = gen.generate(total)
        eq(gen.n_events, total, "events generated")
        expected_dead = {eid: code for s in subs for eid, code in s.dead.items()}
        all_ids = [eid for s in subs for _, eid, _ in s.events]
        eq(len(set(all_ids)), total, "distinct event ids")

        # Faults, checked in order for each API request (the first that fires answers it):
        # an "after" rule (the request is applied, its answer is lost: 5 % a 503, 1 % a dropped
        # connection), then one before the request is applied: 5.3 % 5xx, 5.3 % 429 with
        # Retry-After: 1, 1.1 % dropped. Overall: 10 % 5xx, 5 % 429, 2 % drops, plus 2-40 ms latency.
        ok(ec.admin("DELETE", "faults"), "clear faults")
        ok(ec.admin("POST", "faults", {"pathPrefix": "/resellers/", "latencyMs": 2, "jitterMs": 38,
                                       "errorRate": 0.05, "errorStatus": 503, "dropRate": 0.01, "after": True}),
           "after-apply fault rule")
        ok(ec.admin("POST", "faults", {"pathPrefix": "/resellers/", "errorRate": 0.053, "errorStatus": 500,
                                       "throttleRate": 0.053, "retryAfter": 1, "dropRate": 0.011}),
           "fault rule")

        svc = Service(soak_config(), {"WIX_BASE_URL": "http://127.0.0.1:%d" % emu.port, "WIX_API_KEY": "soak-key",
                                      "WIX_ACCOUNT_ID": RESELLER})
        svc.start()
        log = RequestLog(emu)
        log.start()

        rate = OPTS.rate or 200.0
        nthreads = 8
        intake = Intake(svc, interleave(rnd, subs, nthreads), rate)
        intake_s = total / rate
        # the kill moments: about half while the client sends, the rest while the backlog runs
        n_during = (OPTS.kills + 1) // 2
        at = sorted(rnd.uniform(0.05, 0.9) * intake_s for _ in range(n_during))
        for i in range(1, len(at)):      # at least 1.5 s apart: runs started again get time to end
            at[i] = max(at[i], at[i - 1] + 1.5)
        t0 = time.time()
        intake.start()
        kills = []
        monitor = []

        def kill_and_restart():
            phase = "intake" if intake.running() else "processing"
            check(not svc.crashed(), "wixr serve died on its own: %s" % "; ".join(svc.problems()))
            try:
                depth = svc.health()["journal"]["depth"]
            except Exception:
                depth = None
            try:
                m = svc.metrics()
                monitor.append(m)
            except Exception:
                pass
            svc.kill()
            kills.append((round(time.time() - t0, 2), phase, len(intake.sent), depth))
            time.sleep(rnd.uniform(0, 0.3))
            svc.start()

        for when in at:
            while time.time() - t0 < when and intake.running():
                time.sleep(0.01)
            kill_and_restart()
        check(intake.join(total / rate * 3 + 120), "the client did not finish sending")
        t_sent = time.time() - t0
        for _ in range(OPTS.kills - len(kills)):
            time.sleep(rnd.uniform(1.5, 3.0))
            kill_and_restart()

        # wait for the backlog: fail when it stops shrinking for a minute (a stall)
        h = None
        best, best_at, shown = None, time.time(), time.time()
        while True:
            check(not svc.crashed(), "wixr serve died on its own: %s" % "; ".join(svc.problems()))
            h = svc.health()
            depth = h["journal"]["depth"]
            if depth == 0 and h["in_flight"] == 0:
                break
            if best is None or depth < best:
                best, best_at = depth, time.time()
            if time.time() - best_at > 60:
                break
            if time.time() - shown > 10:
                shown = time.time()
                print("soak: %.0f s: journal %s" % (time.time() - t0, h["journal"]), flush=True)
            time.sleep(0.2)
        t_done = time.time() - t0
        check(not intake.errors, "the client's sends failed (seed %d): %s" % (seed, intake.errors[:5]))
        eq(len(intake.sent), total, "events sent and answered 2xx")
        if h["journal"]["depth"] != 0:
            left = [e for e in svc.events_json() if e["state"] not in ("done", "dead")]
            raise TestFailure("the journal still holds %d unfinished events, none finished in the last minute, "
                              "%.0f s after the last send (seed %d): %s"
                              % (len(left), t_done - t_sent, seed,
                                 ["%s %s attempts %s %s" % (e["id"], e["state"], e["attempts"], e["last_error"])
                                  for e in left[:8]]))
        final_metrics = svc.metrics()
        log.finish()
        ok(ec.admin("DELETE", "faults"), "faults off")

        # the journal: every event once, each done but the expected dead ones
        evs = svc.events_json()
        ids = [e["id"] for e in evs]
        lost = sorted(set(all_ids) - set(ids))
        check(not lost, "events sent (2xx) but not in the journal (seed %d): %s" % (seed, lost[:10]))
        eq(len(ids), len(set(ids)), "journal rows per event id")
        eq(sorted(ids), sorted(all_ids), "the journal holds exactly the events sent")
        dead = {e["id"]: e for e in evs if e["state"] == "dead"}
        not_done = ["%s: %s (%s)" % (e["id"], e["state"], e["last_error"]) for e in evs
                    if e["state"] != "done" and e["id"] not in expected_dead]
        check(not not_done, "events that should be done (seed %d): %s" % (seed, not_done[:8]))
        eq(sorted(dead), sorted(expected_dead), "the dead events (seed %d)" % seed)
        wrong = ["%s: expected %r in %r" % (i, code, dead[i]["last_error"]) for i, code in expected_dead.items()
                 if code not in (dead[i]["last_error"] or "")]
        check(not wrong, "dead events with another error than expected (seed %d): %s" % (seed, wrong[:5]))

        # the emulator: exactly the expected packages
        pkgs = all_packages(emu, RESELLER)
        problems, missing, doubled = compare_state(subs, gen.pre_taken, pkgs)
        check(not doubled, "provisioned twice (seed %d): %s" % (seed, doubled[:10]))
        check(not missing, "provisioning lost (seed %d): %s" % (seed, missing[:10]))
        check(not problems, "%d differences from the expected state (seed %d): %s"
              % (len(problems), seed, problems[:10]))
        other = ok(Client(emu, account=OTHER).query({"cursorPaging": {"limit": 10}}), "query as the other reseller")
        eq(other["packages"], [], "packages of the other reseller")
        stats = ok(ec.admin("GET", "stats"), "admin stats")
        eq(stats.get("packages"), len(pkgs), "emulator stats: packages")

        check(len(kills) == OPTS.kills, "kills: %r" % kills)
        runs = sum(e["attempts"] for e in evs)
        most = max(e["attempts"] for e in evs if e["id"] not in expected_dead)
        reruns = runs - len(evs)
        recovered = sum(json.loads(l).get("fields", {}).get("events", 0) for l in svc.log_text().splitlines()
                        if "events interrupted by the last stop" in l)
        api_retries = sum(m.get("wixr_api_retries_total", 0) for m in monitor) \
            + final_metrics.get("wixr_api_retries_total", 0)
        f = log.by_fault
        live = sum(1 for s in subs for it in s.items + s.vouchers if it["live"] and s.created)
        print("soak: kills (s, phase, events sent, journal depth): %s" % kills, flush=True)
        print("soak: api requests %d: 5xx %d (after apply %d), 429 %d, dropped %d (after apply %d)%s"
              % (log.count, f.get("error", 0) + f.get("error-after", 0), f.get("error-after", 0), f.get("throttle", 0),
                 f.get("drop", 0) + f.get("drop-after", 0), f.get("drop-after", 0),
                 "; request log gaps %d" % log.gaps if log.gaps else ""), flush=True)
        # both stop cleanly (and, under the sanitizers, without a leak report)
        eq(svc.stop(), 0, "exit status of wixr serve after SIGTERM")
        check(not svc.problems(), "; ".join(svc.problems()))
        eq(emu.stop(), 0, "exit status of wixr sandbox serve after SIGTERM")
        check(not sanitizer_report(emu.log_text()), "emulator log: %s" % emu.log_text()[-2000:])
        figures = [("seed", seed), ("events", total), ("subscriptions", len(subs)), ("packages", len(pkgs)),
                   ("live_instances", live), ("sent_again", intake.resends), ("intake_duplicates", intake.dup_answers),
                   ("runs", runs), ("retried_runs", reruns), ("interrupted_runs", recovered), ("most_runs", most),
                   ("api_retries>=", int(api_retries)), ("restarts", len(kills)),
                   ("dead", "%d/%d" % (len(dead), len(expected_dead))), ("lost", len(lost) + len(missing)),
                   ("duplicates", len(doubled)), ("intake", "%.1fs" % t_sent),
                   ("total", "%.1fs" % (time.time() - t_start))]
        print("soak: " + " ".join("%s%s%s" % (k, "" if k.endswith("=") else "=", v) for k, v in figures), flush=True)
        if log.error:
            print("soak: note: the request log watcher stopped: %s" % log.error, flush=True)
    except BaseException:
        if svc is not None:
            extra = svc.problems()
            if extra:
                print("soak: service problems: %s" % "; ".join(extra), flush=True)
        raise
    finally:
        if intake:
            intake.stop.set()
        if log:
            log.stop.set()
        if svc is not None:
            svc.cleanup()
        emu.cleanup()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wixr", required=True, help="path to the wixr binary")
    ap.add_argument("--catalog", required=True, help="path to config/catalog.yaml")
    ap.add_argument("--seed", type=int, default=int(os.environ.get("WIXR_SOAK_SEED", "0")) or None,
                    help="seed of the events, the kill moments and the emulator's dice (default: random)")
    ap.add_argument("--events", type=int, default=int(os.environ.get("WIXR_SOAK_EVENTS", "5000")),
                    help="events to send (default 5000, or $WIXR_SOAK_EVENTS)")
    ap.add_argument("--rate", type=float, default=None, help="events per second the client sends")
    ap.add_argument("--kills", type=int, default=5, help="times the service is killed and restarted")
    a = ap.parse_args()
    ARGS.wixr = os.path.abspath(a.wixr)
    ARGS.catalog = os.path.abspath(a.catalog)
    OPTS.seed, OPTS.events, OPTS.rate, OPTS.kills = a.seed, a.events, a.rate, a.kills
    check(OPTS.events >= 100, "--events: at least 100")
    return run_tests([soak])


if __name__ == "__main__":
    sys.exit(main())

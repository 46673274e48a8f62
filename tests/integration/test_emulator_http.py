#!/usr/bin/env python3
"""HTTP integration tests for the Resellers API emulator (`wixr sandbox serve`).

Usage: test_emulator_http.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Starts its own servers (in-memory state; a temporary file for the persistence
test), isolates tests with POST /__admin/reset and checks the emulator against
the API contract (resellers-api.md sections 2, 3, 4 and 6) and the README.
Python 3 standard library only. The last line printed is "N passed, N failed";
the exit status is non-zero when any test failed.
"""
import argparse
import atexit
import base64
import calendar
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import *  # noqa: F401,F403  (seed data, Server, Client, assertions, runner)
from testlib import ARGS, SERVERS

MAIN = None  # the shared in-memory server


def recurring(unit="YEAR", count=1):
    return {"type": "RECURRING", "cycleDuration": {"unit": unit, "count": count}}


ONE_TIME = {"type": "ONE_TIME"}


def prod(pid, site=None, billing=None, cc="DE", **kw):
    p = {"catalogProductId": pid}
    if site is not None:
        p["siteId"] = site
    if billing is not None:
        p["billingInfo"] = billing
    if cc is not None:
        p["countryCode"] = cc
    p.update(kw)
    return p


def plan(site=None, pid=P_CORE, unit="YEAR", count=1, **kw):
    return prod(pid, site, recurring(unit, count), **kw)


def domain(site=None, **kw):
    return prod(P_DOMAIN, site, **kw)


def parse_date(s):
    check(isinstance(s, str) and DATE_RE.match(s), "not an ISO date with ms and Z: %r" % (s,))
    return calendar.timegm(time.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")) + int(s[20:23]) / 1000.0


def app_error(r, status, code, what="request"):
    check(r.status == status and r.app_code == code,
          "%s: expected %s %s, got %s" % (what, status, code, r.short()))
    j = r.json
    check(isinstance(j.get("message"), str) and j["message"], "%s: error without message" % what)
    ae = j["details"]["applicationError"]
    check(isinstance(ae.get("description"), str) and isinstance(ae.get("data"), dict),
          "%s: applicationError lacks description/data: %r" % (what, ae))


def violation(r, field, what="request"):
    check(r.status == 400, "%s: expected 400 naming %s, got %s" % (what, field, r.short()))
    check(field in r.fields, "%s: expected a fieldViolation on %r, got fields %r" % (what, field, r.fields))
    check(isinstance(r.json.get("message"), str), "%s: 400 without message" % what)
    for v in r.violations:
        for k in ("field", "description", "violatedRule", "ruleName", "data"):
            check(k in v, "%s: fieldViolation lacks %r: %r" % (what, k, v))
        eq(v["ruleName"], "VALIDATION_ERROR", "%s: ruleName" % what)


def instance(pkg, idx=0):
    return pkg["productInstances"][idx]


def find_inst(pkg, inst_id):
    for i in pkg["productInstances"]:
        if i["instanceId"] == inst_id:
            return i
    raise TestFailure("instance %s not in package %s" % (inst_id, pkg.get("id")))


# ---------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def client(account=JANE, server=None):
    return Client(server or MAIN, account)


def reset(server=None):
    c = Client(server or MAIN)
    ok(c.admin("POST", "reset"), "admin reset")
    ok(c.admin("POST", "settings", {"rateLimit": False, "requestsPerMinute": 200, "deliveryDelayMs": 0}),
       "admin settings")
    ok(c.admin("DELETE", "faults"), "admin delete faults")
    c.close()


def created(r, what="create"):
    """Asserts a successful create; returns the package."""
    return ok(r, what)["package"]


# ===========================================================================
# Group 1: happy paths
# ===========================================================================

@test
def g1_create_v2_returns_pending_package():
    c = client()
    r = c.create([plan(SITE_JANE1, P_CORE, "YEAR", 1, cc="DE")], external="sub-0042")
    body = ok(r)
    check("idempotencyKey" not in body, "no idempotencyKey sent, none expected: %r" % body)
    check(r.headers.get("x-wix-request-id"), "x-wix-request-id header missing")
    check(r.headers.get("content-type", "").startswith("application/json"), "content-type not JSON")
    p = body["package"]
    check(GUID_RE.match(p["id"]), "package id not a GUID: %r" % p["id"])
    eq(p["accountId"], JANE, "accountId")
    eq(p["externalId"], "sub-0042", "externalId")
    if "parentAccountId" in p:
        eq(p["parentAccountId"], RESELLER, "parentAccountId")
    parse_date(p["createdDate"])
    parse_date(p["updatedDate"])
    eq(len(p["productInstances"]), 1, "instance count")
    i = instance(p)
    check(GUID_RE.match(i["instanceId"]), "instanceId not a GUID")
    check(i["instanceId"] != p["id"], "instanceId equals package id")
    eq(i["siteId"], SITE_JANE1, "siteId")
    eq(i["catalogProductId"], P_CORE, "catalogProductId")
    eq(i["status"], "PENDING", "status in the create answer")
    eq(i["billingInfo"], recurring("YEAR", 1), "billingInfo")
    eq(i["countryCode"], "DE", "countryCode")
    check("failure" not in i, "failure present on a PENDING instance")
    check("expirationDate" not in i, "a plan has no expirationDate")
    parse_date(i["createdDate"])
    parse_date(i["updatedDate"])


@test
def g1_get_shows_delivered_package():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, None, ONE_TIME, cc="FR")], external="e1"))
    g = ok(c.get(p["id"]), "get")
    check(set(g) == {"package"}, "get answer keys: %r" % list(g))
    gp = g["package"]
    eq(gp["id"], p["id"], "id")
    eq(gp["externalId"], "e1", "externalId")
    eq([i["instanceId"] for i in gp["productInstances"]],
       [i["instanceId"] for i in p["productInstances"]], "instance ids and order")
    eq([i["status"] for i in gp["productInstances"]], ["ENABLED", "ENABLED"], "statuses after delivery")
    eq(instance(gp, 1)["billingInfo"], ONE_TIME, "ONE_TIME billingInfo")
    check("siteId" not in instance(gp, 1), "floating instance must not carry siteId")
    eq(instance(gp, 1)["countryCode"], "FR", "countryCode")
    eq(gp["createdDate"], p["createdDate"], "createdDate unchanged")


@test
def g1_create_v1_without_country_code():
    c = client()
    r = c.create([prod(P_SERVICE, SITE_JANE2, None, cc=None), plan(SITE_JANE2, P_LIGHT, "MONTH", 1, cc=None)], v=1)
    p = created(r, "V1 create without countryCode")
    eq(len(p["productInstances"]), 2, "instances")
    i0, i1 = p["productInstances"]
    eq(i0["catalogProductId"], P_SERVICE, "product 0")
    eq(i0["billingInfo"], ONE_TIME, "single-cycle product gets its only cycle")
    check("countryCode" not in i0, "no countryCode sent, none expected: %r" % i0)
    eq(i1["billingInfo"], recurring("MONTH", 1), "billing of product 1")
    eq(i0["status"], "PENDING", "status")
    eq(p["accountId"], JANE, "accountId")
    check("externalId" not in p or p["externalId"] in (None, ""), "no externalId sent")


@test
def g1_query_returns_packages():
    c = client()
    a = created(c.create([plan(SITE_JANE1)], external="qa"))
    time.sleep(0.005)
    b = created(c.create([plan(SITE_JANE2)], external="qb"))
    q = ok(c.query({}), "query {}")
    eq(q["metadata"]["count"], 2, "metadata.count")
    eq(q["metadata"].get("cursors"), {}, "cursors with one page")
    eq([p["id"] for p in q["packages"]], [b["id"], a["id"]], "default order createdDate DESC")
    eq(q["packages"][0]["productInstances"][0]["status"], "ENABLED", "query shows delivered status")
    q = ok(c.query({"filter": {"externalId": "qa"}}), "query by externalId")
    eq([p["id"] for p in q["packages"]], [a["id"]], "filtered ids")


@test
def g1_cancel_package_cancels_every_instance_and_repeat_is_noop():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, billing=ONE_TIME)]))
    time.sleep(0.005)
    r = c.cancel_package(p["id"])
    body = ok(r, "cancel package")
    cp = body["package"]
    eq(cp["id"], p["id"], "id")
    eq([i["status"] for i in cp["productInstances"]], ["CANCELED", "CANCELED"], "statuses")
    check(parse_date(cp["updatedDate"]) >= parse_date(p["updatedDate"]), "updatedDate moved back")
    g = ok(c.get(p["id"]))["package"]
    eq([i["status"] for i in g["productInstances"]], ["CANCELED", "CANCELED"], "statuses on get")
    time.sleep(0.005)
    again = ok(c.cancel_package(p["id"]), "second cancel")["package"]
    eq(again, g, "second cancel answers the unchanged package")


@test
def g1_update_external_id():
    c = client()
    p = created(c.create([plan(SITE_JANE1)], external="old"))
    r = ok(c.set_external(p["id"], "new-ext-1"), "update external id")
    check("updatedPackage" in r and "package" not in r, "answer key must be updatedPackage: %r" % list(r))
    eq(r["updatedPackage"]["externalId"], "new-ext-1", "externalId in answer")
    eq(r["updatedPackage"]["id"], p["id"], "id")
    eq(ok(c.get(p["id"]))["package"]["externalId"], "new-ext-1", "externalId on get")
    r = ok(c.set_external(p["id"], "a/b c%"), "url-encoded external id")
    eq(r["updatedPackage"]["externalId"], "a/b c%", "decoded externalId")
    r = ok(c.set_external(p["id"], "x" * 100), "100-char external id")
    eq(r["updatedPackage"]["externalId"], "x" * 100, "100-char externalId")


@test
def g1_floating_instance_assign_unassign_reassign():
    c = client()
    p = created(c.create([plan(None)]))
    iid = instance(p)["instanceId"]
    check("siteId" not in instance(p), "floating instance has a siteId: %r" % instance(p))
    r = ok(c.assign(iid, SITE_JANE1), "assign")
    eq(find_inst(r["package"], iid)["siteId"], SITE_JANE1, "siteId after assign")
    eq(r["package"]["id"], p["id"], "answer is the package")
    r = ok(c.unassign(iid), "unassign")
    check("siteId" not in find_inst(r["package"], iid), "siteId still present after unassign")
    g = ok(c.get(p["id"]))["package"]
    check("siteId" not in find_inst(g, iid), "siteId present on get after unassign")
    r = ok(c.assign(iid, SITE_JANE1), "assign again")
    r = ok(c.assign(iid, SITE_JANE2), "reassign directly to another site")
    eq(find_inst(r["package"], iid)["siteId"], SITE_JANE2, "siteId after reassign")
    # The first site is free again: another plan fits there.
    created(c.create([plan(SITE_JANE1, P_LIGHT)]), "plan on the vacated site")
    eq(find_inst(ok(c.get(p["id"]))["package"], iid)["status"], "ENABLED", "status after moves")


@test
def g1_adjust_product_and_cycle_keeps_instance_id():
    c = client()
    p = created(c.create([plan(SITE_JANE1, P_LIGHT, "MONTH", 1, discountCode="SPRING")]))
    iid = instance(p)["instanceId"]
    r = ok(c.adjust(iid, {"catalogProductId": P_BUSINESS}), "upgrade")
    i = find_inst(r["package"], iid)
    eq(len(r["package"]["productInstances"]), 1, "no instance added")
    eq(i["catalogProductId"], P_BUSINESS, "new product")
    eq(i["billingInfo"], recurring("MONTH", 1), "cycle kept when supported")
    eq(i["siteId"], SITE_JANE1, "site kept")
    r = ok(c.adjust(iid, {"billingInfo": recurring("YEAR", 2)}), "cycle change")
    i = find_inst(r["package"], iid)
    eq(i["billingInfo"], recurring("YEAR", 2), "new cycle")
    eq(i["catalogProductId"], P_BUSINESS, "product kept")
    r = ok(c.adjust(iid, {"catalogProductId": P_ELITE, "billingInfo": recurring("YEAR", 1)}), "both")
    i = find_inst(r["package"], iid)
    eq((i["catalogProductId"], i["billingInfo"]), (P_ELITE, recurring("YEAR", 1)), "product and cycle")
    g = find_inst(ok(c.get(p["id"]))["package"], iid)
    eq((g["catalogProductId"], g["billingInfo"]), (P_ELITE, recurring("YEAR", 1)), "get after adjust")
    check(g["status"] in ("ENABLED", "PENDING"), "status after adjust: %r" % g["status"])


@test
def g1_adjust_downgrade_to_legacy_picks_supported_cycle():
    c = client()
    p = created(c.create([plan(SITE_JANE1, P_CORE, "YEAR", 1)]))
    iid = instance(p)["instanceId"]
    r = ok(c.adjust(iid, {"catalogProductId": P_LEGACY_VIP}), "to legacy plan")
    i = find_inst(r["package"], iid)
    eq((i["instanceId"], i["catalogProductId"], i["billingInfo"]),
       (iid, P_LEGACY_VIP, recurring("YEAR", 1)), "legacy plan instance")


@test
def g1_cancel_instance_and_repeat():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, SITE_JANE1, ONE_TIME)]))
    a, b = (i["instanceId"] for i in p["productInstances"])
    r = ok(c.cancel_instance(a), "cancel instance")
    eq(r["package"]["id"], p["id"], "answer is the package")
    eq(find_inst(r["package"], a)["status"], "CANCELED", "canceled instance")
    eq(find_inst(r["package"], b)["status"], "ENABLED", "other instance untouched")
    g = ok(c.get(p["id"]))["package"]
    time.sleep(0.005)
    again = ok(c.cancel_instance(a), "repeat cancel")["package"]
    eq(again, g, "repeat cancel answers the unchanged package")
    # A canceled plan frees its site for another plan.
    created(c.create([plan(SITE_JANE1, P_LIGHT)]), "new plan on the site")


def _plan_and_domain(c, site=SITE_JANE1):
    pp = created(c.create([plan(site)]), "plan")
    dp = created(c.create([domain(site)]), "domain")
    return pp, instance(pp)["instanceId"], dp, instance(dp)["instanceId"]


@test
def g1_cancel_plan_instance_makes_domain_floating():
    c = client()
    pp, plan_id, dp, dom_id = _plan_and_domain(c)
    eq(instance(ok(c.get(dp["id"]))["package"])["siteId"], SITE_JANE1, "domain on the site")
    ok(c.cancel_instance(plan_id), "cancel plan")
    d = instance(ok(c.get(dp["id"]))["package"])
    check("siteId" not in d, "domain still on the site after the plan was canceled: %r" % d)
    eq(d["status"], "ENABLED", "domain stays enabled")


@test
def g1_unassign_plan_makes_domain_floating():
    c = client()
    pp, plan_id, dp, dom_id = _plan_and_domain(c)
    ok(c.unassign(plan_id), "unassign plan")
    check("siteId" not in instance(ok(c.get(dp["id"]))["package"]), "domain still on the site after unassign")


@test
def g1_cancel_plan_package_makes_domain_floating():
    c = client()
    pp, plan_id, dp, dom_id = _plan_and_domain(c)
    ok(c.cancel_package(pp["id"]), "cancel plan package")
    check("siteId" not in instance(ok(c.get(dp["id"]))["package"]), "domain still on the site after cancel")


@test
def g1_domain_expiration_date():
    c = client()
    pp, plan_id, dp, dom_id = _plan_and_domain(c)
    d = instance(dp)
    check("expirationDate" in d, "domain without expirationDate: %r" % d)
    exp = parse_date(d["expirationDate"])
    created_at = parse_date(d["createdDate"])
    check(abs((exp - created_at) - 365 * 86400) < 2, "expirationDate not 365 days after creation: %s vs %s"
          % (d["expirationDate"], d["createdDate"]))
    check(abs(created_at - time.time()) < 300, "createdDate far from now: %s" % d["createdDate"])
    eq(d["billingInfo"], recurring("YEAR", 1), "domain's only cycle")


@test
def g1_voucher_reference():
    c = client()
    pp = created(c.create([plan(SITE_JANE1)]))
    ref = instance(pp)["instanceId"]
    dp = created(c.create([domain(SITE_JANE1, referenceProductInstanceId=ref)]), "voucher domain")
    eq(instance(dp)["referenceProductInstanceId"], ref, "referenceProductInstanceId")
    eq(instance(ok(c.get(dp["id"]))["package"])["referenceProductInstanceId"], ref, "on get")


@test
def g1_delivery_delay_minus_one_stays_pending_until_forced():
    srv = Server("--delivery-delay", "-1").start()
    try:
        c = Client(srv)
        p = created(c.create([plan(SITE_JANE1), prod(P_MAILBOX, billing=recurring("MONTH", 1))]))
        time.sleep(0.1)
        g = ok(c.get(p["id"]))["package"]
        eq([i["status"] for i in g["productInstances"]], ["PENDING", "PENDING"], "statuses with delay -1")
        i0, i1 = (i["instanceId"] for i in g["productInstances"])
        r = ok(c.admin("POST", "instances/%s/status" % i0, {"status": "ENABLED"}), "force ENABLED")
        eq(find_inst(r["package"], i0)["status"], "ENABLED", "admin answer")
        r = ok(c.admin("POST", "instances/%s/status" % i1,
                       {"status": "FAILED", "failure": {"code": "EXTERNAL_FAILURE", "message": "provider down"}}),
               "force FAILED")
        g = ok(c.get(p["id"]))["package"]
        eq(find_inst(g, i0)["status"], "ENABLED", "forced ENABLED on get")
        f = find_inst(g, i1)
        eq(f["status"], "FAILED", "forced FAILED on get")
        eq(f.get("failure"), {"code": "EXTERNAL_FAILURE", "message": "provider down"}, "failure")
        check("failure" not in find_inst(g, i0), "failure on an ENABLED instance")
        st = ok(c.admin("GET", "stats"))
        eq(st["instances"], {"ENABLED": 1, "FAILED": 1}, "stats by status")
        c.close()
    finally:
        srv.cleanup()


@test
def g1_admin_force_failed_default_failure():
    c = client()
    p = created(c.create([plan(SITE_JANE1)]))
    iid = instance(p)["instanceId"]
    ok(c.admin("POST", "instances/%s/status" % iid, {"status": "FAILED"}), "force FAILED")
    i = instance(ok(c.get(p["id"]))["package"])
    eq(i["status"], "FAILED", "status")
    check(i.get("failure", {}).get("code") in ("UNKNOWN", "DELIVERY_TIMEOUT", "EXTERNAL_FAILURE"),
          "failure.code: %r" % i.get("failure"))
    check(isinstance(i["failure"].get("message"), str), "failure.message")
    r = c.admin("POST", "instances/%s/status" % iid, {"status": "BROKEN"})
    violation(r, "status", "admin status with a bad value")
    r = c.admin("POST", "instances/%s/status" % UNKNOWN_GUID, {"status": "ENABLED"})
    eq(r.status, 404, "admin status of an unknown instance")


@test
def g1_awaiting_action_product():
    c = client()
    p = created(c.create([prod(P_MAILBOX, billing=recurring("MONTH", 1))]))
    eq(instance(p)["status"], "PENDING", "status in create answer")
    i = instance(ok(c.get(p["id"]))["package"])
    eq(i["status"], "AWAITING_ACTION", "delivered status")
    check("failure" not in i, "failure on AWAITING_ACTION")


@test
def g1_failed_delivery_product():
    c = client()
    p = created(c.create([prod(P_EMAILFWD, SITE_JANE1)]))
    eq(instance(p)["status"], "PENDING", "status in create answer")
    check("failure" not in instance(p), "failure before delivery")
    i = instance(ok(c.get(p["id"]))["package"])
    eq(i["status"], "FAILED", "delivered status")
    eq(i.get("failure", {}).get("code"), "DELIVERY_TIMEOUT", "failure.code")
    check(isinstance(i["failure"].get("message"), str) and i["failure"]["message"], "failure.message")


@test
def g1_delivery_delay_setting():
    c = client()
    s = ok(c.admin("POST", "settings", {"deliveryDelayMs": 400}), "settings")
    eq(s["deliveryDelayMs"], 400, "deliveryDelayMs echoed")
    eq(ok(c.admin("GET", "settings"))["deliveryDelayMs"], 400, "GET settings")
    p = created(c.create([plan(SITE_JANE1)]))
    eq(instance(ok(c.get(p["id"]))["package"])["status"], "PENDING", "before the delay")
    time.sleep(0.5)
    eq(instance(ok(c.get(p["id"]))["package"])["status"], "ENABLED", "after the delay")


@test
def g1_admin_accounts_and_sites():
    c = client()
    health = ok(c.admin("GET", "health"), "health")
    eq(health, {"ok": True}, "health body")
    new_acc = "55555555-6666-4777-8888-999999999999"
    r = ok(c.admin("POST", "accounts", {"id": new_acc, "parentAccountId": RESELLER, "type": "SUB_ACCOUNT",
                                         "name": "Carol"}), "add account")
    eq(r["account"]["id"], new_acc, "account id")
    r = ok(c.admin("POST", "sites", {"accountId": new_acc, "name": "carol-site"}), "add site")
    site = r["site"]["id"]
    check(GUID_RE.match(site), "generated site id")
    lst = ok(c.admin("GET", "accounts"), "list accounts")
    check(any(a["id"] == new_acc for a in lst["accounts"]), "new account listed")
    check(any(s["id"] == site and s["accountId"] == new_acc for s in lst["sites"]), "new site listed")
    check(any(p["id"] == P_DOMAIN for p in lst["products"]), "catalog products listed")
    p = created(c.create([plan(site)], account=new_acc), "create on the new account's site")
    eq(p["accountId"], new_acc, "accountId")
    # Its reseller sees it.
    eq(ok(c.get(p["id"], account=RESELLER))["package"]["id"], p["id"], "reseller sees it")


@test
def g1_cancel_bumps_updated_dates():
    c = client()
    p = created(c.create([plan(SITE_JANE1)]))
    before = ok(c.get(p["id"]))["package"]
    pause()
    after = ok(c.cancel_instance(instance(p)["instanceId"]))["package"]
    check(instance(after)["updatedDate"] > instance(before)["updatedDate"],
          "instance updatedDate not bumped: %s -> %s"
          % (instance(before)["updatedDate"], instance(after)["updatedDate"]))
    check(after["updatedDate"] > before["updatedDate"], "package updatedDate not bumped")
    eq((after["createdDate"], instance(after)["createdDate"]), (before["createdDate"], instance(before)["createdDate"]),
       "createdDate unchanged")


@test
def g1_adjust_discount_code_only_with_new_product():
    c = client()
    p = created(c.create([plan(SITE_JANE1, P_LIGHT, "YEAR", 1, discountCode="FIRST")]))
    iid = instance(p)["instanceId"]
    r = ok(c.adjust(iid, {"billingInfo": recurring("MONTH", 1), "discountCode": "IGNORED"}), "cycle + discount")
    eq(find_inst(r["package"], iid).get("discountCode"), "FIRST", "discountCode ignored without catalogProductId")
    r = ok(c.adjust(iid, {"catalogProductId": P_CORE, "discountCode": "UPGRADE10"}), "product + discount")
    eq(find_inst(r["package"], iid).get("discountCode"), "UPGRADE10", "discountCode applied with a new product")
    eq(find_inst(r["package"], iid)["billingInfo"], recurring("MONTH", 1), "cycle kept")


@test
def g1_moving_plan_to_another_site_releases_domain():
    c = client()
    pp, plan_id, dp, dom_id = _plan_and_domain(c)
    r = ok(c.assign(plan_id, SITE_JANE2), "move the plan")
    eq(instance(r["package"])["siteId"], SITE_JANE2, "plan moved")
    check("siteId" not in instance(ok(c.get(dp["id"]))["package"]), "domain left on the site without a plan")
    ok(c.assign(dom_id, SITE_JANE2), "domain follows the plan")


@test
def g1_admin_reset_restores_seed():
    c = client()
    extra = "77777777-8888-4999-8aaa-bbbbbbbbbbbb"
    ok(c.admin("POST", "accounts", {"id": extra}), "add a reseller")
    created(c.create([plan(SITE_JANE1)]))
    add_fault(c, {"pathPrefix": "/nothing", "errorRate": 1})
    ok(c.admin("POST", "reset"), "reset")
    st = ok(c.admin("GET", "stats"))
    eq((st["packages"], st["instances"], st["requests"]), (0, {}, 0), "stats after reset")
    eq(ok(c.admin("GET", "faults"))["faults"], [], "faults after reset")
    accounts = {a["id"]: a for a in ok(c.admin("GET", "accounts"))["accounts"]}
    eq(sorted(accounts), sorted([RESELLER, TEAM, JANE, BOB, OTHER]), "seed accounts only")
    eq((accounts[JANE]["parentAccountId"], accounts[JANE]["type"]), (RESELLER, "SUB_ACCOUNT"), "Jane")
    eq(accounts[TEAM]["type"], "TEAM", "team type")
    created(c.create([plan(SITE_JANE1)]), "the site is free again")


# ===========================================================================
# Group 2: error codes from real conditions
# ===========================================================================

def stats():
    return ok(client().admin("GET", "stats"), "stats")


@test
def g2_missing_authorization_is_401():
    c = client()
    for method, path, body in (("POST", V2, {"products": [plan(SITE_JANE1)]}),
                               ("GET", "%s/%s" % (V1, UNKNOWN_GUID), None),
                               ("POST", QUERY, {"query": {}})):
        r = c.call(method, path, body, auth=None)
        eq(r.status, 401, "%s %s without Authorization" % (method, path))
        check(r.headers.get("x-wix-request-id"), "x-wix-request-id on a 401")
    eq(c.call("POST", V2, {"products": [plan(SITE_JANE1)]}, auth="").status, 401, "empty Authorization")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_missing_account_header_is_403():
    c = client()
    r = c.call("POST", V2, {"products": [plan(SITE_JANE1)]}, account=None)
    eq(r.status, 403, "create without wix-account-id")
    eq(c.call("POST", QUERY, {"query": {}}, account=None).status, 403, "query without wix-account-id")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_unknown_account_is_404_account_not_found():
    c = client()
    app_error(c.create([plan(SITE_JANE1)], account=UNKNOWN_GUID), 404, "ACCOUNT_NOT_FOUND", "unknown account")
    app_error(c.create([plan(SITE_JANE1)], account="not-a-guid"), 404, "ACCOUNT_NOT_FOUND", "non-GUID account")
    app_error(c.query({}, account=UNKNOWN_GUID), 404, "ACCOUNT_NOT_FOUND", "query, unknown account")
    app_error(c.get(UNKNOWN_GUID, account=UNKNOWN_GUID), 404, "ACCOUNT_NOT_FOUND", "get, unknown account")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_keys_option_limits_api_keys():
    srv = Server("--keys", "key-one,key-two").start()
    try:
        c = Client(srv)
        for key in ("key-one", "key-two"):
            r = c.call("POST", QUERY, {"query": {}}, auth=key)
            eq(r.status, 200, "listed key %s" % key)
        for key in ("key-three", "key-on", "key-one,key-two", "KEY-ONE", "test-key"):
            eq(c.call("POST", QUERY, {"query": {}}, auth=key).status, 401, "unlisted key %r" % key)
        eq(c.call("POST", QUERY, {"query": {}}, auth=None).status, 401, "no key")
        r = c.call("POST", V2, {"products": [plan(SITE_JANE1)]}, auth="bad")
        eq(r.status, 401, "create with an unlisted key")
        eq(ok(c.admin("GET", "stats"))["packages"], 0, "nothing created with a bad key")
        created(c.call("POST", V2, {"products": [plan(SITE_JANE1)]}, auth="key-two"), "create with a listed key")
        c.close()
    finally:
        srv.cleanup()


@test
def g2_product_not_found():
    c = client()
    app_error(c.create([plan(SITE_JANE1), prod(UNKNOWN_GUID, SITE_JANE2, ONE_TIME)]), 404, "PRODUCT_NOT_FOUND")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_invalid_products_not_resellable():
    c = client()
    app_error(c.create([prod(P_COMBO, SITE_JANE1, recurring("YEAR", 1))]), 428, "INVALID_PRODUCTS")
    app_error(c.create([plan(SITE_JANE1), prod(P_COMBO, None, recurring("YEAR", 1))]), 428, "INVALID_PRODUCTS",
              "combo among valid products")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_product_settings_not_found():
    c = client()
    app_error(c.create([prod(P_LOGO, SITE_JANE1, ONE_TIME)]), 428, "PRODUCT_SETTINGS_NOT_FOUND")
    app_error(c.create([prod(P_LOGO)]), 428, "PRODUCT_SETTINGS_NOT_FOUND", "without billingInfo")


@test
def g2_missing_billing_cycle():
    c = client()
    app_error(c.create([prod(P_CORE, SITE_JANE1)]), 428, "MISSING_BILLING_CYCLE", "plan without billingInfo")
    app_error(c.create([prod(P_ASCEND_BASIC, SITE_JANE1)]), 428, "MISSING_BILLING_CYCLE", "ascend")
    # A single-cycle product needs none.
    created(c.create([prod(P_LEGACY_BASIC, SITE_JANE1)]), "single-cycle product without billingInfo")


@test
def g2_invalid_billing_cycle():
    c = client()
    app_error(c.create([prod(P_CORE, SITE_JANE1, ONE_TIME)]), 428, "INVALID_BILLING_CYCLE", "ONE_TIME plan")
    app_error(c.create([prod(P_CORE, SITE_JANE1, {"type": "RECURRING"})]), 428, "INVALID_BILLING_CYCLE",
              "RECURRING without cycleDuration")
    app_error(c.create([prod(P_CORE, SITE_JANE1, {"type": "RECURRING", "cycleDuration": {"count": 1}})]), 428,
              "INVALID_BILLING_CYCLE", "RECURRING without cycleDuration.unit")
    app_error(c.create([prod(P_SERVICE, SITE_JANE1, recurring("YEAR", 1))]), 428, "INVALID_BILLING_CYCLE",
              "RECURRING for a ONE_TIME service")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_incompatible_billing_cycle():
    c = client()
    app_error(c.create([prod(P_CORE, SITE_JANE1, recurring("WEEK", 1))]), 428, "INCOMPATIBLE_BILLING_CYCLE", "WEEK")
    app_error(c.create([prod(P_CORE, SITE_JANE1, recurring("YEAR", 3))]), 428, "INCOMPATIBLE_BILLING_CYCLE",
              "3 years")
    app_error(c.create([prod(P_ELITE, SITE_JANE1, recurring("YEAR", 2))]), 428, "INCOMPATIBLE_BILLING_CYCLE",
              "2 years on Elite")
    app_error(c.create([prod(P_DOMAIN, None, recurring("MONTH", 1))]), 428, "INCOMPATIBLE_BILLING_CYCLE",
              "monthly domain")
    eq(stats()["packages"], 0, "nothing created")


@test
def g2_site_not_found():
    c = client()
    app_error(c.create([plan(UNKNOWN_GUID)]), 404, "SITE_NOT_FOUND", "unknown site")
    app_error(c.create([plan(SITE_BOB)]), 404, "SITE_NOT_FOUND", "a sibling's site")
    app_error(c.create([plan(SITE_RESELLER)]), 404, "SITE_NOT_FOUND", "the reseller's own site from a sub-account")
    app_error(c.create([plan(SITE_JANE1)], account=RESELLER), 404, "SITE_NOT_FOUND",
              "a sub-account's site from the reseller")
    app_error(c.create([plan(SITE_TEAM1)], account=OTHER), 404, "SITE_NOT_FOUND", "another reseller's team site")
    app_error(c.create([plan(SITE_JANE1), plan(SITE_OTHER)]), 404, "SITE_NOT_FOUND", "one bad site of two")
    eq(stats()["packages"], 0, "nothing created")
    created(c.create([plan(SITE_TEAM1)], account=TEAM), "the team's own site")


@test
def g2_multiple_product_assignments():
    c = client()
    app_error(c.create([prod(P_SERVICE, SITE_JANE1, ONE_TIME), prod(P_SERVICE, SITE_JANE1, ONE_TIME)]), 428,
              "MULTIPLE_PRODUCT_ASSIGNMENTS", "same service twice on one site")
    app_error(c.create([plan(SITE_JANE1), plan(SITE_JANE1)]), 428, "MULTIPLE_PRODUCT_ASSIGNMENTS",
              "same plan twice on one site")
    eq(stats()["packages"], 0, "nothing created")
    p = created(c.create([prod(P_SERVICE, SITE_JANE1, ONE_TIME), prod(P_SERVICE, SITE_JANE2, ONE_TIME),
                          prod(P_SERVICE, None, ONE_TIME), prod(P_SERVICE, None, ONE_TIME)]),
                "same product on different sites and floating")
    eq(len(p["productInstances"]), 4, "instances")
    eq(len({i["instanceId"] for i in p["productInstances"]}), 4, "distinct instance ids")


@test
def g2_product_type_already_assigned():
    c = client()
    created(c.create([plan(SITE_JANE1, P_CORE)]), "first plan")
    app_error(c.create([plan(SITE_JANE1, P_LIGHT)]), 428, "PRODUCT_TYPE_ALREADY_ASSIGNED", "second plan on the site")
    app_error(c.create([plan(SITE_JANE2, P_LIGHT), plan(SITE_JANE2, P_BUSINESS)]), 428,
              "PRODUCT_TYPE_ALREADY_ASSIGNED", "two plans on one site in one request")
    app_error(c.create([prod(P_ASCEND_BASIC, SITE_JANE2, recurring("MONTH", 1)),
                        prod(P_ASCEND_PRO, SITE_JANE2, recurring("MONTH", 1))]), 428,
              "PRODUCT_TYPE_ALREADY_ASSIGNED", "two ascend tiers on one site")
    eq(stats()["packages"], 1, "only the first package exists")
    # Other types are not limited: a service next to the plan is fine.
    created(c.create([prod(P_SERVICE, SITE_JANE1, ONE_TIME)]), "service next to the plan")


@test
def g2_product_not_supported_on_site():
    c = client()
    app_error(c.create([domain(SITE_JANE1)]), 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "domain without plan")
    p = created(c.create([plan(SITE_JANE2)]), "plan")
    created(c.create([domain(SITE_JANE2)]), "domain on the plan's site")
    ok(c.cancel_instance(instance(p)["instanceId"]), "cancel the plan")
    app_error(c.create([domain(SITE_JANE2)]), 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "domain next to a canceled plan")
    created(c.create([domain(None)]), "floating domain needs no plan")


@test
def g2_only_live_instances_occupy_a_site():
    c = client()
    p = created(c.create([plan(SITE_JANE1), plan(SITE_JANE2, P_LIGHT)]))
    failed, awaiting = (i["instanceId"] for i in p["productInstances"])
    ok(c.admin("POST", "instances/%s/status" % failed, {"status": "FAILED"}))
    ok(c.admin("POST", "instances/%s/status" % awaiting, {"status": "AWAITING_ACTION"}))
    app_error(c.create([domain(SITE_JANE1)]), 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "domain next to a FAILED plan")
    app_error(c.create([plan(SITE_JANE2, P_BUSINESS)]), 428, "PRODUCT_TYPE_ALREADY_ASSIGNED",
              "plan next to an AWAITING_ACTION plan")
    created(c.create([plan(SITE_JANE1, P_BUSINESS)]), "a FAILED plan does not occupy its site")


@test
def g2_product_limit_exceeded():
    c = client()
    booster = prod(P_BOOSTER, None, recurring("MONTH", 1))
    app_error(c.create([booster] * 4), 428, "PRODUCT_LIMIT_EXCEEDED", "4 boosters in one request")
    p = created(c.create([booster, booster]), "2 boosters")
    created(c.create([booster], account=BOB), "3rd booster from a sibling")
    app_error(c.create([booster]), 428, "PRODUCT_LIMIT_EXCEEDED", "4th booster")
    app_error(c.create([booster], account=TEAM), 428, "PRODUCT_LIMIT_EXCEEDED", "4th booster from the team")
    app_error(c.create([booster], account=RESELLER), 428, "PRODUCT_LIMIT_EXCEEDED", "4th booster from the reseller")
    created(c.create([booster], account=OTHER), "another reseller has its own limit")
    eq(stats()["packages"], 3, "packages")
    ok(c.cancel_instance(instance(p)["instanceId"]), "cancel one booster")
    created(c.create([booster]), "a canceled booster frees a slot")
    app_error(c.create([booster]), 428, "PRODUCT_LIMIT_EXCEEDED", "full again")


@test
def g2_voucher_reference_errors():
    c = client()
    pp = created(c.create([plan(SITE_JANE1)]))
    ref = instance(pp)["instanceId"]
    app_error(c.create([domain(SITE_JANE1, referenceProductInstanceId=UNKNOWN_GUID)]), 428,
              "PRODUCT_INSTANCE_NOT_FOUND", "unknown reference")
    bob = created(c.create([plan(SITE_BOB)], account=BOB))
    app_error(c.create([domain(SITE_JANE1, referenceProductInstanceId=instance(bob)["instanceId"])]), 428,
              "PRODUCT_INSTANCE_NOT_FOUND", "a sibling's instance")
    other = created(c.create([plan(SITE_OTHER)], account=OTHER))
    app_error(c.create([domain(SITE_JANE1, referenceProductInstanceId=instance(other)["instanceId"])]), 428,
              "PRODUCT_INSTANCE_NOT_FOUND", "another reseller's instance")
    svc = created(c.create([prod(P_SERVICE, SITE_JANE2, ONE_TIME)]))
    app_error(c.create([domain(SITE_JANE1, referenceProductInstanceId=instance(svc)["instanceId"])]), 428,
              "INVALID_REFERENCE_PRODUCT", "a service cannot be a reference")
    app_error(c.create([domain(SITE_JANE1, referenceProductInstanceId=ref),
                        domain(None, referenceProductInstanceId=ref)]), 428,
              "REFERENCE_PRODUCT_INSTANCE_ALREADY_USED", "same reference twice in one request")
    n = stats()["packages"]
    created(c.create([domain(SITE_JANE1, referenceProductInstanceId=ref)]), "first use (failed requests used nothing)")
    app_error(c.create([domain(None, referenceProductInstanceId=ref)]), 428,
              "REFERENCE_PRODUCT_INSTANCE_ALREADY_USED", "second use")
    eq(stats()["packages"], n + 1, "one voucher package")


@test
def g2_voucher_reference_status():
    c = client()
    p = created(c.create([plan(SITE_JANE1), plan(SITE_JANE2, P_LIGHT), plan(None, P_BUSINESS),
                          plan(None, P_ELITE)]))
    canceled, failed, awaiting, pending = (i["instanceId"] for i in p["productInstances"])
    ok(c.cancel_instance(canceled))
    ok(c.admin("POST", "instances/%s/status" % failed, {"status": "FAILED"}))
    ok(c.admin("POST", "instances/%s/status" % awaiting, {"status": "AWAITING_ACTION"}))
    ok(c.admin("POST", "instances/%s/status" % pending, {"status": "PENDING"}))
    for ref, what in ((canceled, "CANCELED"), (failed, "FAILED"), (awaiting, "AWAITING_ACTION")):
        app_error(c.create([domain(None, referenceProductInstanceId=ref)]), 428,
                  "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS", "reference in status %s" % what)
    created(c.create([domain(None, referenceProductInstanceId=pending)]), "PENDING reference")


@test
def g2_package_not_found():
    c = client()
    for what, r in (("get", c.get(UNKNOWN_GUID)), ("cancel", c.cancel_package(UNKNOWN_GUID)),
                    ("update external id", c.set_external(UNKNOWN_GUID, "x"))):
        app_error(r, 404, "PACKAGE_NOT_FOUND", what)


@test
def g2_product_instance_not_found():
    c = client()
    for what, r in (("adjust", c.adjust(UNKNOWN_GUID, {"catalogProductId": P_CORE})),
                    ("assign", c.assign(UNKNOWN_GUID, SITE_JANE1)),
                    ("unassign", c.unassign(UNKNOWN_GUID)),
                    ("cancel", c.cancel_instance(UNKNOWN_GUID))):
        app_error(r, 428, "PRODUCT_INSTANCE_NOT_FOUND", what)
    # A package id is not an instance id.
    p = created(c.create([plan(None)]))
    app_error(c.cancel_instance(p["id"]), 428, "PRODUCT_INSTANCE_NOT_FOUND", "package id as instance id")


@test
def g2_adjust_missing_product_details():
    c = client()
    iid = instance(created(c.create([plan(SITE_JANE1)])))["instanceId"]
    app_error(c.adjust(iid, {}), 428, "MISSING_PRODUCT_DETAILS", "empty body")
    app_error(c.adjust(iid, None), 428, "MISSING_PRODUCT_DETAILS", "no body")
    app_error(c.adjust(iid, {"discountCode": "X"}), 428, "MISSING_PRODUCT_DETAILS", "only discountCode")
    app_error(c.adjust(iid, {"billingInfo": {"type": "RECURRING"}}), 428, "MISSING_PRODUCT_DETAILS",
              "RECURRING without cycleDuration")


@test
def g2_adjust_product_errors():
    c = client()
    p = created(c.create([plan(SITE_JANE1, P_CORE, "YEAR", 1)]))
    iid = instance(p)["instanceId"]
    app_error(c.adjust(iid, {"catalogProductId": P_DOMAIN}), 428, "INCOMPATIBLE_PRODUCT", "plan -> domain")
    app_error(c.adjust(iid, {"catalogProductId": P_ASCEND_PRO}), 428, "INCOMPATIBLE_PRODUCT", "plan -> ascend")
    app_error(c.adjust(iid, {"catalogProductId": UNKNOWN_GUID}), 404, "PRODUCT_NOT_FOUND", "unknown product")
    app_error(c.adjust(iid, {"catalogProductId": P_COMBO}), 428, "INVALID_PRODUCTS", "not resellable")
    app_error(c.adjust(iid, {"billingInfo": recurring("WEEK", 1)}), 428, "INCOMPATIBLE_BILLING_CYCLE", "weekly")
    app_error(c.adjust(iid, {"billingInfo": ONE_TIME}), 428, "INVALID_BILLING_CYCLE", "ONE_TIME plan")
    app_error(c.adjust(iid, {"catalogProductId": P_ELITE, "billingInfo": recurring("YEAR", 2)}), 428,
              "INCOMPATIBLE_BILLING_CYCLE", "Elite has no 2-year cycle")
    g = instance(ok(c.get(p["id"]))["package"])
    eq((g["catalogProductId"], g["billingInfo"]), (P_CORE, recurring("YEAR", 1)), "failed adjusts changed nothing")


@test
def g2_incompatible_instance_status():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_EMAILFWD, SITE_JANE2)]))
    plan_id, fwd_id = (i["instanceId"] for i in p["productInstances"])
    eq(find_inst(ok(c.get(p["id"]))["package"], fwd_id)["status"], "FAILED", "delivery failed")
    ok(c.cancel_instance(plan_id))
    for iid, st in ((plan_id, "CANCELED"), (fwd_id, "FAILED")):
        app_error(c.adjust(iid, {"billingInfo": recurring("MONTH", 1)}), 428, "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS",
                  "adjust %s" % st)
        app_error(c.assign(iid, SITE_JANE2 if st == "CANCELED" else SITE_JANE1), 428,
                  "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS", "assign %s" % st)
        app_error(c.unassign(iid), 428, "INCOMPATIBLE_PRODUCT_INSTANCE_STATUS", "unassign %s" % st)
    g = ok(c.get(p["id"]))["package"]
    eq(find_inst(g, plan_id)["siteId"], SITE_JANE1, "canceled plan kept its site")
    eq(find_inst(g, fwd_id)["siteId"], SITE_JANE2, "failed instance kept its site")


@test
def g2_assign_errors():
    c = client()
    a = created(c.create([plan(SITE_JANE1)]))
    b = created(c.create([plan(None, P_LIGHT), domain(None)]))
    fl_plan, fl_dom = (i["instanceId"] for i in b["productInstances"])
    app_error(c.assign(fl_plan, UNKNOWN_GUID), 404, "SITE_NOT_FOUND", "unknown site")
    app_error(c.assign(fl_plan, SITE_BOB), 404, "SITE_NOT_FOUND", "a sibling's site")
    app_error(c.assign(fl_plan, SITE_JANE1), 428, "PRODUCT_TYPE_ALREADY_ASSIGNED", "second plan on a site")
    app_error(c.assign(fl_dom, SITE_JANE2), 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "domain without a plan")
    ok(c.assign(fl_dom, SITE_JANE1), "domain next to the plan")
    g = ok(c.get(b["id"]))["package"]
    check("siteId" not in find_inst(g, fl_plan), "failed assigns left the plan floating")
    eq(find_inst(g, fl_dom)["siteId"], SITE_JANE1, "domain assigned")
    eq(instance(ok(c.get(a["id"]))["package"])["siteId"], SITE_JANE1, "the first plan stayed")


# ===========================================================================
# Group 3: validation (400 with fieldViolations)
# ===========================================================================

def raw_create(c, body, v=2):
    return c.call("POST", V2 if v == 2 else V1, body)


@test
def g3_malformed_json_and_non_object_body():
    c = client()
    violation(raw_create(c, b'{"products": [{"catalogProductId": '), "body", "truncated JSON")
    violation(raw_create(c, b"{'products': []}"), "body", "single quotes")
    violation(raw_create(c, b'{"products": [] ,}'), "body", "trailing comma")
    violation(raw_create(c, b"[1, 2]"), "body", "array body")
    violation(raw_create(c, b'"text"'), "body", "string body")
    violation(c.call("POST", QUERY, b"{not json"), "body", "query with malformed JSON")
    r = c.call("POST", QUERY, b'{"query": {"filter": {"externalId": {"$ne": 1e999}}}}')
    violation(r, "body", "a number beyond a double")
    check(any("number out of range" in v["description"] for v in r.violations),
          "the 1e999 refusal says why: %s" % r.short())
    violation(c.call("PATCH", "%s/%s" % (INST, UNKNOWN_GUID), b"{"), "body", "adjust with malformed JSON")
    eq(stats()["packages"], 0, "nothing created")


@test
def g3_products_required_and_sized():
    c = client()
    violation(raw_create(c, {}), "products", "no products")
    violation(raw_create(c, {"products": None}), "products", "products null")
    violation(raw_create(c, {"products": []}), "products", "0 products")
    violation(raw_create(c, {"products": "x"}), "products", "products a string")
    violation(raw_create(c, {"products": {"catalogProductId": P_CORE}}), "products", "products an object")
    violation(raw_create(c, {"products": [prod(P_SERVICE, None, ONE_TIME)] * 1001}), "products", "1001 products")
    violation(raw_create(c, {"products": ["x"]}), "products[0]", "a product that is a string")
    violation(c.call("POST", V2, None), "products", "no body at all")
    eq(stats()["packages"], 0, "nothing created")
    p = created(raw_create(c, {"products": [prod(P_SERVICE, None, ONE_TIME)] * 1000}), "1000 products")
    eq(len(p["productInstances"]), 1000, "1000 instances")


@test
def g3_wrong_types():
    c = client()
    cases = [
        ({"externalId": 5, "products": [plan(SITE_JANE1)]}, "externalId"),
        ({"products": [prod(123, SITE_JANE1, recurring())]}, "products[0].catalogProductId"),
        ({"products": [plan(SITE_JANE1), prod(None, SITE_JANE2, recurring())]}, "products[1].catalogProductId"),
        ({"products": [plan(True)]}, "products[0].siteId"),
        ({"products": [prod(P_CORE, SITE_JANE1, "YEARLY")]}, "products[0].billingInfo"),
        ({"products": [prod(P_CORE, SITE_JANE1, {"type": "WEEKLY"})]}, "products[0].billingInfo.type"),
        ({"products": [prod(P_CORE, SITE_JANE1, {"type": 2})]}, "products[0].billingInfo.type"),
        ({"products": [prod(P_CORE, SITE_JANE1, {"type": "RECURRING", "cycleDuration": "P1Y"})]},
         "products[0].billingInfo.cycleDuration"),
        ({"products": [prod(P_CORE, SITE_JANE1, recurring("FORTNIGHT", 1))]},
         "products[0].billingInfo.cycleDuration.unit"),
        ({"products": [prod(P_CORE, SITE_JANE1, recurring("YEAR", "1"))]},
         "products[0].billingInfo.cycleDuration.count"),
        ({"products": [prod(P_CORE, SITE_JANE1, recurring("YEAR", 1.5))]},
         "products[0].billingInfo.cycleDuration.count"),
        ({"products": [prod(P_CORE, SITE_JANE1, recurring("YEAR", 0))]},
         "products[0].billingInfo.cycleDuration.count"),
        ({"products": [plan(SITE_JANE1, cc=49)]}, "products[0].countryCode"),
        ({"products": [plan(SITE_JANE1, discountCode=["A"])]}, "products[0].discountCode"),
        ({"products": [plan(SITE_JANE1, referenceProductInstanceId=7)]}, "products[0].referenceProductInstanceId"),
    ]
    for body, field in cases:
        violation(raw_create(c, body), field, "wrong type for %s" % field)
    eq(stats()["packages"], 0, "nothing created")


@test
def g3_bad_guids():
    c = client()
    upper = P_CORE.upper()
    cases = [
        ({"products": [prod("abc", SITE_JANE1, recurring())]}, "products[0].catalogProductId"),
        ({"products": [prod(upper, SITE_JANE1, recurring())]}, "products[0].catalogProductId"),
        ({"products": [prod(P_CORE + "0", SITE_JANE1, recurring())]}, "products[0].catalogProductId"),
        ({"products": [plan("c0000000_0000_4000_8000_000000000001")]}, "products[0].siteId"),
        ({"products": [plan(SITE_JANE1, referenceProductInstanceId="zzzzzzzz-0000-4000-8000-000000000000")]},
         "products[0].referenceProductInstanceId"),
    ]
    for body, field in cases:
        violation(raw_create(c, body), field, "bad GUID in %s" % field)
    violation(c.get("not-a-guid"), "id", "GET with a bad id")
    violation(c.cancel_package("not-a-guid"), "id", "DELETE with a bad id")
    violation(c.adjust("not-a-guid", {"catalogProductId": P_CORE}), "instanceId", "adjust with a bad instanceId")
    violation(c.cancel_instance("xyz"), "instanceId", "cancel instance with a bad instanceId")
    violation(c.unassign("xyz"), "instanceId", "unassign with a bad instanceId")
    p = created(c.create([plan(None)]))
    iid = instance(p)["instanceId"]
    violation(c.assign(iid, "not-a-site"), "siteId", "assign to a bad siteId")
    violation(c.assign("nope", SITE_JANE1), "instanceId", "assign a bad instanceId")
    r = c.set_external("not-a-guid", "x")
    check(r.status == 400 and any(f in ("packageId", "id") for f in r.fields),
          "update external id with a bad packageId: %s" % r.short())
    violation(c.adjust(iid, {"catalogProductId": "nope"}), "catalogProductId", "adjust to a bad catalogProductId")
    eq(stats()["packages"], 1, "only the valid package")


@test
def g3_string_lengths():
    c = client()
    violation(c.create([plan(SITE_JANE1)], external="x" * 101), "externalId", "externalId of 101")
    violation(c.create([plan(SITE_JANE1, discountCode="D" * 26)]), "products[0].discountCode", "discountCode of 26")
    violation(c.create([plan(SITE_JANE1)], idem="k" * 101), "idempotencyKey", "idempotencyKey of 101")
    violation(c.create([plan(SITE_JANE1)], idem=12), "idempotencyKey", "idempotencyKey a number")
    eq(stats()["packages"], 0, "nothing created")
    p = created(c.create([plan(SITE_JANE1, discountCode="D" * 25)], external="x" * 100, idem="k" * 100),
                "limits exactly")
    eq(p["externalId"], "x" * 100, "externalId of 100")
    eq(instance(p)["discountCode"], "D" * 25, "discountCode of 25")
    iid = instance(p)["instanceId"]
    violation(c.adjust(iid, {"catalogProductId": P_LIGHT, "discountCode": "D" * 26}), "discountCode",
              "adjust discountCode of 26")
    violation(c.adjust(iid, {"catalogProductId": P_LIGHT, "idempotencyKey": "k" * 101}), "idempotencyKey",
              "adjust idempotencyKey of 101")
    violation(c.cancel_instance(iid, {"idempotencyKey": "k" * 101}), "idempotencyKey", "cancel idempotencyKey")
    violation(c.cancel_package(p["id"], {"idempotencyKey": "k" * 101}), "idempotencyKey", "cancel pkg key")
    violation(c.unassign(iid, {"idempotencyKey": "k" * 101}), "idempotencyKey", "unassign idempotencyKey")
    violation(c.assign(iid, SITE_JANE2, {"idempotencyKey": "k" * 101}), "idempotencyKey", "assign idempotencyKey")
    violation(c.set_external(p["id"], "y" * 101), "externalId", "update external id of 101")
    g = ok(c.get(p["id"]))["package"]
    eq((g["externalId"], instance(g)["catalogProductId"], instance(g)["status"], instance(g)["siteId"]),
       ("x" * 100, P_CORE, "ENABLED", SITE_JANE1), "rejected requests changed nothing")


@test
def g3_country_code():
    c = client()
    for cc in ("DEU", "D", "", "D1", "12", "D-"):
        violation(c.create([plan(SITE_JANE1, cc=cc)]), "products[0].countryCode", "countryCode %r" % cc)
        violation(c.create([plan(SITE_JANE1, cc=cc)], v=1), "products[0].countryCode", "V1 countryCode %r" % cc)
    violation(c.create([plan(SITE_JANE1, cc=None)]), "products[0].countryCode", "V2 without countryCode")
    r = c.create([plan(SITE_JANE1, cc="DE"), plan(SITE_JANE2, cc=None)])
    violation(r, "products[1].countryCode", "V2, second product without countryCode")
    eq(stats()["packages"], 0, "nothing created")
    created(c.create([plan(SITE_JANE1, cc=None)], v=1), "V1 without countryCode")


@test
def g3_several_violations_in_one_answer():
    c = client()
    r = c.create([prod(P_CORE, SITE_JANE1, recurring(), cc=None), prod("bad", None, None, cc="DE")],
                 external="e" * 101)
    for f in ("externalId", "products[0].countryCode", "products[1].catalogProductId"):
        violation(r, f, "combined violations")
    check(len(r.violations) >= 3, "one violation per bad field: %r" % r.fields)


@test
def g3_adjust_wrong_types():
    c = client()
    iid = instance(created(c.create([plan(SITE_JANE1)])))["instanceId"]
    violation(c.adjust(iid, {"catalogProductId": 5}), "catalogProductId", "catalogProductId a number")
    violation(c.adjust(iid, {"billingInfo": "YEAR"}), "billingInfo", "billingInfo a string")
    violation(c.adjust(iid, {"billingInfo": recurring("DECADE", 1)}), "billingInfo.cycleDuration.unit",
              "unit not in the enum")
    violation(c.adjust(iid, b"[]"), "body", "array body")


# ===========================================================================
# Group 4: Query Packages
# ===========================================================================

def pause():
    """Keeps createdDate/updatedDate (ms resolution) strictly increasing."""
    time.sleep(0.004)


def qids(c, query, what="query"):
    """Runs a query; returns the list of package ids in answer order."""
    j = ok(c.query(query), what)
    eq(j["metadata"]["count"], len(j["packages"]), "%s: metadata.count" % what)
    return [p["id"] for p in j["packages"]]


def _query_fixture(c):
    """Five visible packages (A..E, oldest first) plus one of another reseller."""
    names = {}
    names["A"] = created(c.create([plan(SITE_JANE1, P_CORE, cc="DE")], external="alpha", account=JANE))
    pause()
    names["B"] = created(c.create([prod(P_SERVICE, None, ONE_TIME, cc="FR"),
                                   prod(P_MAILBOX, None, recurring("MONTH", 1), cc="DE")],
                                  external="beta", account=JANE))
    pause()
    names["C"] = created(c.create([plan(SITE_BOB, P_LIGHT, "MONTH", 1, cc="US")], external="gamma", account=BOB))
    pause()
    names["D"] = created(c.create([prod(P_EMAILFWD, SITE_TEAM1, cc="DE"), plan(SITE_TEAM2, P_ELITE, "MONTH", 1)],
                                  account=TEAM))
    pause()
    names["E"] = created(c.create([plan(SITE_RESELLER, P_BUSINESS)], external="epsilon", account=RESELLER))
    pause()
    names["X"] = created(c.create([plan(SITE_OTHER, P_CORE)], external="alpha", account=OTHER))
    pause()
    ok(c.cancel_instance(instance(names["E"])["instanceId"], account=RESELLER), "cancel E")
    pkgs = {k: ok(c.get(v["id"], account=RESELLER if k != "X" else OTHER))["package"] for k, v in names.items()}
    eq(find_inst(pkgs["D"], instance(pkgs["D"])["instanceId"])["status"], "FAILED", "fixture: D delivery failed")
    eq(instance(pkgs["B"], 1)["status"], "AWAITING_ACTION", "fixture: B awaits action")
    return pkgs


def _expect(c, pkgs, flt, names, what=None):
    got = set(qids(c, {"filter": flt}, what or json.dumps(flt)))
    want = {pkgs[n]["id"] for n in names}
    if got != want:
        inv = {p["id"]: k for k, p in pkgs.items()}
        raise TestFailure("filter %s: expected %s, got %s" % (json.dumps(flt), sorted(names),
                                                             sorted(inv.get(i, i) for i in got)))


@test
def g4_filter_id_account_external():
    c = client()
    P = _query_fixture(c)
    A = P["A"]["id"]
    _expect(c, P, {"id": A}, "A")
    _expect(c, P, {"id": {"$eq": A}}, "A")
    _expect(c, P, {"id": {"$ne": A}}, "BCDE")
    _expect(c, P, {"id": {"$in": [A, P["C"]["id"], P["X"]["id"], UNKNOWN_GUID]}}, "AC")
    _expect(c, P, {"id": {"$exists": True}}, "ABCDE")
    _expect(c, P, {"id": {"$exists": False}}, "")
    _expect(c, P, {"accountId": JANE}, "AB")
    _expect(c, P, {"accountId": {"$eq": BOB}}, "C")
    _expect(c, P, {"accountId": {"$in": [BOB, TEAM]}}, "CD")
    _expect(c, P, {"accountId": {"$ne": JANE}}, "CDE")
    _expect(c, P, {"accountId": {"$exists": True}}, "ABCDE")
    _expect(c, P, {"externalId": "beta"}, "B")
    _expect(c, P, {"externalId": {"$in": ["alpha", "gamma", "nope"]}}, "AC")
    _expect(c, P, {"externalId": {"$ne": "alpha"}}, "BCDE")
    _expect(c, P, {"externalId": {"$exists": False}}, "D")
    _expect(c, P, {"externalId": {"$exists": True}}, "ABCE")
    _expect(c, P, {"externalId": "zeta"}, "")


@test
def g4_filter_dates():
    c = client()
    P = _query_fixture(c)
    cd = {k: P[k]["createdDate"] for k in "ABCDE"}
    check(cd["A"] < cd["B"] < cd["C"] < cd["D"] < cd["E"], "fixture createdDates increase: %r" % cd)
    _expect(c, P, {"createdDate": {"$gt": cd["A"]}}, "BCDE")
    _expect(c, P, {"createdDate": {"$gte": cd["B"]}}, "BCDE")
    _expect(c, P, {"createdDate": {"$gt": cd["B"]}}, "CDE")
    _expect(c, P, {"createdDate": {"$lt": cd["C"]}}, "AB")
    _expect(c, P, {"createdDate": {"$lte": cd["C"]}}, "ABC")
    _expect(c, P, {"createdDate": {"$eq": cd["C"]}}, "C")
    _expect(c, P, {"createdDate": cd["D"]}, "D")
    _expect(c, P, {"createdDate": {"$ne": cd["C"]}}, "ABDE")
    _expect(c, P, {"createdDate": {"$gt": cd["A"], "$lt": cd["D"]}}, "BC")
    _expect(c, P, {"createdDate": {"$gt": "2000-01-01T00:00:00.000Z"}}, "ABCDE")
    _expect(c, P, {"createdDate": {"$lt": "2000-01-01T00:00:00Z"}}, "")
    latest = max(P[k]["updatedDate"] for k in "ABCDE")
    pause()
    ok(c.set_external(P["B"]["id"], "beta-2"), "touch B")
    _expect(c, P, {"updatedDate": {"$gt": latest}}, "B")
    _expect(c, P, {"updatedDate": {"$lte": latest}}, "ACDE")
    _expect(c, P, {"updatedDate": {"$gte": P["E"]["updatedDate"], "$ne": latest}},
            "B" if latest == P["E"]["updatedDate"] else "BE")


@test
def g4_filter_product_instances():
    c = client()
    P = _query_fixture(c)
    _expect(c, P, {"productInstances.status": {"$hasSome": ["CANCELED"]}}, "E")
    _expect(c, P, {"productInstances.status": {"$hasSome": ["FAILED", "AWAITING_ACTION"]}}, "BD")
    _expect(c, P, {"productInstances.status": {"$hasAll": ["FAILED", "ENABLED"]}}, "D")
    _expect(c, P, {"productInstances.status": {"$hasAll": ["ENABLED"]}}, "ABCD")
    _expect(c, P, {"productInstances.status": {"$hasSome": ["PENDING"]}}, "")
    _expect(c, P, {"productInstances.siteId": {"$hasSome": [SITE_JANE1, SITE_BOB, SITE_OTHER]}}, "AC")
    _expect(c, P, {"productInstances.siteId": {"$hasAll": [SITE_TEAM1, SITE_TEAM2]}}, "D")
    _expect(c, P, {"productInstances.catalogProductId": {"$hasSome": [P_CORE]}}, "A")
    _expect(c, P, {"productInstances.catalogProductId": {"$hasAll": [P_EMAILFWD, P_ELITE]}}, "D")
    _expect(c, P, {"productInstances.catalogProductId": {"$hasAll": [P_EMAILFWD, P_CORE]}}, "")
    mailbox = instance(P["B"], 1)["instanceId"]
    _expect(c, P, {"productInstances.instanceId": {"$hasSome": [mailbox, UNKNOWN_GUID]}}, "B")
    _expect(c, P, {"productInstances.billingInfo.type": {"$hasSome": ["ONE_TIME"]}}, "B")
    _expect(c, P, {"productInstances.billingInfo.cycleDuration.unit": {"$hasSome": ["MONTH"]}}, "BCD")
    _expect(c, P, {"productInstances.billingInfo.cycleDuration.count": {"$hasSome": [1]}}, "ABCDE")
    _expect(c, P, {"productInstances.billingInfo.cycleDuration": {"$hasSome": [{"unit": "MONTH", "count": 1}]}},
            "BCD")
    _expect(c, P, {"productInstances.billingInfo": {"$hasSome": [ONE_TIME]}}, "B")
    _expect(c, P, {"productInstances.countryCode": {"$hasSome": ["FR", "US"]}}, "BC")
    _expect(c, P, {"productInstances.failure.code": {"$hasSome": ["DELIVERY_TIMEOUT"]}}, "D")
    failure = instance(P["D"])["failure"]
    _expect(c, P, {"productInstances.failure": {"$hasSome": [failure]}}, "D")
    _expect(c, P, {"productInstances.failure.message": {"$hasSome": [failure["message"]]}}, "D")
    _expect(c, P, {"productInstances.createdDate": {"$hasSome": [instance(P["A"])["createdDate"]]}}, "A")
    _expect(c, P, {"productInstances": {"$hasSome": [instance(P["C"])]}}, "C")


@test
def g4_filter_logical_operators():
    c = client()
    P = _query_fixture(c)
    _expect(c, P, {"$and": [{"accountId": JANE}, {"externalId": "beta"}]}, "B")
    _expect(c, P, {"$or": [{"externalId": "alpha"}, {"accountId": BOB}]}, "AC")
    _expect(c, P, {"$not": {"accountId": JANE}}, "CDE")
    _expect(c, P, {"accountId": JANE, "externalId": "alpha"}, "A", "implicit AND of two fields")
    _expect(c, P, {"$and": [{"$or": [{"accountId": JANE}, {"accountId": TEAM}]},
                            {"$not": {"productInstances.status": {"$hasSome": ["FAILED"]}}}]}, "AB")
    _expect(c, P, {"$or": [{"$and": [{"accountId": BOB}, {"externalId": "gamma"}]},
                           {"productInstances.status": {"$hasSome": ["CANCELED"]}}]}, "CE")
    _expect(c, P, {"$not": {"$or": [{"externalId": {"$exists": False}}, {"accountId": JANE}]}}, "CE")


@test
def g4_sorting():
    c = client()
    P = _query_fixture(c)
    order = [P[k]["id"] for k in "ABCDE"]
    eq(qids(c, {}), order[::-1], "default createdDate DESC")
    eq(qids(c, {"sort": [{"fieldName": "createdDate", "order": "DESC"}]}), order[::-1], "createdDate DESC")
    eq(qids(c, {"sort": [{"fieldName": "createdDate", "order": "ASC"}]}), order, "createdDate ASC")
    pause()
    ok(c.set_external(P["B"]["id"], "beta-2"), "touch B")
    pause()
    ok(c.set_external(P["A"]["id"], "alpha-2"), "touch A")
    got = qids(c, {"sort": [{"fieldName": "updatedDate", "order": "DESC"}]})
    eq(got[:2], [P["A"]["id"], P["B"]["id"]], "updatedDate DESC: last touched first")
    got = qids(c, {"sort": [{"fieldName": "updatedDate", "order": "ASC"}]})
    eq(got[-2:], [P["B"]["id"], P["A"]["id"]], "updatedDate ASC: last touched last")
    got = qids(c, {"filter": {"accountId": JANE}, "sort": [{"fieldName": "createdDate", "order": "ASC"}]})
    eq(got, [P["A"]["id"], P["B"]["id"]], "filter with sort")


def _many(c, n, account=JANE, prefix="p"):
    out = []
    for k in range(n):
        out.append(created(c.create([prod(P_SERVICE, None, ONE_TIME)], external="%s%02d" % (prefix, k),
                                    account=account))["id"])
        pause()
    return out


@test
def g4_cursor_paging_walk():
    c = client()
    made = _many(c, 11)
    full = qids(c, {}, "full listing")
    eq(full, made[::-1], "full listing newest first")
    seen, pages, cursor = [], [], None
    for step in range(10):
        q = {"cursorPaging": {"limit": 4}}
        if cursor:
            q["cursorPaging"]["cursor"] = cursor
        j = ok(c.query(q), "page %d" % step)
        md = j["metadata"]
        page = [p["id"] for p in j["packages"]]
        eq(md["count"], len(page), "page %d count" % step)
        pages.append((page, md))
        seen += page
        cursor = md.get("cursors", {}).get("next")
        if "hasNext" in md:
            eq(md["hasNext"], cursor is not None, "page %d hasNext vs next cursor" % step)
        if not cursor:
            break
    eq([len(p) for p, _ in pages], [4, 4, 3], "page sizes")
    eq(seen, full, "cursor walk returns every package exactly once, in order")
    eq(len(set(seen)), 11, "no duplicates")
    check("prev" not in pages[0][1]["cursors"], "first page has no prev cursor")
    check("prev" in pages[1][1]["cursors"] and "prev" in pages[2][1]["cursors"], "later pages have prev cursors")
    prev = qids(c, {"cursorPaging": {"limit": 4, "cursor": pages[2][1]["cursors"]["prev"]}}, "prev of page 3")
    eq(prev, pages[1][0], "prev cursor of page 3 gives page 2")
    prev = qids(c, {"cursorPaging": {"limit": 4, "cursor": pages[1][1]["cursors"]["prev"]}}, "prev of page 2")
    eq(prev, pages[0][0], "prev cursor of page 2 gives page 1")
    nxt = pages[0][1]["cursors"]["next"]
    eq(qids(c, {"cursorPaging": {"limit": 2, "cursor": nxt}}), full[4:6], "limit changed with a cursor")
    eq(qids(c, {"cursorPaging": {"limit": 100, "cursor": nxt}}), full[4:], "larger limit with a cursor")
    eq(qids(c, {"cursorPaging": {"cursor": nxt}}), full[4:], "cursor without limit")


def _walk(c, first, between=None):
    """Pages through a query by its next cursors; `between` runs after each page. Returns the ids and the
    pages' metadata."""
    ids, mds, q = [], [], first
    while True:
        j = ok(c.query(q), "page %d" % len(mds))
        ids += [p["id"] for p in j["packages"]]
        mds.append(j["metadata"])
        nxt = j["metadata"]["cursors"].get("next")
        if not nxt or len(mds) > 50:
            return ids, mds
        if between:
            between()
        q = {"cursorPaging": {"limit": first["cursorPaging"]["limit"], "cursor": nxt}}


@test
def g4_cursor_walk_with_creates_between_pages():
    """A cursor carries where its page ended: packages created between pages neither repeat nor shift the
    rest (newest first they come before the walk; oldest first, after what there was, once each)."""
    c = client()
    made = _many(c, 9)
    ids, _ = _walk(c, {"cursorPaging": {"limit": 2}}, lambda: _many(c, 1, prefix="new"))
    eq(ids, made[::-1], "every package there was, once, newest first")
    asc = [{"fieldName": "createdDate", "order": "ASC"}]
    ids, _ = _walk(c, {"sort": asc, "cursorPaging": {"limit": 4}}, lambda: _many(c, 1, prefix="late"))
    eq(ids[:9], made, "oldest first: what there was, in order")
    eq(len(ids), len(set(ids)), "then the ones created meanwhile, once each")


@test
def g4_cursor_walk_on_a_status_few_instances_have():
    """A status few instances have is found by its index, then sorted: the walk pages through exactly them,
    and a prev cursor goes back."""
    c = client()
    made = _many(c, 9)
    failed = made[1], made[4], made[7]
    for pid in failed:
        iid = ok(c.get(pid))["package"]["productInstances"][0]["instanceId"]
        ok(c.admin("POST", "instances/%s/status" % iid, {"status": "FAILED"}), "force FAILED")
    q = {"filter": {"productInstances.status": {"$hasSome": ["FAILED", "AWAITING_ACTION"]}},
         "cursorPaging": {"limit": 2}}
    ids, mds = _walk(c, q)
    eq(ids, list(failed[::-1]), "the FAILED ones, newest first")
    eq(len(mds), 2, "in two pages")
    back = ok(c.query({"cursorPaging": {"limit": 2, "cursor": mds[1]["cursors"]["prev"]}}), "prev of page 2")
    eq([p["id"] for p in back["packages"]], ids[:2], "prev gives page 1")


@test
def g4_cursor_carries_filter_and_sort():
    c = client()
    made = _many(c, 7)
    _many(c, 3, account=BOB, prefix="bob")
    q = {"filter": {"accountId": JANE}, "sort": [{"fieldName": "createdDate", "order": "ASC"}],
         "cursorPaging": {"limit": 3}}
    seen = []
    for step in range(5):
        j = ok(c.query(q), "filtered page %d" % step)
        seen += [p["id"] for p in j["packages"]]
        check(all(p["accountId"] == JANE for p in j["packages"]), "filter kept on page %d" % step)
        nxt = j["metadata"]["cursors"].get("next")
        if not nxt:
            break
        q = {"cursorPaging": {"limit": 3, "cursor": nxt}}
    eq(seen, made, "filtered ASC walk")


@test
def g4_cursor_errors():
    c = client()
    _many(c, 5)
    j = ok(c.query({"cursorPaging": {"limit": 2}}))
    nxt = j["metadata"]["cursors"]["next"]
    violation(c.query({"filter": {"accountId": JANE}, "cursorPaging": {"limit": 2, "cursor": nxt}}),
              "query.cursorPaging.cursor", "cursor with filter")
    violation(c.query({"sort": [{"fieldName": "createdDate", "order": "ASC"}],
                       "cursorPaging": {"limit": 2, "cursor": nxt}}), "query.cursorPaging.cursor", "cursor with sort")
    for bad in ("garbage!!", "AAAA", "eyJ4IjoxfQ", base64.urlsafe_b64encode(b'{"o": -1}').decode()):
        violation(c.query({"cursorPaging": {"cursor": bad}}), "query.cursorPaging.cursor", "cursor %r" % bad)
    violation(c.query({"cursorPaging": {"cursor": 12}}), "query.cursorPaging.cursor", "numeric cursor")
    # A cursor of one reseller is not valid for another.
    violation(c.query({"cursorPaging": {"limit": 2, "cursor": nxt}}, account=OTHER), "query.cursorPaging.cursor",
              "another reseller's cursor")
    # ...but a sibling under the same reseller may continue it.
    eq(len(qids(c, {"cursorPaging": {"limit": 2, "cursor": nxt}})), 2, "same reseller continues")


@test
def g4_offset_paging():
    c = client()
    _many(c, 11)
    full = qids(c, {})
    j = ok(c.query({"paging": {"limit": 4, "offset": 0}}), "offset 0")
    md = j["metadata"]
    eq((md["count"], md.get("offset"), md.get("total")), (4, 0, 11), "metadata count/offset/total")
    eq(md.get("tooManyToCount", False), False, "tooManyToCount")
    check(not md.get("cursors"), "no cursors with offset paging: %r" % md)
    eq([p["id"] for p in j["packages"]], full[:4], "first slice")
    j = ok(c.query({"paging": {"limit": 4, "offset": 8}}), "offset 8")
    eq((j["metadata"]["count"], j["metadata"]["offset"], j["metadata"]["total"]), (3, 8, 11), "last slice metadata")
    eq([p["id"] for p in j["packages"]], full[8:], "last slice")
    j = ok(c.query({"paging": {"limit": 4, "offset": 50}}), "offset past the end")
    eq((j["metadata"]["count"], j["metadata"]["total"], j["packages"]), (0, 11, []), "past the end")
    j = ok(c.query({"filter": {"externalId": {"$in": ["p01", "p02", "p03"]}}, "paging": {"limit": 2, "offset": 1},
                    "sort": [{"fieldName": "createdDate", "order": "ASC"}]}), "filtered offset")
    eq([p["externalId"] for p in j["packages"]], ["p02", "p03"], "filtered sorted slice")
    eq(j["metadata"]["total"], 3, "filtered total")


@test
def g4_invalid_queries():
    c = client()
    violation(c.call("POST", QUERY, {}), "query", "no query")
    violation(c.call("POST", QUERY, None), "query", "no body")
    violation(c.call("POST", QUERY, {"query": "all"}), "query", "query a string")
    cases = [
        ({"cursorPaging": {"limit": 101}}, "query.cursorPaging.limit"),
        ({"cursorPaging": {"limit": -1}}, "query.cursorPaging.limit"),
        ({"cursorPaging": {"limit": "5"}}, "query.cursorPaging.limit"),
        ({"cursorPaging": {"limit": 2.5}}, "query.cursorPaging.limit"),
        ({"paging": {"limit": -1}}, "query.paging.limit"),
        ({"paging": {"offset": -5}}, "query.paging.offset"),
        ({"filter": {"status": "ENABLED"}}, "query.filter.status"),
        ({"filter": {"productInstances.status": "ENABLED"}}, "query.filter.productInstances.status"),
        ({"filter": {"productInstances.discountCode": {"$hasSome": ["X"]}}},
         "query.filter.productInstances.discountCode"),
        ({"filter": {"id": {"$gt": UNKNOWN_GUID}}}, "query.filter.id"),
        ({"filter": {"externalId": {"$startsWith": "a"}}}, "query.filter.externalId"),
        ({"filter": {"externalId": {"$contains": "a"}}}, "query.filter.externalId"),
        ({"filter": {"createdDate": {"$in": ["2024-01-01T00:00:00.000Z"]}}}, "query.filter.createdDate"),
        ({"filter": {"createdDate": {"$gt": "yesterday"}}}, "query.filter.createdDate"),
        ({"filter": {"createdDate": {"$gt": 1700000000000}}}, "query.filter.createdDate"),
        ({"filter": {"accountId": {"$hasSome": [JANE]}}}, "query.filter.accountId"),
        ({"filter": {"productInstances.status": {"$eq": "ENABLED"}}}, "query.filter.productInstances.status"),
        ({"filter": {"productInstances.status": {"$hasSome": "ENABLED"}}}, "query.filter.productInstances.status"),
        ({"filter": {"id": {"$in": UNKNOWN_GUID}}}, "query.filter.id"),
        ({"filter": {"id": {"$exists": "yes"}}}, "query.filter.id"),
        ({"filter": {"$nor": [{"id": UNKNOWN_GUID}]}}, "query.filter.$nor"),
        ({"filter": {"$and": {"id": UNKNOWN_GUID}}}, "query.filter.$and"),
        ({"filter": "accountId"}, "query.filter"),
        ({"sort": [{"fieldName": "id", "order": "ASC"}]}, "query.sort[0].fieldName"),
        ({"sort": [{"fieldName": "externalId"}]}, "query.sort[0].fieldName"),
        ({"sort": [{"fieldName": "createdDate", "order": "UP"}]}, "query.sort[0].order"),
        ({"sort": "createdDate"}, "query.sort"),
    ]
    for q, field in cases:
        violation(c.query(q), field, "query %s" % json.dumps(q))
    r = c.query({"paging": {"limit": 2}, "cursorPaging": {"limit": 2}})
    check(r.status == 400 and any(f in ("query.paging", "query.cursorPaging") for f in r.fields),
          "paging + cursorPaging: %s" % r.short())


@test
def g4_projection_accepted_and_ignored():
    c = client()
    p = created(c.create([plan(SITE_JANE1)], external="proj"))
    j = ok(c.query({"fields": ["id"], "fieldsets": ["FULL"]}), "fields/fieldsets")
    eq([x["id"] for x in j["packages"]], [p["id"]], "ids")
    eq(j["packages"][0]["externalId"], "proj", "other fields still there")
    eq(j["packages"][0]["productInstances"][0]["catalogProductId"], P_CORE, "instances still there")


@test
def g4_default_cursor_limit_is_100():
    c = client()
    for k in range(101):
        created(c.create([prod(P_SERVICE, None, ONE_TIME)], external="n%03d" % k))
    j = ok(c.query({}), "query without paging")
    eq(j["metadata"]["count"], 100, "default page size")
    eq(len(j["packages"]), 100, "packages on the first page")
    nxt = j["metadata"]["cursors"].get("next")
    check(nxt, "next cursor when more remain")
    eq(j["metadata"].get("hasNext", True), True, "hasNext")
    j2 = ok(c.query({"cursorPaging": {"cursor": nxt}}), "second page")
    eq(j2["metadata"]["count"], 1, "the rest")
    eq(len({p["id"] for p in j["packages"] + j2["packages"]}), 101, "all packages once")
    j = ok(c.query({"cursorPaging": {"limit": 100}}))
    eq(j["metadata"]["count"], 100, "limit 100 is allowed")


# ===========================================================================
# Group 5: idempotency
# ===========================================================================

@test
def g5_replayed_create_is_identical():
    c = client()
    first = c.create([plan(SITE_JANE1)], external="idem", idem="create-1")
    p = created(first)
    eq(first.json.get("idempotencyKey"), "create-1", "idempotencyKey echoed")
    eq(instance(ok(c.get(p["id"]))["package"])["status"], "ENABLED", "delivered meanwhile")
    again = c.create([plan(SITE_JANE1)], external="idem", idem="create-1")
    eq(again.status, 200, "replay status")
    eq(again.body, first.body, "replay is the first answer byte for byte")
    other_body = c.create([plan(SITE_JANE2, P_LIGHT)], external="changed", idem="create-1")
    eq(other_body.body, first.body, "same key, different body: still the first answer")
    st = stats()
    eq(st["packages"], 1, "one package")
    eq(sum(st["instances"].values()), 1, "one instance")
    eq(qids(c, {}), [p["id"]], "query shows one package")
    # Another account has its own keys.
    bob = created(c.create([plan(SITE_BOB)], idem="create-1", account=BOB), "same key, other account")
    check(bob["id"] != p["id"], "other account got its own package")
    eq(stats()["packages"], 2, "two packages")


@test
def g5_key_reused_on_another_route_is_409():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, None, ONE_TIME)], idem="key-A"))
    iid = instance(p)["instanceId"]
    app_error(c.cancel_package(p["id"], {"idempotencyKey": "key-A"}), 409, "IDEMPOTENCY_KEY_REUSED",
              "same key on cancel package")
    app_error(c.create([plan(SITE_JANE2)], v=1, idem="key-A"), 409, "IDEMPOTENCY_KEY_REUSED", "same key on V1")
    app_error(c.cancel_instance(iid, {"idempotencyKey": "key-A"}), 409, "IDEMPOTENCY_KEY_REUSED", "on cancel inst")
    app_error(c.adjust(iid, {"catalogProductId": P_LIGHT, "idempotencyKey": "key-A"}), 409,
              "IDEMPOTENCY_KEY_REUSED", "on adjust")
    g = ok(c.get(p["id"]))["package"]
    eq([i["status"] for i in g["productInstances"]], ["ENABLED", "ENABLED"], "nothing canceled")
    eq(instance(g)["catalogProductId"], P_CORE, "nothing adjusted")
    eq(stats()["packages"], 1, "nothing created")
    # The same key on the same verb but another instance's path is another route too.
    other = instance(created(c.create([plan(SITE_JANE2)])))["instanceId"]
    ok(c.cancel_instance(iid, {"idempotencyKey": "cancel-key"}), "cancel with a key")
    app_error(c.cancel_instance(other, {"idempotencyKey": "cancel-key"}), 409, "IDEMPOTENCY_KEY_REUSED",
              "same key, other instance")


@test
def g5_every_mutation_echoes_and_replays():
    c = client()
    p = created(c.create([plan(None, P_LIGHT, "MONTH", 1), prod(P_SERVICE, None, ONE_TIME)]))
    iid, svc = (i["instanceId"] for i in p["productInstances"])
    steps = [
        ("assign", lambda k: c.assign(iid, SITE_JANE1, {"idempotencyKey": k})),
        ("adjust", lambda k: c.adjust(iid, {"catalogProductId": P_BUSINESS, "idempotencyKey": k})),
        ("unassign", lambda k: c.unassign(iid, {"idempotencyKey": k})),
        ("cancel instance", lambda k: c.cancel_instance(svc, {"idempotencyKey": k})),
        ("cancel package", lambda k: c.cancel_package(p["id"], {"idempotencyKey": k})),
    ]
    answers = []
    for name, fn in steps:
        key = "k-" + name.replace(" ", "-")
        r = fn(key)
        ok(r, name)
        eq(r.json.get("idempotencyKey"), key, "%s echoes idempotencyKey" % name)
        answers.append((name, fn, key, r.body))
        pause()
    final = ok(c.get(p["id"]))["package"]
    for name, fn, key, body in answers:
        r = fn(key)
        eq((r.status, r.body), (200, body), "%s replay is the first answer" % name)
    eq(ok(c.get(p["id"]))["package"], final, "replays changed nothing")


@test
def g5_replay_does_not_undo_later_changes():
    c = client()
    p = created(c.create([plan(SITE_JANE1, P_LIGHT)]))
    iid = instance(p)["instanceId"]
    first = c.adjust(iid, {"catalogProductId": P_BUSINESS, "idempotencyKey": "adj-1"})
    eq(instance(ok(first)["package"])["catalogProductId"], P_BUSINESS, "adjusted")
    ok(c.adjust(iid, {"catalogProductId": P_ELITE}), "adjust again without key")
    r = c.adjust(iid, {"catalogProductId": P_BUSINESS, "idempotencyKey": "adj-1"})
    eq(r.body, first.body, "replay answers the stored first answer")
    eq(instance(ok(c.get(p["id"]))["package"])["catalogProductId"], P_ELITE, "replay changed nothing")


@test
def g5_rejected_request_is_not_remembered():
    c = client()
    app_error(c.create([domain(SITE_JANE1)], idem="dom-1"), 428, "PRODUCT_NOT_SUPPORTED_ON_SITE", "domain first")
    created(c.create([plan(SITE_JANE1)]), "plan")
    d = created(c.create([domain(SITE_JANE1)], idem="dom-1"), "retry with the same key after fixing")
    eq(instance(d)["catalogProductId"], P_DOMAIN, "domain created")
    eq(stats()["packages"], 2, "packages")


@test
def g5_retry_after_lost_answer_returns_original_package():
    c = client()
    ok(c.admin("POST", "faults", {"pathPrefix": V2, "errorRate": 1, "after": True, "count": 1}), "add fault")
    r = c.create([plan(SITE_JANE1)], external="lost", idem="lost-answer")
    eq(r.status, 503, "the answer was lost")
    eq(r.body, b"", "injected 5xx has an empty body")
    eq(stats()["packages"], 1, "the create was applied")
    stored = ok(c.query({}))["packages"][0]
    r = c.create([plan(SITE_JANE1)], external="lost", idem="lost-answer")
    p = created(r, "retry with the same key")
    eq(r.json.get("idempotencyKey"), "lost-answer", "key echoed")
    eq(p["id"], stored["id"], "retry returns the original package")
    eq(instance(p)["instanceId"], instance(stored)["instanceId"], "same instance")
    eq(stats()["packages"], 1, "still one package")
    r2 = c.create([plan(SITE_JANE1)], external="lost", idem="lost-answer")
    eq(r2.body, r.body, "further retries answer the same")
    # Without the key a retry would be a new request (and here break a rule).
    app_error(c.create([plan(SITE_JANE1)]), 428, "PRODUCT_TYPE_ALREADY_ASSIGNED", "retry without key")


# ===========================================================================
# Group 6: account scoping
# ===========================================================================

@test
def g6_sibling_cannot_see_or_change():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, None, ONE_TIME)], external="jane"))
    iid, svc = (i["instanceId"] for i in p["productInstances"])
    before = ok(c.get(p["id"]))["package"]
    for acc, who in ((BOB, "sibling"), (TEAM, "team"), (OTHER, "other reseller")):
        app_error(c.get(p["id"], account=acc), 404, "PACKAGE_NOT_FOUND", "%s get" % who)
        app_error(c.cancel_package(p["id"], account=acc), 404, "PACKAGE_NOT_FOUND", "%s cancel package" % who)
        app_error(c.set_external(p["id"], "stolen", account=acc), 404, "PACKAGE_NOT_FOUND", "%s update ext" % who)
        app_error(c.cancel_instance(iid, account=acc), 428, "PRODUCT_INSTANCE_NOT_FOUND", "%s cancel inst" % who)
        app_error(c.adjust(iid, {"catalogProductId": P_LIGHT}, account=acc), 428, "PRODUCT_INSTANCE_NOT_FOUND",
                  "%s adjust" % who)
        app_error(c.unassign(iid, account=acc), 428, "PRODUCT_INSTANCE_NOT_FOUND", "%s unassign" % who)
        app_error(c.assign(svc, SITE_JANE2, account=acc), 428, "PRODUCT_INSTANCE_NOT_FOUND", "%s assign" % who)
    eq(ok(c.get(p["id"]))["package"], before, "nothing changed")


@test
def g6_sub_account_cannot_see_reseller_package():
    c = client()
    p = created(c.create([plan(SITE_RESELLER)], account=RESELLER))
    app_error(c.get(p["id"], account=JANE), 404, "PACKAGE_NOT_FOUND", "sub-account gets the reseller's package")
    app_error(c.cancel_instance(instance(p)["instanceId"], account=TEAM), 428, "PRODUCT_INSTANCE_NOT_FOUND",
              "team cancels the reseller's instance")
    eq(ok(c.get(p["id"], account=RESELLER))["package"]["id"], p["id"], "the reseller sees its own")


@test
def g6_reseller_sees_and_manages_sub_account_package():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, None, ONE_TIME)]))
    iid, svc = (i["instanceId"] for i in p["productInstances"])
    g = ok(c.get(p["id"], account=RESELLER), "reseller get")["package"]
    eq((g["id"], g["accountId"]), (p["id"], JANE), "reseller sees Jane's package")
    r = ok(c.adjust(iid, {"catalogProductId": P_BUSINESS}, account=RESELLER), "reseller adjusts")
    eq(find_inst(r["package"], iid)["catalogProductId"], P_BUSINESS, "adjusted by the reseller")
    r = ok(c.assign(svc, SITE_JANE2, account=RESELLER), "reseller assigns to the customer's site")
    eq(find_inst(r["package"], svc)["siteId"], SITE_JANE2, "assigned")
    ok(c.set_external(p["id"], "by-reseller", account=RESELLER), "reseller updates external id")
    ok(c.cancel_instance(svc, account=RESELLER), "reseller cancels an instance")
    g = ok(c.get(p["id"]))["package"]
    eq((g["externalId"], find_inst(g, svc)["status"], g["accountId"]), ("by-reseller", "CANCELED", JANE),
       "Jane sees the reseller's changes; owner unchanged")
    t = created(c.create([plan(SITE_TEAM3)], account=TEAM))
    eq(ok(c.get(t["id"], account=RESELLER))["package"]["accountId"], TEAM, "reseller sees the team's package")
    ok(c.cancel_package(t["id"], account=RESELLER), "reseller cancels the team's package")


@test
def g6_query_scope_is_the_reseller():
    c = client()
    ids = {}
    for acc, site in ((JANE, SITE_JANE1), (BOB, SITE_BOB), (TEAM, SITE_TEAM1), (RESELLER, SITE_RESELLER),
                      (OTHER, SITE_OTHER)):
        ids[acc] = created(c.create([plan(site)], account=acc))["id"]
        pause()
    mine = {ids[a] for a in (JANE, BOB, TEAM, RESELLER)}
    for acc in (JANE, BOB, TEAM, RESELLER):
        j = ok(c.query({}, account=acc))
        eq({p["id"] for p in j["packages"]}, mine, "query as %s returns the reseller's packages" % acc)
        eq(j["metadata"]["count"], 4, "count as %s" % acc)
    eq([p["id"] for p in ok(c.query({}, account=OTHER))["packages"]], [ids[OTHER]], "other reseller sees its own")
    eq([p["id"] for p in ok(c.query({"filter": {"accountId": {"$eq": BOB}}}, account=JANE))["packages"]],
       [ids[BOB]], "filter on a sub-account narrows")
    eq(ok(c.query({"filter": {"accountId": OTHER}}))["packages"], [], "another reseller's account filters to nothing")
    eq(ok(c.query({"filter": {"id": ids[OTHER]}}))["packages"], [], "another reseller's package id filters to nothing")


@test
def g6_other_resellers_site_is_site_not_found():
    c = client()
    app_error(c.create([plan(SITE_OTHER)]), 404, "SITE_NOT_FOUND", "Jane -> other reseller's site")
    app_error(c.create([plan(SITE_OTHER)], account=RESELLER), 404, "SITE_NOT_FOUND", "reseller -> other's site")
    app_error(c.create([plan(SITE_JANE1)], account=OTHER), 404, "SITE_NOT_FOUND", "other reseller -> Jane's site")
    p = created(c.create([plan(None)]))
    app_error(c.assign(instance(p)["instanceId"], SITE_OTHER), 404, "SITE_NOT_FOUND", "assign to other's site")
    app_error(c.assign(instance(p)["instanceId"], SITE_OTHER, account=RESELLER), 404, "SITE_NOT_FOUND",
              "reseller assigns to other's site")
    check("siteId" not in instance(ok(c.get(p["id"]))["package"]), "still floating")
    # The error names the caller's account, never the reseller that owns the site.
    for r in (c.create([plan(SITE_OTHER)]), c.assign(instance(p)["instanceId"], SITE_OTHER)):
        check(OTHER not in r.body.decode(), "SITE_NOT_FOUND reveals the owner's account id: %s" % r.short())
        check(JANE in r.json["message"], "SITE_NOT_FOUND names the caller: %s" % r.short())


# ===========================================================================
# Group 7: persistence across a restart
# ===========================================================================

@test
def g7_state_survives_restart():
    tmp = tempfile.mkdtemp(prefix="wixr-db-")
    db = os.path.join(tmp, "sandbox.db")
    srv = Server(db=db)
    try:
        srv.start()
        c = Client(srv)
        new_acc = "66666666-7777-4888-8999-aaaaaaaaaaaa"
        ok(c.admin("POST", "accounts", {"id": new_acc, "parentAccountId": RESELLER}), "add account")
        site = ok(c.admin("POST", "sites", {"accountId": new_acc}), "add site")["site"]["id"]
        a = created(c.create([plan(SITE_JANE1), domain(None)], external="persist-a", idem="persist-key"))
        b = created(c.create([plan(site)], account=new_acc, external="persist-b"))
        pb = created(c.create([prod(P_BOOSTER, None, recurring("MONTH", 1))] * 3))
        ok(c.cancel_instance(instance(a, 1)["instanceId"]), "cancel the domain")
        ok(c.set_external(b["id"], "persist-b2", account=new_acc), "update external id")
        before = {k: ok(c.get(p["id"], account=RESELLER))["package"] for k, p in (("a", a), ("b", b), ("pb", pb))}
        listing = ok(c.query({}))
        replay = c.create([plan(SITE_JANE1)], idem="persist-key").body
        c.close()
        eq(srv.stop(), 0, "exit status after SIGTERM")

        srv2 = Server(db=db)
        srv.cleanup()
        srv = srv2
        srv.start()
        c = Client(srv)
        for k, p in (("a", a), ("b", b), ("pb", pb)):
            eq(ok(c.get(p["id"], account=RESELLER), "get %s after restart" % k)["package"], before[k],
               "package %s after restart" % k)
        eq(ok(c.query({})), listing, "query after restart")
        eq(c.create([plan(SITE_JANE1)], idem="persist-key").body, replay, "idempotency key kept")
        app_error(c.create([plan(SITE_JANE1, P_LIGHT)]), 428, "PRODUCT_TYPE_ALREADY_ASSIGNED", "plan still live")
        app_error(c.create([prod(P_BOOSTER, None, recurring("MONTH", 1))]), 428, "PRODUCT_LIMIT_EXCEEDED",
                  "booster count kept")
        created(c.create([prod(P_SERVICE, site, ONE_TIME)], account=new_acc), "admin-added account and site kept")
        st = ok(c.admin("GET", "stats"))
        eq(st["packages"], 4, "package count")
        accounts = ok(c.admin("GET", "accounts"))["accounts"]
        eq(sorted(x["id"] for x in accounts).count(JANE), 1, "seed accounts not duplicated")
        c.close()
        eq(srv.stop(), 0, "second exit status")
    finally:
        srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


@test
def g7_one_process_per_state_file():
    tmp = tempfile.mkdtemp(prefix="wixr-db-")
    db = os.path.join(tmp, "sandbox.db")
    srv = Server(db=db)
    try:
        srv.start()
        cmd = [ARGS.wixr, "sandbox", "serve", "--db", db, "--listen", "127.0.0.1:0",
               "--port-file", os.path.join(tmp, "port2"), "--catalog", ARGS.catalog]
        t0 = time.time()
        second = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10)
        check(second.returncode != 0, "a second server on the same state file must fail, got exit 0")
        check(time.time() - t0 < 2, "the second server took %.1f s to give up" % (time.time() - t0))
        err = second.stderr.decode()
        want = "%s is in use by process %d (wixr sandbox serve)" % (db, srv.proc.pid)
        check(want in err and "WIX_BASE_URL=http://127.0.0.1:%d" % srv.port in err,
              "the refusal names the holder and its URL: %r" % err)
        eq(ok(Client(srv).admin("GET", "health"), "first server still serves"), {"ok": True}, "health")
    finally:
        srv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ===========================================================================
# Group 8: fault injection, rate limit, request log
# ===========================================================================

LOST_CONNECTION = (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionResetError,
                   BrokenPipeError, ConnectionAbortedError)


def add_fault(c, rule):
    r = c.admin("POST", "faults", rule)
    ok(r, "add fault %s" % json.dumps(rule))
    return r.json


@test
def g8_latency():
    c = client()
    add_fault(c, {"pathPrefix": QUERY, "latencyMs": 300})
    r = c.query({})
    ok(r, "delayed query")
    check(r.elapsed >= 0.3, "query took %.3f s, expected >= 0.3 s" % r.elapsed)
    r = c.get(UNKNOWN_GUID)
    eq(r.status, 404, "get not matched by the rule")
    check(r.elapsed < 0.25, "unmatched path delayed: %.3f s" % r.elapsed)
    # The delay holds up only its own connection.
    other = client()
    done = {}

    def slow():
        done["slow"] = Client(MAIN).query({})
    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.05)
    r = other.get(UNKNOWN_GUID)
    check(r.elapsed < 0.2, "a parallel request waited for the delayed one: %.3f s" % r.elapsed)
    t.join(5)
    check("slow" in done, "the delayed query did not finish")
    ok(done["slow"], "parallel delayed query")
    ok(c.admin("DELETE", "faults"))
    add_fault(c, {"method": "POST", "latencyMs": 100, "jitterMs": 100})
    r = c.query({})
    check(0.1 <= r.elapsed < 1.0, "latency with jitter: %.3f s" % r.elapsed)


@test
def g8_error_rate_gives_empty_5xx():
    c = client()
    add_fault(c, {"pathPrefix": V2, "errorRate": 1})
    r = c.create([plan(SITE_JANE1)])
    eq(r.status, 503, "default errorStatus")
    eq(r.body, b"", "empty body")
    eq(stats()["packages"], 0, "not applied without after")
    created(c.create([plan(SITE_JANE1)], v=1), "V1 path not matched by the V2 prefix")
    ok(c.admin("DELETE", "faults"))
    add_fault(c, {"method": "GET", "errorRate": 1, "errorStatus": 500})
    r = c.get(UNKNOWN_GUID)
    eq((r.status, r.body), (500, b""), "errorStatus 500")
    ok(c.query({}), "POST not matched by method GET")
    r = c.admin("POST", "faults", {"errorRate": 2})
    eq(r.status, 400, "errorRate out of range")
    r = c.admin("POST", "faults", {"errorRate": 0.5, "errorStatus": 404})
    eq(r.status, 400, "errorStatus outside 500-599")


@test
def g8_throttle_gives_429_with_retry_after():
    c = client()
    add_fault(c, {"pathPrefix": QUERY, "throttleRate": 1, "retryAfter": 7})
    r = c.query({})
    eq(r.status, 429, "throttled")
    eq(r.headers.get("retry-after"), "7", "Retry-After")
    ok(c.admin("DELETE", "faults"))
    add_fault(c, {"throttleRate": 1})
    r = c.create([plan(SITE_JANE1)])
    eq(r.status, 429, "throttled create")
    eq(r.headers.get("retry-after"), "1", "default Retry-After")
    eq(stats()["packages"], 0, "throttled create not applied")


@test
def g8_drop_closes_connection():
    c = client()
    add_fault(c, {"pathPrefix": QUERY, "dropRate": 1, "count": 1})
    victim = client()
    try:
        r = victim.query({})
        raise TestFailure("expected the connection to close without an answer, got %s" % r.short())
    except LOST_CONNECTION:
        pass
    victim.close()
    ok(c.query({}), "next request answered (count 1 used up)")
    eq(ok(c.admin("GET", "health")), {"ok": True}, "server healthy")


@test
def g8_count_limits_firings():
    c = client()
    add_fault(c, {"pathPrefix": QUERY, "errorRate": 1, "count": 2})
    eq([c.query({}).status for _ in range(4)], [503, 503, 200, 200], "two failures then answers")
    faults = ok(c.admin("GET", "faults"))["faults"]
    eq(len(faults), 1, "one rule listed")
    eq(faults[0].get("remaining"), 0, "remaining after two firings")
    eq(faults[0].get("pathPrefix"), QUERY, "pathPrefix listed")
    ok(c.admin("DELETE", "faults"), "clear")
    eq(ok(c.admin("GET", "faults"))["faults"], [], "cleared")


@test
def g8_after_applies_then_fails():
    c = client()
    p = created(c.create([plan(SITE_JANE1), prod(P_SERVICE, None, ONE_TIME)]))
    iid = instance(p)["instanceId"]
    add_fault(c, {"method": "DELETE", "pathPrefix": INST, "errorRate": 1, "after": True, "count": 1})
    r = c.cancel_instance(iid)
    eq((r.status, r.body), (503, b""), "answer lost")
    eq(find_inst(ok(c.get(p["id"]))["package"], iid)["status"], "CANCELED", "cancel applied anyway")
    ok(c.admin("DELETE", "faults"))
    add_fault(c, {"pathPrefix": V2, "dropRate": 1, "after": True, "count": 1})
    victim = client()
    try:
        r = victim.create([plan(SITE_JANE2)], external="dropped-after")
        raise TestFailure("expected a dropped connection, got %s" % r.short())
    except LOST_CONNECTION:
        pass
    victim.close()
    j = ok(c.query({"filter": {"externalId": "dropped-after"}}))
    eq(j["metadata"]["count"], 1, "dropped create was applied")
    eq(stats()["packages"], 2, "packages")


@test
def g8_rate_limit():
    c = client()
    s = ok(c.admin("POST", "settings", {"rateLimit": True, "requestsPerMinute": 5}), "enable rate limit")
    eq((s["rateLimit"], s["requestsPerMinute"]), (True, 5), "settings echoed")
    statuses = [c.query({}).status for _ in range(5)]
    eq(statuses, [200] * 5, "first five")
    r = c.query({})
    app_error(r, 429, "RESOURCE_EXHAUSTED", "sixth request")
    ra = r.headers.get("retry-after")
    check(ra is not None and ra.isdigit() and 1 <= int(ra) <= 60, "Retry-After: %r" % ra)
    app_error(c.create([plan(SITE_JANE1)]), 429, "RESOURCE_EXHAUSTED", "a create is limited too")
    eq(stats()["packages"], 0, "limited create not applied")
    eq(c.query({}, account=BOB).status, 200, "limit is per account")
    eq(ok(c.admin("GET", "health")), {"ok": True}, "admin API not limited")
    ok(c.admin("POST", "settings", {"rateLimit": False}), "disable")
    eq(c.query({}).status, 200, "after disabling")


@test
def g8_request_log():
    c = client()
    created(c.create([plan(SITE_JANE1)], idem="log-key"))
    c.get(UNKNOWN_GUID, account=BOB)
    add_fault(c, {"pathPrefix": QUERY, "errorRate": 1, "count": 1})
    c.query({})
    ok(c.admin("GET", "health"))
    log = ok(c.admin("GET", "requests"), "request log")
    reqs = log["requests"]
    eq(len(reqs), 3, "three API requests logged (admin calls are not)")
    eq(log["last"], reqs[-1]["seq"], "last")
    eq([r["seq"] for r in reqs], list(range(reqs[0]["seq"], reqs[0]["seq"] + 3)), "consecutive seq")
    r0, r1, r2 = reqs
    eq((r0["method"], r0["path"], r0["accountId"], r0.get("idempotencyKey"), r0["status"]),
       ("POST", V2, JANE, "log-key", 200), "create entry")
    check("fault" not in r0 or not r0["fault"], "no fault on the create")
    parse_date(r0["time"])
    eq((r1["method"], r1["path"], r1["accountId"], r1["status"]), ("GET", "%s/%s" % (V1, UNKNOWN_GUID), BOB, 404),
       "get entry")
    check("idempotencyKey" not in r1, "no key on the get")
    eq((r2["method"], r2["path"], r2["status"]), ("POST", QUERY, 503), "faulted entry")
    check(r2.get("fault"), "fault named on the faulted entry: %r" % r2)
    since = ok(c.admin("GET", "requests?since=%d" % r0["seq"]))["requests"]
    eq([r["seq"] for r in since], [r1["seq"], r2["seq"]], "since")
    lim = ok(c.admin("GET", "requests?since=0&limit=1"))["requests"]
    eq([r["seq"] for r in lim], [r0["seq"]], "limit")
    eq(stats()["requests"], 3, "stats.requests")


# ===========================================================================
# Group 9: hostile input
# ===========================================================================

def raw_exchange(port, data, read_timeout=5.0):
    """Sends raw bytes on a fresh socket.

    Returns (reply bytes, closed): closed is False when the server neither
    answered completely nor closed the connection within read_timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    deadline = time.time() + read_timeout
    chunks = []
    closed = False
    try:
        try:
            s.sendall(data)
        except OSError:
            return b"", True
        while time.time() < deadline:
            s.settimeout(max(0.01, deadline - time.time()))
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                closed = True
                break
            if not b:
                closed = True
                break
            chunks.append(b)
        return b"".join(chunks), closed
    finally:
        s.close()


@test
def g9_huge_body_is_413_and_server_survives():
    c = client()
    big = b'{"products": [], "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    try:
        r = c.call("POST", V2, big, timeout=30)
        eq(r.status, 413, "10 MB body")
    except LOST_CONNECTION as e:
        raise TestFailure("10 MB body: connection lost instead of a 413 (%s)" % type(e).__name__)
    c.close()
    r = c.call("POST", V2, b'{"pad": "' + b"y" * (1024 * 1024 + 10) + b'"}')
    eq(r.status, 413, "just over 1 MiB")
    eq(stats()["packages"], 0, "nothing created")
    created(client().create([plan(SITE_JANE1)]), "server still answers")
    eq(ok(client().admin("GET", "health")), {"ok": True}, "health")


@test
def g9_deep_json_is_400():
    c = client()

    def nested(depth):
        # the body object is level 1; "x" adds depth - 1 array levels
        return ('{"products": [{"catalogProductId": "%s", "countryCode": "DE"}], "x": %s%s}'
                % (P_SERVICE, "[" * (depth - 1), "]" * (depth - 1))).encode()
    violation(c.call("POST", V2, nested(1000)), "body", "1000-deep JSON")
    violation(c.call("POST", V2, b"[" * 100000 + b"]" * 100000), "body", "100000-deep arrays")
    violation(c.call("POST", QUERY, b'{"query": ' + b'{"a": ' * 500 + b"1" + b"}" * 501), "body", "deep query")
    violation(c.call("POST", V2, nested(65)), "body", "65-deep JSON")
    created(c.call("POST", V2, nested(64)), "64-deep JSON is fine")
    eq(ok(c.admin("GET", "health")), {"ok": True}, "health")


@test
def g9_slowloris_holds_up_only_itself():
    port = MAIN.port
    slow = socket.create_connection(("127.0.0.1", port), timeout=5)
    slow_body = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        slow.sendall(b"POST /resellers/v1/packages/query HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_body.sendall(("POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: k\r\nwix-account-id: %s\r\n"
                           "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"products\"" % (V2, JANE))
                          .encode())
        c = client()
        header = b"X-Slow: " + b"a" * 20 + b"\r\n"
        worst = 0.0
        for k in range(12):
            slow.sendall(header[k % len(header):k % len(header) + 1])
            r = c.query({})
            ok(r, "normal client while the slow ones dribble")
            worst = max(worst, r.elapsed)
            time.sleep(0.1)
        check(worst < 0.5, "a normal request waited %.3f s behind the slow clients" % worst)
        created(c.create([plan(SITE_JANE1)]), "create while the slow clients hang")
    finally:
        slow.close()
        slow_body.close()
    eq(ok(client().admin("GET", "health")), {"ok": True}, "health")
    eq(stats()["packages"], 1, "the partial create did nothing")


@test
def g9_unknown_paths_and_methods():
    c = client()
    pid = created(c.create([plan(None)]))["id"]
    iid = instance(ok(c.get(pid))["package"])["instanceId"]
    for path in ("/", "/nope", "/resellers", "/resellers/v3/packages", "/resellers/v1/things",
                 "/resellers/v1/packages/a/b/c/d", "/resellers/v1/packages/update/%s" % pid,
                 "/resellers/v1/packages/update/%s/x/y" % pid,
                 "/resellers/v1/packages/product-instances/%s/%s/extra" % (iid, SITE_JANE1),
                 "/v1/packages", "/RESELLERS/v1/packages/%s" % pid):
        app_error(c.call("GET", path), 404, "NOT_FOUND", "GET %s" % path)
    eq(c.call("POST", "/__admin/nothing").status, 404, "unknown admin path")
    for method, path in (("GET", V2), ("PUT", V2), ("DELETE", V2), ("GET", V1), ("PATCH", V1),
                         ("PUT", "%s/%s" % (V1, pid)), ("POST", "%s/%s" % (V1, pid)),
                         ("PATCH", "%s/%s" % (V1, pid)),
                         ("GET", "%s/update/%s/x" % (V1, pid)), ("POST", "%s/update/%s/x" % (V1, pid)),
                         ("GET", "%s/%s" % (INST, iid)), ("POST", "%s/%s" % (INST, iid)),
                         ("PUT", "%s/%s" % (INST, iid)),
                         ("GET", "%s/%s/unassign" % (INST, iid)), ("DELETE", "%s/%s/%s" % (INST, iid, SITE_JANE1))):
        r = c.call(method, path, {} if method in ("POST", "PUT", "PATCH") else None)
        eq(r.status, 405, "%s %s" % (method, path))
    g = ok(c.get(pid))["package"]
    eq(instance(g)["status"], "ENABLED", "nothing changed")


@test
def g9_garbage_request_lines():
    port = MAIN.port
    # A request line led by a NUL byte: run it alongside the others, it may
    # only be closed by the server's 10 s idle timeout.
    nul = {}

    def nul_case():
        t0 = time.time()
        nul["reply"], nul["closed"] = raw_exchange(port, b"\x00\x01\x02\x03\xff\xfe\r\n\r\n", read_timeout=13.0)
        nul["elapsed"] = time.time() - t0
    t = threading.Thread(target=nul_case)
    t.start()
    cases = (b"GARBAGE\r\n\r\n", b"\xff\xfe\r\n\r\n", b"GET\r\n\r\n", b"ABC DEF\r\n\r\n",
             b"GET /__admin/health HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
             b"POST /resellers/v1/packages/query HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
             b"GET " + b"/a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    for data in cases:
        reply, closed = raw_exchange(port, data, read_timeout=3.0)
        if reply:
            m = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
            check(m is not None, "reply to %r is not HTTP: %r" % (data[:30], reply[:80]))
            code = int(m.group(1))
            check(400 <= code < 500, "garbage %r answered %d" % (data[:30], code))
        else:
            check(closed, "garbage %r: neither answered nor closed within 3 s" % data[:30])
        eq(ok(client().admin("GET", "health")), {"ok": True}, "health after %r" % data[:30])
    t.join(15)
    check(nul.get("closed") or nul.get("reply"), "NUL-led request line: connection neither answered nor closed")
    if nul.get("reply"):
        check(re.match(rb"HTTP/1\.[01] 4\d\d", nul["reply"]), "NUL-led request: %r" % nul["reply"][:60])
    eq(ok(client().admin("GET", "health")), {"ok": True}, "health after garbage")


@test
def g9_request_id_on_every_answer():
    c = client()
    pid = created(c.create([plan(SITE_JANE1)], idem="rid"))["id"]
    answers = [
        ("200", c.get(pid)),
        ("400", c.get("bad-id")),
        ("401", c.call("GET", "%s/%s" % (V1, pid), auth=None)),
        ("403", c.get(pid, account=None)),
        ("404 account", c.get(pid, account=UNKNOWN_GUID)),
        ("404 path", c.call("GET", "/nope")),
        ("405", c.call("PUT", V2, {})),
        ("409", c.cancel_package(pid, {"idempotencyKey": "rid"})),
        ("428", c.create([plan(SITE_JANE1, P_LIGHT)])),
        ("admin", c.admin("GET", "health")),
    ]
    add_fault(c, {"pathPrefix": QUERY, "errorRate": 1, "count": 1})
    answers.append(("503 injected", c.query({})))
    add_fault(c, {"pathPrefix": QUERY, "throttleRate": 1, "count": 1})
    answers.append(("429 injected", c.query({})))
    big = client()
    answers.append(("413", big.call("POST", V2, b'{"x": "' + b"z" * (2 * 1024 * 1024) + b'"}')))
    big.close()
    missing = ["%s (status %s)" % (what, r.status) for what, r in answers if not r.headers.get("x-wix-request-id")]
    eq(missing, [], "answers without x-wix-request-id")
    ids = [r.headers["x-wix-request-id"] for _, r in answers if r.headers.get("x-wix-request-id")]
    eq(len(set(ids)), len(ids), "request ids are unique")


@test
def g9_many_concurrent_clients():
    created(client().create([plan(SITE_JANE1)]))
    errors = []

    def worker(n):
        cl = client(JANE if n % 2 else BOB)
        try:
            for _ in range(5):
                r = cl.query({})
                if r.status != 200 or r.json["metadata"]["count"] != 1:
                    errors.append(r.short())
        except Exception as e:  # collected and reported below
            errors.append(repr(e))
        finally:
            cl.close()
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    eq(errors[:3], [], "errors from concurrent clients")
    eq(stats()["requests"], 1 + 200, "every request logged")


@test
def g9_health_still_ok_and_sigterm_exit_zero():
    eq(ok(client().admin("GET", "health")), {"ok": True}, "health")
    srv = Server().start()
    try:
        eq(ok(Client(srv).admin("GET", "health")), {"ok": True}, "fresh server health")
        eq(srv.stop(), 0, "exit status after SIGTERM")
    finally:
        srv.cleanup()


# ===========================================================================
# Group 10: request fields the protobuf way, unknown fields, methods, admin keys
# ===========================================================================

def snake_plan(site=None, pid=P_CORE, unit="YEAR", count=1):
    p = {"catalog_product_id": pid, "country_code": "DE",
         "billing_info": {"type": "RECURRING", "cycle_duration": {"unit": unit, "count": count}}}
    if site is not None:
        p["site_id"] = site
    return p


@test
def g10_proto_field_names_are_accepted():
    c = client()
    r = c.call("POST", V2, {"external_id": "snake-1", "idempotency_key": "snake-key",
                            "products": [snake_plan(SITE_JANE1)]})
    body = ok(r, "create with proto names")
    eq(body.get("idempotencyKey"), "snake-key", "idempotency_key is the idempotency key")
    p = body["package"]
    eq(p.get("externalId"), "snake-1", "external_id")
    inst = instance(p)
    eq(inst.get("siteId"), SITE_JANE1, "site_id assigns the site (not a floating instance)")
    eq(inst["catalogProductId"], P_CORE, "catalog_product_id")
    eq(inst["countryCode"], "DE", "country_code")
    eq(inst["billingInfo"], recurring("YEAR", 1), "billing_info.cycle_duration")
    check("x-wixr-warning" not in r.headers, "no warning for proto names: %r" % r.headers.get("x-wixr-warning"))
    eq(c.call("POST", V2, {"idempotency_key": "snake-key", "products": [snake_plan(SITE_JANE1)]}).body, r.body,
       "a repeat with the same idempotency_key replays")
    v1 = ok(c.call("POST", V1, {"products": [{"catalog_product_id": P_SERVICE, "site_id": SITE_JANE2,
                                               "billing_info": {"type": "ONE_TIME"}}]}), "V1 create")
    eq(instance(v1["package"]).get("siteId"), SITE_JANE2, "V1 site_id")
    a = ok(c.adjust(inst["instanceId"], {"catalog_product_id": P_BUSINESS,
                                         "billing_info": {"type": "RECURRING",
                                                          "cycle_duration": {"unit": "MONTH", "count": 1}}}),
           "adjust with proto names")["package"]
    eq(instance(a)["catalogProductId"], P_BUSINESS, "adjust catalog_product_id")
    eq(instance(a)["billingInfo"], recurring("MONTH", 1), "adjust billing_info")
    q = ok(c.query({"cursor_paging": {"limit": 1}, "sort": [{"field_name": "createdDate", "order": "DESC"}]}),
           "query with proto names")
    eq(len(q["packages"]), 1, "cursor_paging.limit")
    eq(q["packages"][0]["id"], v1["package"]["id"], "sort field_name createdDate DESC")


@test
def g10_both_spellings_of_a_field_are_400():
    c = client()
    r = c.create([dict(plan(SITE_JANE1), site_id=SITE_JANE2)])
    violation(r, "products[0].siteId", "siteId and site_id")
    check("site_id" in r.violations[0]["description"], "names both spellings: %r" % r.violations)
    violation(c.call("POST", V2, {"products": [plan(None)], "externalId": "a", "external_id": "b"}), "externalId",
              "externalId and external_id")
    eq(ok(c.admin("GET", "stats"))["packages"], 0, "nothing created")


@test
def g10_unknown_fields_are_ignored_and_named():
    c = client()
    since = ok(c.admin("GET", "requests"))["last"]
    p = dict(plan(SITE_JANE1), colour="red")
    r = c.call("POST", V2, {"products": [p], "sku": 1, "filter": {"x": 1}})
    ok(r, "unknown fields are answered normally")
    w = r.headers.get("x-wixr-warning", "")
    for f in ("products[0].colour", "sku", "filter"):
        check(f in w, "x-wixr-warning names %s: %r" % (f, w))
    q = c.query({"filter": {"externalId": "nope"}, "limt": 3})
    ok(q, "query")
    w2 = q.headers.get("x-wixr-warning", "")
    check("query.limt" in w2 and "externalId" not in w2,
          "a query's unknown member is named, its filter's keys are data: %r" % w2)
    log = ok(c.admin("GET", "requests?since=%d" % since))["requests"]
    eq([x.get("warning") for x in log], [w, w2], "the request log carries the warnings")
    plain = c.create([plan(SITE_JANE2)])
    check("x-wixr-warning" not in ok(plain) and "x-wixr-warning" not in plain.headers, "no warning when all known")


@test
def g10_strict_answers_unknown_fields_400():
    srv = Server("--strict").start()
    try:
        c = client(server=srv)
        r = c.create([dict(plan(SITE_JANE1), sitId=SITE_JANE2)])
        violation(r, "products[0].sitId", "strict: unknown product field")
        d = r.violations[0]["description"]
        check("did you mean siteId" in d, "a did-you-mean: %r" % d)
        eq(r.violations[0]["violatedRule"], "UNKNOWN_FIELD", "rule")
        violation(c.query({"cursorPagin": {}}), "query.cursorPagin", "strict: unknown query field")
        eq(ok(c.admin("GET", "stats"))["packages"], 0, "nothing created")
        ok(c.create([snake_plan(SITE_JANE1)]), "strict still takes proto names")
        eq(ok(c.admin("GET", "settings"))["strict"], True, "settings show strict")
        c.close()
    finally:
        srv.cleanup()
    # the admin API switches it on a running emulator; a reset goes back to how it started
    c = client()
    eq(ok(c.admin("POST", "settings", {"strict": True}))["strict"], True, "strict on")
    violation(c.create([plan(SITE_JANE1)], extra={"sku": 1}), "sku", "strict via settings")
    ok(c.admin("POST", "reset"))
    eq(ok(c.admin("GET", "settings"))["strict"], False, "reset restores")
    ok(c.create([plan(SITE_JANE1)], extra={"sku": 1}), "lenient again")


@test
def g10_wrong_method_is_405_with_allow():
    c = client()
    pid = created(c.create([plan(None)]))["id"]
    iid = instance(ok(c.get(pid))["package"])["instanceId"]
    for method, path, allow in (("GET", QUERY, "POST"), ("DELETE", QUERY, "POST"), ("GET", V2, "POST"),
                                ("PUT", "%s/%s" % (V1, pid), "GET, DELETE"),
                                ("GET", "%s/%s" % (INST, iid), "PATCH, DELETE"),
                                ("GET", "%s/%s/unassign" % (INST, iid), "PATCH"),
                                ("POST", "%s/update/%s/x" % (V1, pid), "PATCH")):
        r = c.call(method, path)
        app_error(r, 405, "METHOD_NOT_ALLOWED", "%s %s" % (method, path))
        eq(r.headers.get("allow"), allow, "Allow of %s %s" % (method, path))
        check(method in r.json["message"] and allow in r.json["message"], "message: %r" % r.json["message"])
    ok(c.query({}), "POST query still works")


@test
def g10_admin_refuses_unknown_keys():
    c = client()
    cases = (
        ("accounts", {"parentAcountId": RESELLER}, "parentAcountId", "parentAccountId"),
        ("sites", {"acountId": JANE}, "acountId", "accountId"),
        ("faults", {"errorrate": 1}, "errorrate", "errorRate"),
        ("settings", {"ratelimit": True}, "ratelimit", "rateLimit"),
        ("reset", {"all": True}, "all", None),
    )
    for what, body, field, near in cases:
        r = c.admin("POST", what, body)
        violation(r, field, "admin %s %r" % (what, body))
        d = r.violations[0]["description"]
        check((near is None or "did you mean %s?" % near in d), "admin %s: did-you-mean %s: %r" % (what, near, d))
    p = created(c.create([plan(None)]))
    iid = instance(p)["instanceId"]
    violation(c.admin("POST", "instances/%s/status" % iid, {"status": "FAILED", "failure": {"cod": "UNKNOWN"}}),
              "failure.cod", "status failure key")
    violation(c.admin("POST", "accounts", {"name": 5}), "name", "a name that is not a string")
    violation(c.admin("POST", "faults", {"after": "yes"}), "after", "after that is not a boolean")
    violation(c.admin("POST", "settings", {"seed": "7"}), "seed", "seed that is not a number")
    eq(ok(c.admin("GET", "faults"))["faults"], [], "no fault added")
    eq(ok(c.admin("GET", "settings"))["rateLimit"], False, "settings unchanged")
    eq(instance(ok(c.get(p["id"]))["package"])["status"], "ENABLED", "status unchanged")


# ===========================================================================
# Group 11: one huge query, trickling clients (the emulator's lock and slots)
# ===========================================================================

BIG_PACKAGES = 100000


def big_server(*extra):
    """A server whose state file holds BIG_PACKAGES of Jane's packages, one instance each, written
    straight into SQLite (creating them over HTTP would take minutes). Returns (server, a package id)."""
    import sqlite3
    import uuid
    srv = Server(*extra, db="")
    srv.db = os.path.join(srv.dir, "big.db")
    srv.start()
    srv.stop()
    con = sqlite3.connect(srv.db)
    t0 = 1700000000000
    con.executemany("INSERT INTO packages(seq, id, account_id, parent_account_id, external_id, created, updated)"
                    " VALUES(?, ?, ?, ?, ?, ?, ?)",
                    ((i + 1000, str(uuid.UUID(int=i + 1)), JANE, RESELLER, "ext-%d" % i, t0 + i, t0 + i)
                     for i in range(BIG_PACKAGES)))
    con.executemany("INSERT INTO instances(instance_id, package_seq, pos, site_id, catalog_product_id, product_type,"
                    " status, billing_type, billing_unit, billing_count, country_code, created, updated)"
                    " VALUES(?, ?, 0, NULL, ?, 'premium-plan', 'ENABLED', 'RECURRING', 'YEAR', 1, 'DE', ?, ?)",
                    ((str(uuid.UUID(int=10 ** 12 + i)), i + 1000, P_CORE, t0 + i, t0 + i)
                     for i in range(BIG_PACKAGES)))
    con.commit()
    con.close()
    srv.log.close()
    srv.start()
    return srv, str(uuid.UUID(int=5))


@test
def g11_huge_query_is_refused_and_does_not_hold_up_others():
    srv, pid = big_server()
    try:
        huge = {"$or": [{"productInstances.catalogProductId": {"$hasSome": ["no-%d-%d" % (j, i) for i in range(1000)]}}
                        for j in range(50)]}
        done = {}

        def run_query():
            try:
                done["r"] = Client(srv).call("POST", QUERY, {"query": {"filter": huge}}, timeout=10)
            except Exception as e:  # noqa: BLE001 (reported below)
                done["r"] = e
        t = threading.Thread(target=run_query)
        t0 = time.time()
        t.start()
        worst = 0.0
        while t.is_alive() and time.time() - t0 < 10:
            r = Client(srv).get(pid)
            ok(r, "a Get during the huge query")
            worst = max(worst, r.elapsed)
        t.join()
        spent = time.time() - t0
        r = done["r"]
        check(isinstance(r, Resp), "the huge query got no answer within 10 s: %r" % (r,))
        violation(r, "query.filter", "a filter of 50 x 1000 values over %d packages" % BIG_PACKAGES)
        eq(r.violations[0]["violatedRule"], "QUERY_TOO_COSTLY", "rule")
        check("--query-budget" in r.violations[0]["description"], "names the budget: %r" % r.violations[0])
        check(spent < 2, "the refusal took %.3f s" % spent)
        check(worst < 0.2, "a Get waited %.3f s behind the huge query" % worst)
        # A plain filter over every package is refused too when the answer needs all of it (offset paging
        # counts the total); a cursor page of it evaluates the page's packages only, and is answered.
        # Bounded by a top-level createdDate range it is answered, evaluated in full on what the range leaves.
        plain = {"externalId": {"$ne": "ext-3"}}
        violation(Client(srv).query({"filter": plain, "paging": {"limit": 5}}), "query.filter",
                  "$ne over %d packages, offset paging" % BIG_PACKAGES)
        eq(ok(Client(srv).query({"filter": plain, "cursorPaging": {"limit": 5}}))["metadata"]["count"], 5,
           "a cursor page of the same")
        bounded = dict(plain, createdDate={"$lt": "2023-11-14T22:13:20.010Z"})  # the first 10
        body = ok(Client(srv).query({"filter": bounded, "paging": {"limit": 50}}), "a bounded filter")
        eq(body["metadata"]["total"], 9, "ten in the range, less ext-3")
        # No filter: no rendering beyond the page, not budgeted.
        eq(ok(Client(srv).query({"paging": {"limit": 1}}))["metadata"]["total"], BIG_PACKAGES, "all, unfiltered")
    finally:
        srv.cleanup()


@test
def g11_a_slow_query_within_the_budget_does_not_hold_up_others():
    """A filter the budget lets through may still take seconds (here the budget is raised): it gives the
    emulator's lock to waiting requests between chunks of packages, so they wait a chunk, not the query."""
    srv, pid = big_server("--query-budget", "1000000000")
    try:
        values = ["no-%d" % i for i in range(399)] + [P_CORE]  # 400 values compared on each package
        slow = {"query": {"filter": {"productInstances.catalogProductId": {"$hasSome": values}},
                          "paging": {"limit": 5}}}
        done = {}

        def run_query():
            t0 = time.time()
            try:
                done["r"] = Client(srv).call("POST", QUERY, slow, timeout=120)
            except Exception as e:  # noqa: BLE001 (reported below)
                done["r"] = e
            done["took"] = time.time() - t0
        t = threading.Thread(target=run_query)
        t.start()
        time.sleep(0.1)
        gets, worst, made = 0, 0.0, None
        while t.is_alive():
            r = Client(srv).get(pid)
            ok(r, "a Get during the slow query")
            gets += 1
            worst = max(worst, r.elapsed)
            if made is None:
                r = Client(srv).create([plan(None)])
                made = created(r, "a create during the slow query")
                worst = max(worst, r.elapsed)
        t.join()
        r, took = done["r"], done["took"]
        check(isinstance(r, Resp), "the slow query got no answer: %r" % (r,))
        body = ok(r, "the slow query, within its budget")
        eq(body["metadata"]["total"], BIG_PACKAGES, "every package matches the last value")
        eq(len(body["packages"]), 5, "the page")
        check(took > 1.0, "the query is slow enough to tell (%.2f s)" % took)
        check(gets >= 5 and made, "requests were answered while the query ran (%d Gets)" % gets)
        check(worst < 0.25, "a request waited %.3f s behind a query of %.2f s" % (worst, took))
        eq(ok(Client(srv).get(made["id"]))["package"]["id"], made["id"], "the create made during the query stands")
    finally:
        srv.cleanup()


@test
def g11_query_budget_option():
    srv = Server("--query-budget", "1000").start()
    try:
        c = Client(srv)
        ids = [created(c.create([plan(None)]))["id"] for _ in range(12)]
        r = c.query({"filter": {"productInstances.status": {"$hasSome": ["ENABLED"]}}})
        violation(r, "query.filter", "12 packages x (100 + 2) over a budget of 1000")
        check("1000" in r.violations[0]["description"], "the budget in the message: %r" % r.violations[0])
        body = ok(c.query({"filter": {"id": ids[3], "productInstances.status": {"$hasSome": ["ENABLED"]}}}),
                  "an id $eq leaves one package to evaluate")
        eq([p["id"] for p in body["packages"]], [ids[3]], "the one")
    finally:
        srv.cleanup()
    for opt in ("--query-budget", "--request-timeout", "--max-connections-per-ip", "--max-connections"):
        run = Folder().run("sandbox", "serve", opt, "0", "--db", ":memory:", timeout=10)
        check(run.rc == 2 and opt in run.err, "%s 0 is a usage error: rc %r, %r" % (opt, run.rc, run.err))


def trickle_open(port, sources, per_source):
    """Opens per_source connections from each loopback source address, each sending the first byte of a
    request line; returns the sockets (the caller closes them)."""
    socks = []
    for src in sources:
        for _ in range(per_source):
            s = socket.socket()
            s.settimeout(5)
            s.bind((src, 0))
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"G")
            except OSError:
                s.close()
                continue
            socks.append(s)
    return socks


def trickle_tick(socks, i):
    for s in socks:
        try:
            s.sendall(b"GET /resellers/v1/packages/x HTTP/1.1\r\nX: "[i % 40 + 1:i % 40 + 2] or b"a")
        except OSError:
            pass


def served_within(srv, seconds):
    """Asks for health until answered; returns the time it took (or fails after seconds)."""
    t0 = time.time()
    last = None
    while time.time() - t0 < seconds:
        try:
            c = Client(srv)
            r = c.call("GET", "/__admin/health", timeout=max(0.5, seconds - (time.time() - t0)))
            c.close()
            if r.status == 200:
                return time.time() - t0
            last = r.short()
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(0.05)
    raise TestFailure("a normal client was not served within %.1f s (last: %s)" % (seconds, last))


@test
def g11_trickling_clients_from_one_address_do_not_lock_others_out():
    srv = Server().start()
    socks = []
    try:
        socks = trickle_open(srv.port, ["127.0.0.2"], 520)
        trickle_tick(socks, 0)
        took = served_within(srv, 3)
        check(took < 1, "served after %.2f s" % took)
        time.sleep(0.3)
        alive = 0
        for s in socks:
            try:
                s.setblocking(False)
                alive += s.recv(1) == b""  # closed by the server
            except BlockingIOError:
                pass
            except OSError:
                alive += 1
        check(alive >= 520 - 256, "at most 256 connections from one address kept: %d of 520 closed" % alive)
    finally:
        for s in socks:
            s.close()
        srv.cleanup()


@test
def g11_max_connections_caps_them_all():
    """--max-connections N: N connections from several addresses are kept, the next is turned away
    on arrival, and served again once one of them closes."""
    srv = Server("--max-connections", "6", "--max-connections-per-ip", "6").start()
    socks = []
    try:
        socks = trickle_open(srv.port, ["127.0.0.2", "127.0.0.3"], 3)
        trickle_tick(socks, 0)
        time.sleep(0.3)
        check(turned_away(srv), "a 7th connection was served with 6 allowed")
        socks.pop().close()
        took = served_within(srv, 3)
        check(took < 2, "served after %.2f s once one closed" % took)
    finally:
        for s in socks:
            s.close()
        srv.cleanup()


def turned_away(srv):
    """True when a fresh client gets no answer (the server closes it on arrival)."""
    try:
        c = Client(srv)
        r = c.call("GET", "/__admin/health", timeout=2)
        c.close()
        return r.status != 200
    except (OSError, http.client.HTTPException):
        return True


@test
def g11_trickling_clients_from_many_addresses_are_cut_at_the_request_timeout():
    """The request deadline is kept by a thread of its own, not by anything that needs a connection slot:
    with every slot held by trickling clients a fresh client is turned away, then served once the
    deadline has cut them."""
    srv = Server("--request-timeout", "3000").start()
    socks = []
    try:
        sources = ["127.0.0.%d" % k for k in range(2, 11)]
        t0 = time.time()
        socks = trickle_open(srv.port, sources, 58)  # 522: past the 512 connections in all
        check(len(socks) >= 500, "opened %d trickling connections" % len(socks))
        check(turned_away(srv), "every slot taken (%d connections in %.2f s): a fresh client is turned away"
              % (len(socks), time.time() - t0))
        stop = []

        def trickle():
            i = 1
            while not stop:
                trickle_tick(socks, i)
                i += 1
                time.sleep(0.5)
        t = threading.Thread(target=trickle)
        t.start()
        try:
            served_within(srv, 6)
        finally:
            stop.append(1)
            t.join()
        took = time.time() - t0
        check(took < 4.5, "served %.2f s after the trickling clients came, past their 3 s deadline" % took)
    finally:
        for s in socks:
            s.close()
        srv.cleanup()


@test
def g11_request_timeout_cuts_a_dribbling_request_not_a_slow_answer():
    srv = Server("--request-timeout", "1000").start()
    try:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        line = b"GET /__admin/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        t0 = time.time()
        closed = None
        for k in range(len(line)):  # never idle: a byte every 100 ms
            try:
                s.sendall(line[k:k + 1])
            except OSError:
                closed = time.time() - t0
                break
            time.sleep(0.1)
            s.setblocking(False)
            try:
                if s.recv(100) == b"":
                    closed = time.time() - t0
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = time.time() - t0
                break
            finally:
                s.setblocking(True)
        s.close()
        check(closed is not None and 0.9 < closed < 2.5, "the dribbling request was closed after %r s" % closed)
        c = Client(srv)
        add_fault(c, {"pathPrefix": QUERY, "latencyMs": 1500})
        c.close()
        r = Client(srv).query({})
        ok(r, "an answer delayed past the request timeout still arrives")
        check(r.elapsed >= 1.4, "the latency was applied (%.2f s)" % r.elapsed)
    finally:
        srv.cleanup()


# ===========================================================================
# main
# ===========================================================================

def main():
    global MAIN
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wixr", required=True, help="path to the wixr binary")
    ap.add_argument("--catalog", required=True, help="path to config/catalog.yaml")
    ap.add_argument("-k", dest="only", default=None, help="run only tests whose name contains this")
    args = ap.parse_args()
    ARGS.wixr = os.path.abspath(args.wixr)
    ARGS.catalog = os.path.abspath(args.catalog)
    MAIN = Server().start()

    def before_each():
        if MAIN.proc.poll() is not None:
            MAIN.start()
        reset()

    return run_tests(TESTS, args.only, before_each)


if __name__ == "__main__":
    sys.exit(main())

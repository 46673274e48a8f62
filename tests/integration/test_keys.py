#!/usr/bin/env python3
"""Integration tests of derived idempotency keys and the modes of secret files.

Usage: test_keys.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

A mutating call a hook makes without an idempotency key gets one derived with
HMAC-SHA256 under the installation's secret (<state_dir>/installation.key)
from the event id, the event name, the hook's position among the event's
hooks and the n-th call. Checked through `wixr fire` and the audit log: the
keys do not depend on how --config was spelled, differ between hooks and
between installations, survive a fixed script; the secret is 32 bytes, 0600,
refused when open to others (by `wixr check` and `wixr serve` at start too),
never made by a dry run, never printed; the audit file is made 0600. Python 3 standard library only.
"""
import json
import os
import stat
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import ARGS, JANE, P_SERVICE, Folder, check, eq, parse_args, run_tests  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


CREATE = """local wix = require "wix"
return function(event, ctx)
  for i = 1, 2 do
    wix.packages.create{ account_id = "%s", products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  end
  return { n = #wix.packages.query({}, { account_id = "%s" }).packages }
end
""" % (JANE, P_SERVICE, JANE)


def config(hooks, audit="audit.log"):
    return ("wix:\n  rate_limit: {requests: 0}\n  audit: %s\n  sandbox: {catalog: %s}\nhooks:\n%s"
            % (audit, json.dumps(ARGS.catalog), hooks))


def audit_keys(w, name="audit.log"):
    """The idempotency keys of the mutating calls in the audit log, in order."""
    with open(w.path(name)) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    return [x["idempotency_key"] for x in lines if x.get("method") != "GET" and "idempotency_key" in x]


def fire_ok(w, *args):
    r = w.run("fire", *args, "--json")
    eq(r.rc, 0, "fire exit status (%s)" % r)
    return r


def package_count(w, cfg):
    r = fire_ok(w, "count", "--config", cfg, "--no-dedupe")
    return r.json["hooks"][0]["result"]["n"]


@test
def keys_do_not_depend_on_how_the_config_path_is_spelled():
    hooks = "  order.paid:\n    - script: create.lua\n  count:\n    - script: count.lua\n"
    count = 'local wix = require "wix"\nreturn function() return { n = #wix.packages.query({}, ' \
            '{ account_id = "%s" }).packages } end\n' % JANE
    w = Folder(None, {"conf/x.yaml": config(hooks), "conf/create.lua": CREATE, "conf/count.lua": count})
    spellings = ["conf/x.yaml", "./conf/x.yaml", w.path("conf/x.yaml"), "conf/../conf/x.yaml"]
    runs = []
    for cfg in spellings:  # the audit file, like the state folder, is beside x.yaml
        before = len(audit_keys(w, "conf/audit.log")) if os.path.exists(w.path("conf/audit.log")) else 0
        fire_ok(w, "order.paid", "--config", cfg, "--id", "ord-1001", "--no-dedupe")
        runs.append(audit_keys(w, "conf/audit.log")[before:])
    eq(len(runs[0]), 2, "two creates, two keys")
    check(runs[0][0] != runs[0][1], "the two calls of a run get different keys: %r" % runs[0])
    for cfg, keys in zip(spellings[1:], runs[1:]):
        eq(keys, runs[0], "keys with --config %s" % cfg)
    eq(package_count(w, "conf/x.yaml"), 2, "packages after four runs of the same event (each create once)")


@test
def two_hooks_or_two_installations_never_share_keys():
    # Two hooks of one event running the same script file, and a hook of another event fired with
    # the same id: each gets keys of its own.
    hooks = ("  order.paid:\n    - script: create.lua\n    - script: create.lua\n"
             "  order.renewed:\n    - script: create.lua\n")
    w = Folder(config(hooks), {"create.lua": CREATE})
    fire_ok(w, "order.paid", "--id", "ord-7")
    fire_ok(w, "order.renewed", "--id", "ord-7", "--no-dedupe")
    keys = audit_keys(w)
    eq(len(keys), 6, "six creates (%r)" % keys)
    eq(len(set(keys)), 6, "six different keys: %r" % keys)
    # The same files in another folder are another installation: another secret, other keys.
    w2 = Folder(config(hooks), {"create.lua": CREATE})
    fire_ok(w2, "order.paid", "--id", "ord-7")
    fire_ok(w2, "order.renewed", "--id", "ord-7", "--no-dedupe")
    keys2 = audit_keys(w2)
    eq(len(keys2), 6, "six creates in the second folder")
    eq(set(keys) & set(keys2), set(), "no key shared between installations")
    # A hook disabled above another does not move the other's keys.
    with open(w.path("wixr.yaml"), "w") as f:
        f.write(config("  order.paid:\n    - script: create.lua\n      enabled: false\n    - script: create.lua\n"))
    n = len(keys)
    fire_ok(w, "order.paid", "--id", "ord-7", "--no-dedupe")
    eq(audit_keys(w)[n:], keys[2:4], "the second hook's keys with the first one disabled")


@test
def a_hook_with_an_id_keeps_its_keys_when_hooks_are_added_above_it():
    w = Folder(config("  order.paid:\n    - script: create.lua\n      id: provision\n"), {"create.lua": CREATE})
    fire_ok(w, "order.paid", "--id", "ord-5")
    first = audit_keys(w)
    eq(len(first), 2, "two creates")
    with open(w.path("wixr.yaml"), "w") as f:
        f.write(config("  order.paid:\n    - script: create.lua\n      id: audit-first\n"
                       "    - script: create.lua\n      id: provision\n"))
    fire_ok(w, "order.paid", "--id", "ord-5", "--no-dedupe")
    keys = audit_keys(w)[2:]
    eq(len(keys), 4, "four creates")
    eq(keys[2:], first, "the provision hook's keys, now second")
    check(not set(keys[:2]) & set(first), "the new hook's keys are its own: %r" % keys)


@test
def hook_ids_are_checked_where_they_are_written():
    w = Folder(config("  order.paid:\n    - script: create.lua\n      id: a b\n"
                      "    - script: create.lua\n      id: x\n    - script: create.lua\n      id: x\n"),
               {"create.lua": CREATE})
    r = w.run("check")
    eq(r.rc, 3, "check exit status (%s)" % r)
    lines = r.lines()
    check("wixr.yaml:8:11: hooks.order.paid[0].id: 'a b' is not 1 to 64 letters, digits, '.', '_' or '-'"
          in lines, "the bad id: %r" % lines)
    check("wixr.yaml:12:11: hooks.order.paid[2].id: 'x' is already the id of the hook at wixr.yaml:9:7"
          in lines, "the repeated id: %r" % lines)
    eq(len(lines), 2, "two errors: %r" % lines)
    w.write("wixr.yaml", config("  order.paid:\n    - script: create.lua\n      id: x\n"
                                "  order.renewed:\n    - script: create.lua\n      id: x\n"))
    r = w.run("check")
    eq(r.rc, 0, "one id under two events (%s)" % r)


@test
def a_fixed_script_sends_the_keys_of_the_failed_run():
    broken = CREATE.replace("  return {", "  error(\"bug\")\n  return {")
    w = Folder(config("  order.paid:\n    - script: create.lua\n"), {"create.lua": broken})
    r = w.run("fire", "order.paid", "--id", "ord-9")
    eq(r.rc, 1, "the broken script fails (%s)" % r)
    first = audit_keys(w)
    w.write("create.lua", CREATE)
    r = fire_ok(w, "order.paid", "--id", "ord-9")
    eq(audit_keys(w)[len(first):], first, "the fixed script's keys")
    eq(r.json["hooks"][0]["result"]["n"], 2, "two packages, not four")


@test
def the_installation_key_is_0600_and_one_open_to_others_is_refused():
    os.umask(0o022)
    w = Folder(config("  order.paid:\n    - script: create.lua\n"), {"create.lua": CREATE})
    r = w.run("fire", "order.paid", "--id", "ord-1", "--dry-run")
    eq(r.rc, 0, "dry run (%s)" % r)
    check(not os.path.exists(w.path(".wixr/installation.key")), "a dry run makes no installation key")
    r = fire_ok(w, "order.paid", "--id", "ord-1")
    key = w.path(".wixr/installation.key")
    st = os.stat(key)
    eq(stat.S_IMODE(st.st_mode), 0o600, "the installation key's mode")
    eq(st.st_size, 32, "the installation key's size")
    eq(stat.S_IMODE(os.stat(w.path("audit.log")).st_mode), 0o600, "the audit file's mode")
    with open(key, "rb") as f:
        secret = f.read()
    # A dry run with the key in place plans the keys a real run sends.
    sent = audit_keys(w)
    r = w.run("fire", "order.paid", "--id", "ord-1", "--dry-run", "--no-dedupe", "--json")
    eq(r.rc, 0, "dry run (%s)" % r)
    planned = [c.get("idempotencyKey") for c in r.json["hooks"][0].get("planned", [])]
    eq(planned, sent, "the dry run's planned keys")
    # The secret is never printed or stored elsewhere.
    texts = [r.out, r.err]
    for root, _, files in os.walk(w.dir):
        for name in files:
            if os.path.join(root, name) != key:
                with open(os.path.join(root, name), "rb") as f:
                    texts.append(f.read())
    for t in texts:
        b = t if isinstance(t, bytes) else t.encode("utf-8", "replace")
        check(secret not in b and secret.hex().encode() not in b, "the secret appears in an artefact")
    # Open to the group: refused, with the file and the fix named; nothing is sent.
    os.chmod(key, 0o640)
    n = len(sent)
    r = w.run("fire", "order.paid", "--id", "ord-2")
    eq(r.rc, 1, "fire with an open installation key (%s)" % r)
    check("create.lua:4: .wixr/installation.key: the installation key is open to group or others (mode 0640); "
          "chmod 600 it" in r.err + r.out, "the error names the script's line, the file and the fix: %s" % r)
    eq(len(audit_keys(w)), n, "no call was sent")
    # A file of the wrong size is refused too, not used or replaced.
    os.chmod(key, 0o600)
    with open(key, "wb") as f:
        f.write(b"short")
    r = w.run("fire", "order.paid", "--id", "ord-3")
    eq(r.rc, 1, "fire with a truncated installation key (%s)" % r)
    check("not an installation key (5 bytes; one is 32 random bytes)" in r.err + r.out, "the error: %s" % r)


@test
def check_and_serve_refuse_an_unusable_installation_key_at_start():
    w = Folder(config("  order.paid:\n    - script: create.lua\n"), {"create.lua": CREATE})
    r = w.run("check")
    eq(r.rc, 0, "check before any key exists: the first real run makes it (%s)" % r)
    fire_ok(w, "order.paid", "--id", "ord-1")
    key = w.path(".wixr/installation.key")
    r = w.run("check")
    eq(r.rc, 0, "check with the key a run made (%s)" % r)
    refusals = [(0o640, None, ".wixr/installation.key: the installation key is open to group or others (mode 0640); "
                              "chmod 600 it"),
                (0o604, None, ".wixr/installation.key: the installation key is open to group or others (mode 0604)"),
                (0o600, b"short", ".wixr/installation.key: not an installation key (5 bytes; one is 32 random bytes)"),
                (0o600, b"x" * 33, ".wixr/installation.key: not an installation key (33 bytes; one is 32 random "
                                   "bytes)")]
    for mode, text, want in refusals:
        if text is not None:
            with open(key, "wb") as f:
                f.write(text)
        os.chmod(key, mode)
        r = w.run("check")
        eq(r.rc, 3, "check with a key of mode %04o, %r (%s)" % (mode, text, r))
        eq(r.out, "", "nothing on stdout")
        lines = r.lines()
        eq(len(lines), 1, "one line: %r" % lines)
        check(lines[0].startswith(want), "the line names the file and what is wrong: %r" % lines[0])
        r = w.run("check", "--json")
        eq(r.rc, 3, "check --json (%s)" % r)
        check([p["message"] for p in r.json["problems"] if p["message"].startswith(want)],
              "the problem in --json: %s" % r.out)
        r = w.run("serve", "--insecure-no-auth", "--listen", "127.0.0.1:0", timeout=10)
        eq(r.rc, 1, "serve refuses to start (%s)" % r)
        logs = [json.loads(x) for x in r.err.splitlines() if x.startswith("{")]
        eq([x["level"] for x in logs], ["error"], "one log line: %r" % r.err)
        check(logs[0]["msg"].startswith("wixr serve: " + want), "the line names the file: %r" % logs[0]["msg"])
        check(not os.path.exists(w.path(".wixr/serve.pid")), "the service never started")
    with open(key, "wb") as f:
        f.write(os.urandom(32))
    os.chmod(key, 0o600)
    eq(w.run("check").rc, 0, "a sound key again")


@test
def policy_tests_make_no_installation_key():
    t = """local p = policy("create.lua", { event = "order.paid" })
test("creates with derived keys", function()
  local r = p({}, { event = { id = "ord-1", name = "order.paid" } })
  eq(r.n, 2)
end)
"""
    w = Folder(None, {"create.lua": CREATE, "create_test.lua": t})
    r = w.run("test", "create_test.lua")
    eq(r.rc, 0, "wixr test (%s)" % r)
    check(not os.path.exists(w.path(".wixr")), "wixr test (in-memory emulator) leaves no state folder behind")


@test
def an_existing_audit_file_is_appended_to_and_a_new_one_is_0600():
    os.umask(0o000)
    try:
        w = Folder(config("  order.paid:\n    - script: create.lua\n", audit="logs/audit.log"),
                   {"create.lua": CREATE, "logs/.keep": ""})
        fire_ok(w, "order.paid", "--id", "a-1")
        eq(stat.S_IMODE(os.stat(w.path("logs/audit.log")).st_mode), 0o600, "a new audit file's mode, umask 0")
        eq(stat.S_IMODE(os.stat(w.path(".wixr/installation.key")).st_mode), 0o600, "the key's mode, umask 0")
        fire_ok(w, "order.paid", "--id", "a-2")
        eq(len(audit_keys(w, "logs/audit.log")), 4, "the second run appends")
    finally:
        os.umask(0o022)


if __name__ == "__main__":
    sys.exit(run_tests(TESTS, parse_args(__doc__)))

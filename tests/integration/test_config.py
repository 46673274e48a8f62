#!/usr/bin/env python3
"""Integration tests of the configuration that does not repeat itself: `defaults:` under
every hook, YAML anchors, aliases and merge keys, ${NAME:-default}, `wixr check` listing
every problem of the file, serve.listen bound by `check`, and the option keys a policy
declares (---@option lines) checked against its hook's options, and where the state
folder, the embedded emulator's file and the audit file land (from the configuration
file's folder, whatever the working folder).

Usage: test_config.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Each test writes a wixr.yaml and its scripts into a temporary folder and runs
`wixr check` / `wixr fire` there (no WIX_* variables: the in-process emulator).
Python 3 standard library only.
"""
import errno
import json
import os
import re
import shutil
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import ARGS, JANE, P_SERVICE, Folder, check, eq, parse_args, run_tests  # noqa: E402

TESTS = []
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test(fn):
    TESTS.append(fn)
    return fn


class Work(Folder):
    prefix = "wixr-config-"


OPTIONS = "return function(event, ctx)\n  return ctx.options\nend\n"
DECLARED = ("---@option plans table<string, string>  plan name -> product id\n"
            "---@option allow_downgrade boolean  allow moving to a cheaper plan\n"
            "---@option country_code string?  when an order gives none\n"
            "-- declares its options, then returns them\n"
            "return function(event, ctx)\n  return ctx.options\nend\n")
POS = re.compile(r"^wixr\.yaml:(\d+):(\d+): ")


def fire_options(w, event="ev", i=0, env=None):
    r = w.run("fire", event, "--json", env=env)
    eq(r.rc, 0, "fire %s (%s)" % (event, r))
    return r.json["hooks"][i]["result"]


def problems(w, *args, env=None):
    """`wixr check`: exit 3, nothing on stdout; the lines of stderr."""
    r = w.run("check", *args, env=env)
    eq(r.rc, 3, "check exit status (%s)" % r)
    eq(r.out, "", "nothing on stdout")
    return r.lines()


def line_of(text, needle):
    """The 1-based line of the first line of text holding needle."""
    for i, x in enumerate(text.splitlines(), 1):
        if needle in x:
            return i
    raise AssertionError("%r not in the text" % needle)


# ---------------------------------------------------------------------------
# defaults: and anchors
# ---------------------------------------------------------------------------

@test
def defaults_are_merged_under_each_hooks_own():
    cfg = ("defaults:\n"
           "  options:\n"
           "    plans: {light: p1, core: p2}\n"
           "    country_code: DE\n"
           "    nested: {a: 1, b: {c: 2, d: 3}}\n"
           "  allow: [read]\n"
           "  max_mutations: 0\n"
           "hooks:\n"
           "  ev:\n"
           "    - script: h.lua\n"
           "      options:\n"
           "        plans: {core: own, elite: p4}\n"
           "        nested: {b: {d: 30}}\n"
           "        mine: true\n"
           "    - script: h.lua\n")
    w = Work(cfg, {"h.lua": OPTIONS})
    r = w.run("fire", "ev", "--json")
    eq(r.rc, 0, "fire (%s)" % r)
    first, second = r.json["hooks"][0]["result"], r.json["hooks"][1]["result"]
    eq(first, {"plans": {"light": "p1", "core": "own", "elite": "p4"}, "country_code": "DE",
               "nested": {"a": 1, "b": {"c": 2, "d": 30}}, "mine": True}, "the first hook's ctx.options")
    eq(second, {"plans": {"light": "p1", "core": "p2"}, "country_code": "DE", "nested": {"a": 1, "b": {"c": 2, "d": 3}}},
       "the second hook's ctx.options (defaults alone)")


@test
def defaults_allow_and_limits_apply_unless_a_hook_overrides_them():
    mutate = ('local wix = require "wix"\n'
              'return function(event, ctx)\n'
              '  local ok, err = pcall(wix.packages.create, { account_id = "33333333-4444-4555-8666-777777777777",\n'
              '    products = {{ catalog_product_id = "6b7c8d9e-0f1a-4b2c-9d3e-4f5a6b7c8d03", country_code = "DE" }} })\n'
              '  return { ok = ok, err = ok and "" or tostring(err) }\n'
              'end\n')
    cfg = ("wix:\n  rate_limit: {requests: 0}\n  sandbox: {catalog: %s}\n"
           "defaults:\n  allow: [read]\n  limits: {instructions: 1000}\n"
           "hooks:\n"
           "  ro:\n    - script: m.lua\n      limits: {instructions: 1000000}\n"
           "  rw:\n    - script: m.lua\n      allow: [create]\n      limits: {instructions: 1000000}\n"
           "  spin:\n    - script: s.lua\n" % json.dumps(ARGS.catalog))
    w = Work(cfg, {"m.lua": mutate, "s.lua": "return function() while true do end end\n"})
    ro = fire_options(w, "ro")
    eq(ro["ok"], False, "create refused by defaults.allow: %r" % ro)
    check("create" in ro["err"] and "not allowed" in ro["err"], "the refusal names the operation: %r" % ro["err"])
    eq(fire_options(w, "rw")["ok"], True, "the hook's own allow wins")
    r = w.run("fire", "spin", "--json")
    check(r.rc != 0, "the spinning hook fails (%s)" % r)
    check("instruction" in json.dumps(r.json), "on the instruction limit of defaults.limits: %s" % r.out[-300:])


@test
def anchors_aliases_and_merge_keys_in_the_configuration():
    cfg = ("defaults:\n"
           "  options: &shared\n"
           "    plans: &plans {light: p1, core: p2}\n"
           "hooks:\n"
           "  a:\n"
           "    - &hook\n"
           "      script: h.lua\n"
           "      options:\n"
           "        <<: *shared\n"
           "        list: [*plans, &n 7, *n]\n"
           "  b:\n"
           "    - <<: *hook\n"
           "      options: {again: *plans}\n")
    w = Work(cfg, {"h.lua": OPTIONS})
    r = w.run("check")
    eq(r.rc, 0, "check (%s)" % r)
    check("(2 hooks, 2 enabled" in r.out, "two hooks: %r" % r.out)
    eq(fire_options(w, "a"), {"plans": {"light": "p1", "core": "p2"},
                              "list": [{"light": "p1", "core": "p2"}, 7, 7]}, "hook a")
    eq(fire_options(w, "b"), {"plans": {"light": "p1", "core": "p2"}, "again": {"light": "p1", "core": "p2"}},
       "hook b (merged from hook a, its own options)")


@test
def a_problem_inside_an_alias_points_at_the_anchor():
    cfg = ("defaults:\n  options: {}\n"
           "hooks:\n"
           "  a:\n"
           "    - &hook\n"
           "      script: h.lua\n"
           "      max_mutations: lots\n"
           "  b:\n"
           "    - *hook\n")
    w = Work(cfg, {"h.lua": OPTIONS})
    errs = problems(w)
    eq(errs, ["wixr.yaml:7:22: max_mutations: expected a whole number, got 'lots'"],
       "one line: the aliased copy's problem is the anchor's, listed once")


@test
def an_alias_bomb_is_refused_at_its_alias():
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, c in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append("%s: &%s [%s]" % (c, c, ", ".join(["*" + prev] * 10)))
    text = "x-bomb:\n" + "".join("  " + x + "\n" for x in lines)
    w = Work(text + "hooks:\n  ev:\n    - script: h.lua\n", {"h.lua": OPTIONS})
    r = w.run("check", timeout=10)
    eq(r.rc, 3, "check exit status (%s)" % r)
    errs = r.lines()
    eq(len(errs), 1, "one problem: %r" % errs)
    check(errs[0].startswith("wixr.yaml:6:") and "alias *d: aliases would expand the document past 100000 nodes"
          in errs[0], "at the alias that crosses the cap: %r" % errs[0])
    check(r.elapsed < 5, "refused quickly (%.1f s)" % r.elapsed)


@test
def the_example_configuration_states_the_price_list_once():
    w = Work()
    for part in ("config", "lua"):  # a copy: its state folder (runtime.state_dir: ../.wixr) is the copy's
        shutil.copytree(os.path.join(ROOT, part), w.path(part), ignore=shutil.ignore_patterns(".wixr"))
    path = w.path("config/wixr.yaml")
    with open(path) as f:
        text = f.read()
    eq(text.count("7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02"), 1, "the core plan's product id in config/wixr.yaml")
    r = w.run("check", "--config", path)
    eq(r.rc, 0, "check --config config/wixr.yaml (%s)" % r)
    # a DIY order through route_order.lua, whose plans come from defaults.options
    r = w.run("fire", "order.created", "--config", path, "--json", "--data",
              os.path.join(ROOT, "config", "examples", "order_diy.json"))
    eq(r.rc, 0, "fire order.created with the example (%s)" % r)
    check(r.json["hooks"][0]["result"].get("package_id"), "a package was created: %s" % r.out[-300:])
    check(os.path.exists(w.path(".wixr/journal.db")), "the run is in the journal of the folder above config/")


# ---------------------------------------------------------------------------
# ${NAME:-default}
# ---------------------------------------------------------------------------

@test
def env_references_with_a_default():
    cfg = ("hooks:\n  ev:\n    - script: h.lua\n      options:\n"
           "        region: ${WIXR_TEST_REGION:-eu}\n"
           "        url: \"https://${WIXR_TEST_HOST:-api.example}/v1\"\n"
           "        empty: \"${WIXR_TEST_REGION:-}\"\n"
           "        token: ${WIXR_TEST_TOKEN}\n")
    w = Work(cfg, {"h.lua": OPTIONS})
    eq(fire_options(w, env={"WIXR_TEST_TOKEN": "t"}),
       {"region": "eu", "url": "https://api.example/v1", "empty": "", "token": "t"}, "defaults for unset names")
    eq(fire_options(w, env={"WIXR_TEST_TOKEN": "t", "WIXR_TEST_REGION": "us", "WIXR_TEST_HOST": ""}),
       {"region": "us", "url": "https://api.example/v1", "empty": "us", "token": "t"},
       "a set name wins; an empty one takes the default")
    eq(problems(w), ["wixr.yaml:8:16: ${WIXR_TEST_TOKEN} is not set in the environment"],
       "without a default an unset name is still an error at its position")


# ---------------------------------------------------------------------------
# every problem of the file
# ---------------------------------------------------------------------------

BROKEN = ("wixx: 1\n"
          "wix:\n  timeout_ms: soon\n  retry: {atempts: 2}\n"
          "runtime:\n  limits: {wall_ms: 0}\n  max_chain_depth: 99\n"
          "defaults:\n  allow: [raed]\n"
          "hooks:\n"
          "  a:\n    - script: h.lua\n      on_error: maybe\n"
          "  b:\n    - script: nope.lua\n    - {}\n"
          "serve:\n  listen: 127.0.0.1:http\n  concurency: 3\n"
          "poller:\n  enabled: maybe\n")


@test
def check_lists_every_problem_of_the_file():
    w = Work(BROKEN, {"h.lua": OPTIONS})
    errs = problems(w)
    want = [
        (1, 1, "unknown key 'wixx' in the configuration (did you mean 'wix'?)"),
        (3, 15, "wix.timeout_ms: expected a whole number, got 'soon'"),
        (4, 11, "unknown key 'atempts' in wix.retry (did you mean 'attempts'?)"),
        (6, 21, "runtime.limits.wall_ms: 0 is out of range (1 to 86400000)"),
        (7, 20, "runtime.max_chain_depth: 99 is out of range (0 to 64)"),
        (9, 11, "allow: unknown operation 'raed' (did you mean 'read'?)"),
        (13, 17, "on_error: 'maybe' is not stop or continue"),
        (15, 15, "script: nope.lua does not exist"),
        (16, 7, "hooks.b[1]: 'script' is required"),
        (18, 11, "serve.listen: bad port 'http' (0 to 65535)"),
        (19, 3, "unknown key 'concurency' in serve (did you mean 'concurrency'?)"),
        (21, 12, "poller.enabled: expected true or false, got 'maybe'"),
    ]
    got = []
    for x in errs:
        m = POS.match(x)
        check(m, "each problem starts with wixr.yaml:line:col: %r" % x)
        got.append((int(m.group(1)), int(m.group(2)), x[m.end():]))
    eq(sorted(got), sorted(want), "every problem, from every mapping")
    r = w.run("check", "--json")
    eq(r.rc, 3, "check --json exit status")
    doc = r.json
    eq(doc["ok"], False, "ok")
    eq(sorted((p["line"], p["col"], p["message"]) for p in doc["problems"]), sorted(want), "the --json problems")
    check(all(p["file"] == "wixr.yaml" for p in doc["problems"]), "each names the file")
    # fire refuses the file with the same list
    r = w.run("fire", "a")
    eq(r.rc, 3, "fire exit status (%s)" % r)
    eq(len([x for x in r.lines() if POS.match(x)]), len(want), "fire lists them too: %r" % r.err)


# ---------------------------------------------------------------------------
# serve.listen
# ---------------------------------------------------------------------------

def listen_config(addr):
    return "serve:\n  listen: %s\nhooks:\n  ev:\n    - script: h.lua\n" % addr


@test
def check_warns_when_serve_listen_is_in_use():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        w = Work(listen_config("127.0.0.1:%d" % port), {"h.lua": OPTIONS})
        r = w.run("check")
        eq(r.rc, 0, "in use is a warning, not a problem (%s)" % r)
        eq(r.lines(), ["wixr.yaml:2:11: warning: serve.listen 127.0.0.1:%d cannot be bound now: Address already in "
                       "use (a running wixr serve may be holding it; not counted as a problem)" % port], "the warning")
        check(r.out.startswith("wixr.yaml: ok (1 hook") and "warning" in r.out, "ok, pointing at it: %r" % r.out)
        r = w.run("check", "--json")
        eq(r.rc, 0, "check --json")
        eq(r.json["ok"], True, "ok")
        eq([(x["line"], x["col"]) for x in r.json["warnings"]], [(2, 11)], "the warning's position")
        check(r.json["warnings"][0]["message"].startswith("warning: serve.listen 127.0.0.1:%d cannot be bound" % port),
              "the warning's message: %r" % r.json["warnings"][0])
    finally:
        s.close()
    # free again: no warning
    r = w.run("check", "--json")
    eq(r.rc, 0, "check once the port is free")
    check("warnings" not in r.json, "no warning: %r" % r.json)


@test
def check_refuses_a_serve_listen_that_cannot_be_bound():
    # 192.0.2.1 (TEST-NET-1) is not an address of this machine
    w = Work(listen_config("192.0.2.1:8480"), {"h.lua": OPTIONS})
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind(("192.0.2.1", 0))
        local = True
    except OSError as e:
        local = e.errno != errno.EADDRNOTAVAIL
    finally:
        probe.close()
    if not local:
        eq(problems(w), ["wixr.yaml:2:11: serve.listen 192.0.2.1:8480 cannot be bound: Cannot assign requested "
                         "address"], "the problem")
        r = w.run("check", "--json")
        eq(r.rc, 3, "check --json")
        eq([(p["line"], p["col"], p["message"]) for p in r.json["problems"]],
           [(2, 11, "serve.listen 192.0.2.1:8480 cannot be bound: Cannot assign requested address")], "--json")
    w = Work(listen_config("my-host:8480"), {"h.lua": OPTIONS})
    eq(problems(w), ["wixr.yaml:2:11: serve.listen: 'my-host' is not an IPv4 address (or localhost)"],
       "a malformed address")
    w = Work(listen_config("localhost:0"), {"h.lua": OPTIONS})
    r = w.run("check")
    eq((r.rc, r.lines()), (0, []), "localhost:0 binds (%s)" % r)


# ---------------------------------------------------------------------------
# declared options
# ---------------------------------------------------------------------------

@test
def an_option_the_script_does_not_declare_is_an_error():
    cfg = ("hooks:\n  ev:\n    - script: p.lua\n      options:\n"
           "        alow_downgrade: true\n        plans: {a: b}\n        color: red\n")
    w = Work(cfg, {"p.lua": DECLARED})
    eq(problems(w), ["wixr.yaml:5:9: options: 'alow_downgrade' is not an option p.lua declares "
                     "(did you mean 'allow_downgrade'?)",
                     "wixr.yaml:7:9: options: 'color' is not an option p.lua declares "
                     "(plans, allow_downgrade, country_code)"], "the typo and the stranger")
    r = w.run("fire", "ev")
    eq(r.rc, 3, "fire refuses the file too (%s)" % r)


@test
def an_option_of_the_wrong_type_is_an_error():
    cfg = ("hooks:\n  ev:\n    - script: p.lua\n      options:\n"
           "        allow_downgrade: \"false\"\n        plans: [a, b]\n        country_code: 49\n")
    w = Work(cfg, {"p.lua": DECLARED})
    eq(problems(w), ["wixr.yaml:5:26: options.allow_downgrade: p.lua declares it boolean, got a string",
                     "wixr.yaml:7:23: options.country_code: p.lua declares it string?, got a number"],
       "type mismatches (a list is a table)")
    w.write("wixr.yaml", cfg.replace('"false"', "false").replace("49", "~"))
    r = w.run("check")
    eq(r.rc, 0, "right types; nil is allowed by '?' (%s)" % r)


@test
def defaults_options_are_checked_against_every_hooks_declarations():
    other = "---@option team string\nreturn function(event, ctx) return ctx.options end\n"
    cfg = ("defaults:\n  options:\n    plans: {a: b}\n    plnas: {a: b}\n"
           "hooks:\n  one:\n    - script: p.lua\n  two:\n    - script: q.lua\n      options: {team: t}\n")
    w = Work(cfg, {"p.lua": DECLARED, "q.lua": other})
    eq(problems(w), ["wixr.yaml:4:5: defaults.options: no hook's script declares 'plnas' (did you mean 'plans'?)"],
       "a key no script declares; 'plans' is fine though q.lua does not read it")
    w.write("wixr.yaml", cfg.replace("    plnas: {a: b}\n", ""))
    r = w.run("fire", "two", "--json")
    eq(r.rc, 0, "fire (%s)" % r)
    eq(r.json["hooks"][0]["result"], {"plans": {"a": "b"}, "team": "t"}, "q.lua still gets the shared options")


@test
def a_script_that_declares_nothing_is_not_checked():
    cfg = "hooks:\n  ev:\n    - script: h.lua\n      options: {anything: 1, goes: [x]}\n"
    w = Work(cfg, {"h.lua": OPTIONS})
    eq(fire_options(w), {"anything": 1, "goes": ["x"]}, "ctx.options as written")


@test
def a_malformed_declaration_is_an_error_in_the_script():
    script = "-- header\n---@option plans tabel  typo in the type\n---@option\nreturn function() end\n"
    w = Work("hooks:\n  ev:\n    - script: p.lua\n", {"p.lua": script})
    errs = problems(w)
    eq(errs, ["p.lua:2:18: ---@option plans: unknown type 'tabel' (any, string, number, integer, boolean, table, "
              "nil; a|b, T?, T[], table<K, V>)",
              "p.lua:3:1: ---@option: expected '---@option NAME TYPE [description]'"], "positions in the script")


# ---------------------------------------------------------------------------
# Paths: relative to the configuration file's folder, set or not
# ---------------------------------------------------------------------------

CREATE = """local wix = require "wix"
return function(event, ctx)
  return { id = wix.packages.create{ account_id = "%s",
                                     products = {{ catalog_product_id = "%s", country_code = "DE" }} }.id }
end
""" % (JANE, P_SERVICE)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def state_files(root):
    """The files under root but SQLite's and the emulator's companions (-wal, -shm, .lock)."""
    return [x for x in files_under(root) if not x.endswith(("-wal", "-shm", ".lock"))]


@test
def default_paths_start_at_the_configuration_files_folder():
    w = Work(None, {"proj/wixr.yaml": "hooks:\n  order.paid:\n    - script: create.lua\n",
                    "proj/create.lua": CREATE})
    elsewhere = Work()
    config = w.path("proj/wixr.yaml")
    r = elsewhere.run("fire", "order.paid", "--config", config, "--id", "o-1", "--json")
    eq(r.rc, 0, "fire from another working folder (%s)" % r)
    check("using the embedded sandbox emulator (%s)" % w.path("proj/.wixr/sandbox.db") in r.err,
          "the notice names the emulator's file beside the configuration: %r" % r.err)
    eq(files_under(elsewhere.dir), [], "nothing in the working folder")
    eq(state_files(w.path("proj/.wixr")), ["installation.key", "journal.db", "sandbox.db"],
       "the state folder beside the configuration")
    # The same file spelled from its parent folder: the same journal, key and emulator.
    r = w.run("fire", "order.paid", "--config", "proj/wixr.yaml", "--id", "o-1", "--json")
    eq(r.rc, 0, "fire from the parent folder (%s)" % r)
    eq(r.json.get("skipped"), "done before", "the event done from the other folder is in the same journal: %s"
       % r.out)
    check(not os.path.exists(w.path(".wixr")), "no state folder in the working folder")
    r = elsewhere.run("events", "list", "--config", config, "--json")
    eq(r.rc, 0, "events list (%s)" % r)
    eq([json.loads(x)["id"] for x in r.out.splitlines()], ["o-1"], "events list reads the same journal")
    eq(elsewhere.run("check", "--config", config).rc, 0, "check with the key the run made")


@test
def relative_paths_set_in_the_file_start_at_its_folder():
    hooks = "hooks:\n  order.paid:\n    - script: create.lua\n"
    w = Work(None, {"proj/set.yaml": "runtime:\n  state_dir: st\nwix:\n  audit: logs/audit.log\n"
                                     "  sandbox: {db: emu/e.db}\n" + hooks,
                    "proj/logs/.keep": "", "proj/create.lua": CREATE,
                    "proj/mem.yaml": "wix:\n  audit: \"-\"\n  sandbox: {db: \":memory:\"}\n" + hooks})
    elsewhere = Work()
    r = elsewhere.run("fire", "order.paid", "--config", w.path("proj/set.yaml"), "--id", "o-1", "--json")
    eq(r.rc, 0, "fire (%s)" % r)
    eq(files_under(elsewhere.dir), [], "nothing in the working folder")
    eq(state_files(w.path("proj")), ["create.lua", "emu/e.db", "logs/.keep", "logs/audit.log", "mem.yaml",
                                     "set.yaml", "st/installation.key", "st/journal.db"],
       "runtime.state_dir, wix.sandbox.db and wix.audit, each relative to the file's folder")
    with open(w.path("proj/logs/audit.log")) as f:
        check('"method":"POST"' in f.read(), "the call is in the audit file")
    # ":memory:" and "-" are not paths.
    r = elsewhere.run("fire", "order.paid", "--config", w.path("proj/mem.yaml"), "--id", "o-1", "--json")
    eq(r.rc, 0, "fire (%s)" % r)
    check('"method":"POST"' in r.err, "the audit line on stderr: %r" % r.err[-300:])
    eq([x for x in files_under(w.path("proj")) if "memory" in x], [], "no file named :memory:")


def main():
    return run_tests(TESTS, parse_args(__doc__))


if __name__ == "__main__":
    sys.exit(main())

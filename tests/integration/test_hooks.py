#!/usr/bin/env python3
"""Integration tests of the hooks runtime: configuration, `wixr check`, `wixr fire`.

Usage: test_hooks.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Each test writes a wixr.yaml and its hook scripts into a temporary folder of
its own and runs `wixr check` / `wixr fire` there (no WIX_* variables, so the
in-process sandbox emulator is used, with its state in .wixr/). Covered:
positioned configuration errors, script compilation, the sandbox's
environment (escapes fail safely), the per-run limits (instructions, memory,
wall time; the host carries on with the next event), operation permissions,
NDJSON batches with dedupe, event chaining, and what a handler may return.
Python 3 standard library only.
"""
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import ARGS, JANE, P_SERVICE, Folder, TestFailure, check, eq, parse_args, run_tests  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


class Work(Folder):
    """A temporary working folder with a wixr.yaml and scripts; runs wixr there."""
    prefix = "wixr-hooks-"

    def __init__(self, config=None, files=None, wix=False):
        super().__init__(wix_block() + config if wix and config is not None else config, files)

    def check(self, *args, **kw):
        return self.run("check", *args, **kw)

    def fire(self, *args, **kw):
        return self.run("fire", *args, **kw)

    def batch(self, events, *args, **kw):
        """fire --batch - with the events (dicts, or raw lines as strings)."""
        text = "".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events)
        return self.run("fire", "--batch", "-", *args, stdin=text, **kw)


def wix_block():
    return "wix:\n  rate_limit: {requests: 0}\n  sandbox: {catalog: %s}\n" % json.dumps(ARGS.catalog)


def config_error(w, *args):
    """Runs `wixr check`; asserts exit 3; returns stderr's lines."""
    r = w.check(*args)
    eq(r.rc, 3, "check exit status (%s)" % r)
    eq(r.out, "", "nothing on stdout")
    return r.lines()


def hook_of(report, i=0):
    return report["hooks"][i]


def batch_report(r):
    """A `fire --batch --json` run's standard output: (the event lines, the summary line). Every line
    must be one JSON object and the last one the summary."""
    if r.timed_out or (r.rc is not None and r.rc < 0):
        return r.json  # raises with the reason
    docs = []
    for x in r.out.splitlines():
        try:
            docs.append(json.loads(x))
        except ValueError:
            raise TestFailure("a line of stdout is not JSON: %r (rc %s, stdout %r, stderr %r)"
                              % (x[:200], r.rc, r.out[:300], r.err[-300:]))
    check(docs and docs[-1].get("summary") is True, "the last line is the summary: %r" % r.out[-300:])
    return docs[:-1], docs[-1]


def summary(r):
    return batch_report(r)[1]


HANDLER_OPTIONS = "return function(event, ctx)\n  return ctx.options\nend\n"
GOOD = "return function(event, ctx)\n  return { ok = true, name = ctx.event.name }\nend\n"
CREATE = """local wix = require "wix"
return function(event, ctx)
  local ids = {}
  for i = 1, (event.n or 1) do
    local p = wix.packages.create{ account_id = "%s",
      products = {{ catalog_product_id = "%s", country_code = "DE" }} }
    ids[#ids + 1] = p.id
  end
  return { n = #ids, dry = ctx.dry_run }
end
""" % (JANE, P_SERVICE)
COUNT = """local wix = require "wix"
return function(event, ctx)
  return { n = #wix.packages.query({}, { account_id = "%s" }).packages }
end
""" % JANE


# ---------------------------------------------------------------------------
# 1. Configuration errors
# ---------------------------------------------------------------------------

@test
def config_unknown_top_level_key_with_did_you_mean():
    w = Work("hoks:\n  ev: []\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:1:1: unknown key 'hoks' in the configuration (did you mean 'hooks'?)"],
       "check errors")
    r = w.fire("ev")
    eq(r.rc, 3, "fire exit status on a bad configuration (%s)" % r)
    check("wixr.yaml:1:1: unknown key 'hoks'" in r.err, "fire lists the error: %r" % r.err)
    w = Work("hooks: {}\nserve: {}\npoller: {}\nlogging: {}\n")
    eq(config_error(w), ["wixr.yaml:4:1: unknown key 'logging' in the configuration"], "no close match, no hint")


@test
def config_unknown_key_in_wix():
    w = Work("wix:\n  transprot: sandbox\n")
    eq(config_error(w), ["wixr.yaml:2:3: unknown key 'transprot' in wix (did you mean 'transport'?)"], "errors")


@test
def config_unknown_key_in_a_hook_entry():
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      on_eror: stop\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:7: unknown key 'on_eror' in hooks.ev[0] (did you mean 'on_error'?)"],
       "errors")


@test
def config_unknown_key_in_limits():
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      limits: {instructons: 5000}\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w),
       ["wixr.yaml:4:16: unknown key 'instructons' in hooks.ev[0].limits (did you mean 'instructions'?)"],
       "hook limits")
    w = Work("runtime:\n  limits:\n    wall_mss: 5\n")
    eq(config_error(w), ["wixr.yaml:3:5: unknown key 'wall_mss' in runtime.limits (did you mean 'wall_ms'?)"],
       "runtime limits")


@test
def config_wrong_types():
    w = Work("runtime:\n  limits:\n    memory_mb: lots\n")
    eq(config_error(w), ["wixr.yaml:3:16: runtime.limits.memory_mb: expected a whole number, got 'lots'"],
       "string for a number")
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      allow: {read: true}\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:14: allow: expected a list, got a mapping"], "map for a list")
    w = Work("hooks:\n  ev: {script: h.lua}\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:2:7: hooks.ev: expected a list, got a mapping"], "map for the hook list")
    w = Work("runtime:\n  lua_paths: mods\n")
    eq(config_error(w), ["wixr.yaml:2:14: runtime.lua_paths: expected a list, got a scalar"], "scalar for a list")
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      max_mutations: -1\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:22: max_mutations: -1 is out of range (0 to 100000)"], "out of range")
    w = Work("hooks:\n  ev:\n    - options: {}\n")
    eq(config_error(w), ["wixr.yaml:3:7: hooks.ev[0]: 'script' is required"], "script is required")
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      options: {big: 1e999, ok: \"1e999\"}\n",
             {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:22: number out of range: 1e999 (quote it to keep it as text)"],
       "an option beyond a double")
    w = Work("wix:\n  api_key_file: key.txt\n", {"key.txt": " \n"})
    eq(config_error(w), ["wixr.yaml:2:17: wix.api_key_file: key.txt: the API key file is empty"], "an empty key file")
    r = w.check(env={"WIX_API_KEY": "from-the-environment"})
    eq(r.rc, 0, "WIX_API_KEY wins over an empty key file (%s)" % r)


@test
def config_missing_script_file():
    w = Work("hooks:\n  ev:\n    - script: missing.lua\n")
    errs = config_error(w)
    eq(len(errs), 1, "one error: %r" % errs)
    check(errs[0].startswith("wixr.yaml:3:15: script: ") and errs[0].endswith("missing.lua does not exist"),
          "message: %r" % errs[0])
    # Scripts are relative to the yaml's folder, not the working folder.
    w = Work(None, {"sub/cfg.yaml": "hooks:\n  ev:\n    - script: h.lua\n", "sub/h.lua": HANDLER_OPTIONS})
    r = w.check("--config", "sub/cfg.yaml")
    eq((r.rc, r.out), (0, "sub/cfg.yaml: ok (1 hook, 1 enabled, transport sandbox)\n"), "relative to the yaml (%s)" % r)
    w.write("sub/cfg.yaml", "hooks:\n  ev:\n    - script: sub/h.lua\n")
    errs = config_error(w, "--config", "sub/cfg.yaml")
    check(len(errs) == 1 and errs[0].startswith("sub/cfg.yaml:3:15: script: ")
          and errs[0].endswith("sub/sub/h.lua does not exist"), "not relative to the working folder: %r" % errs)


@test
def config_env_references():
    cfg = ("hooks:\n  ev:\n    - script: h.lua\n      options:\n"
           "        token: ${WIXR_TEST_HOOK_TOKEN}\n        url: \"https://x/${WIXR_TEST_HOOK_TOKEN}/y\"\n"
           "        n: 5\n        flag: true\n        list: [a, 1]\n")
    w = Work(cfg, {"h.lua": HANDLER_OPTIONS})
    os.environ.pop("WIXR_TEST_HOOK_TOKEN", None)
    eq(config_error(w), ["wixr.yaml:5:16: ${WIXR_TEST_HOOK_TOKEN} is not set in the environment"],
       "unset variable")
    r = w.fire("ev", "--json", env={"WIXR_TEST_HOOK_TOKEN": "tok-123"})
    eq(r.rc, 0, "fire with the variable set (%s)" % r)
    eq(hook_of(r.json)["result"], {"token": "tok-123", "url": "https://x/tok-123/y", "n": 5, "flag": True,
                                   "list": ["a", 1]}, "ctx.options")
    w = Work("wix:\n  account_id: ${WIXR_TEST_HOOK_UNSET_2}\n")
    eq(config_error(w), ["wixr.yaml:2:15: ${WIXR_TEST_HOOK_UNSET_2} is not set in the environment"], "in wix")


@test
def config_bad_allow_operation():
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      allow: [read, craete]\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:21: allow: unknown operation 'craete' (did you mean 'create'?)"], "typo")
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      allow: [everything]\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:15: allow: unknown operation 'everything' (all, read, mutate, get, query, "
                         "create, cancel_package, set_external_id, assign, unassign, adjust, cancel_instance)"],
       "no close match: the list of operations")


@test
def config_bad_on_error():
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      on_error: retry\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:17: on_error: 'retry' is not stop or continue"], "errors")


@test
def config_yaml_syntax_error_position():
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      options: {a: [1, 2}\n", {"h.lua": HANDLER_OPTIONS})
    errs = config_error(w)
    eq(len(errs), 1, "one error: %r" % errs)
    check(errs[0].startswith("wixr.yaml:4:25: "), "the true position (not 0:0): %r" % errs[0])
    check("did not find expected ',' or ']'" in errs[0], "libyaml's reason: %r" % errs[0])
    w = Work("hooks:\n  ev:\n    - script: h.lua\n\t  bad: tab\n", {"h.lua": HANDLER_OPTIONS})
    errs = config_error(w)
    check(len(errs) == 1 and errs[0].startswith("wixr.yaml:4:1: ") and "tab" in errs[0], "tab: %r" % errs)


@test
def config_duplicate_keys():
    w = Work("hooks:\n  ev:\n    - script: h.lua\nhooks:\n  ev2: []\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:1: duplicate key: hooks"], "top level")
    w = Work("hooks:\n  ev:\n    - script: h.lua\n      script: h.lua\n", {"h.lua": HANDLER_OPTIONS})
    eq(config_error(w), ["wixr.yaml:4:7: duplicate key: script"], "in a hook entry")


@test
def config_several_errors_are_all_listed():
    cfg = ("extra: 1\n"
           "wix:\n  timeout_ms: soon\n"
           "runtime:\n  max_chain_depth: 100\n  limits: {wall_ms: -5}\n"
           "hooks:\n  a:\n    - script: nope.lua\n    - script: h.lua\n      on_error: maybe\n"
           "  b:\n    - script: h.lua\n      allow: [raed]\n")
    w = Work(cfg, {"h.lua": HANDLER_OPTIONS})
    errs = config_error(w)
    check(len(errs) == 7, "seven errors, one per line: %r" % errs)
    eq(errs[0], "wixr.yaml:1:1: unknown key 'extra' in the configuration", "1")
    eq(errs[1], "wixr.yaml:3:15: wix.timeout_ms: expected a whole number, got 'soon'", "2")
    eq(sorted(errs[2:4]), ["wixr.yaml:5:20: runtime.max_chain_depth: 100 is out of range (0 to 64)",
                           "wixr.yaml:6:21: runtime.limits.wall_ms: -5 is out of range (1 to 86400000)"], "3, 4")
    check(errs[4].startswith("wixr.yaml:9:15: script: ") and errs[4].endswith("nope.lua does not exist"),
          "5: %r" % errs[4])
    eq(errs[5], "wixr.yaml:11:17: on_error: 'maybe' is not stop or continue", "6")
    eq(errs[6], "wixr.yaml:14:15: allow: unknown operation 'raed' (did you mean 'read'?)", "7")


@test
def config_several_errors_in_one_block_are_all_listed():
    cfg = ("wix:\n  timeout_ms: soon\n  retry: {attempts: x}\n"
           "hooks:\n  a:\n    - script: h.lua\n      on_error: maybe\n      allow: [raed]\n      enabled: 3\n")
    w = Work(cfg, {"h.lua": HANDLER_OPTIONS})
    errs = config_error(w)
    want = ["wixr.yaml:2:15: wix.timeout_ms: expected a whole number, got 'soon'",
            "wixr.yaml:3:21: wix.retry.attempts: expected a whole number, got 'x'",
            "wixr.yaml:7:17: on_error: 'maybe' is not stop or continue",
            "wixr.yaml:8:15: allow: unknown operation 'raed' (did you mean 'read'?)",
            "wixr.yaml:9:16: enabled: expected true or false, got '3'"]
    missing = [x for x in want if x not in errs]
    check(not missing, "every error of the wix block and of the hook entry is listed; missing %r (got %r)"
          % (missing, errs))


@test
def config_with_only_hooks_key_is_valid():
    w = Work("hooks:\n")
    r = w.check()
    eq((r.rc, r.out), (0, "wixr.yaml: ok (0 hooks, 0 enabled, transport sandbox)\n"),
       "a file with only 'hooks:' (%s)" % r)


# ---------------------------------------------------------------------------
# 2. wixr check
# ---------------------------------------------------------------------------

SYNTAX_ERROR = "return function(event, ctx)\n  local x = = 1\nend\n"


@test
def check_ok_output():
    cfg = ("hooks:\n  a:\n    - script: h.lua\n    - script: broken.lua\n      enabled: false\n"
           "  b:\n    - script: h.lua\n      allow: [read]\n      limits: {instructions: 5000}\n")
    w = Work(cfg, {"h.lua": HANDLER_OPTIONS, "broken.lua": SYNTAX_ERROR})
    r = w.check()
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.out, "wixr.yaml: ok (3 hooks, 2 enabled, transport sandbox)\n", "output (a disabled script is not compiled)")
    eq([x for x in r.lines() if x], [], "nothing else on stderr")
    w.write("other.yaml", "hooks:\n  x:\n    - script: h.lua\n")
    r = w.check("--config", "other.yaml")
    eq((r.rc, r.out), (0, "other.yaml: ok (1 hook, 1 enabled, transport sandbox)\n"), "--config (%s)" % r)


@test
def check_lists_every_broken_script():
    cfg = ("hooks:\n  a:\n    - script: syntax.lua\n    - script: h.lua\n    - script: nothing.lua\n"
           "  b:\n    - script: number.lua\n")
    w = Work(cfg, {"h.lua": HANDLER_OPTIONS, "syntax.lua": SYNTAX_ERROR, "nothing.lua": "local x = 1\n",
                   "number.lua": "return 42\n"})
    r = w.check()
    eq(r.rc, 3, "exit status (%s)" % r)
    eq(r.out, "", "no ok line")
    errs = [x for x in r.lines() if x]
    eq(len(errs), 3, "three broken scripts: %r" % errs)
    check(re.fullmatch(r"(\./)?syntax\.lua:2: unexpected symbol near '='", errs[0]), "syntax error: %r" % errs[0])
    check(re.fullmatch(r"(\./)?nothing\.lua: the script must return its handler function \(got nil\)", errs[1]),
          "returns nil: %r" % errs[1])
    check(re.fullmatch(r"(\./)?number\.lua: the script must return its handler function \(got number\)", errs[2]),
          "returns a number: %r" % errs[2])
    r = w.fire("a")
    eq(r.rc, 3, "fire refuses to start with a broken script (%s)" % r)
    check("syntax.lua:2:" in r.err, "fire lists it too: %r" % r.err)


@test
def check_config_errors_come_before_scripts():
    cfg = "hooks:\n  a:\n    - script: syntax.lua\n    - script: nope.lua\n"
    w = Work(cfg, {"syntax.lua": SYNTAX_ERROR})
    errs = config_error(w)
    eq(len(errs), 1, "only the configuration error: %r" % errs)
    check(errs[0].startswith("wixr.yaml:4:15: script: ") and errs[0].endswith("nope.lua does not exist"),
          "message: %r" % errs[0])
    check(not any("syntax.lua" in x for x in errs), "scripts are not compiled while the configuration is bad")


# ---------------------------------------------------------------------------
# 3. The sandbox
# ---------------------------------------------------------------------------

PROBE = r"""
local function try(f, ...)
  local ok, e = pcall(f, ...)
  if ok then return { ok = true, value = tostring(e) } end
  return { ok = false, err = tostring(e) }
end
return function(event, ctx)
  local r = {}
  r.dump = try(function() return string.dump end)
  local chunk, why = load("\27Lua\84\0\25\147\13\10\26\10\4\8\8")
  r.binary = { chunk = type(chunk), err = tostring(why) }
  r.mode_b = try(load, "return 1", "x", "b")
  r.mode_bt = try(load, "return 1", "x", "bt")
  r.load_fn = try(load, function() return nil end)
  r.load_text = try(function() return load("return 1 + 1")() end)
  r.load_env = try(function() return load("return io", "x", "t")() end)
  r.names = {}
  for _, n in ipairs({ "debug", "io", "package", "dofile", "loadfile", "loadstring", "module", "newproxy",
                       "setfenv", "getfenv", "rawequal_", "collectgarbage_" }) do
    r.names[n] = try(function() return type(_G[n]) end)
  end
  r.os = {}
  for _, n in ipairs({ "execute", "getenv", "exit", "remove", "rename", "tmpname", "setlocale", "time", "clock",
                       "date", "difftime" }) do
    r.os[n] = try(function() return type(os[n]) end)
  end
  r.req_io = try(require, "io")
  r.req_os = try(require, "os")
  r.req_debug = try(require, "debug")
  r.req_core = try(require, "wix.core")
  r.req_c = try(require, "lfs")
  r.req_outside = try(require, "outside")
  r.req_dots = try(require, "..outside")
  r.req_slash = try(require, "../outside")
  r.req_lib = try(function() return require("mylib").answer end)
  r.req_cjson = try(function() return type(require("cjson").encode) end)
  r.gc_collect = try(collectgarbage, "collect")
  r.gc_stop = try(collectgarbage, "stop")
  r.gc_count = type(collectgarbage("count"))
  r.G_is_env = _G == _ENV
  r.string_mt = tostring(getmetatable(""))
  r.set_string_mt = try(setmetatable, "", {})
  r.string_index_write = try(function() local s = "" s.format = nil end)
  r.string_methods = ("ab"):rep(2)
  return r
end
"""


@test
def sandbox_escapes_fail_safely():
    cfg = "runtime:\n  lua_paths: [lib]\nhooks:\n  probe:\n    - script: probe.lua\n"
    w = Work(cfg, {"probe.lua": PROBE, "lib/mylib.lua": "return { answer = 42 }\n",
                   "outside.lua": "return { escaped = true }\n", "lfs.so": "not a library\n"})
    r = w.fire("probe", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    p = hook_of(r.json)["result"]
    # what the sandbox leaves out says so, naming the script's line
    def refused(v, name, where=r"probe\.lua:\d+: "):
        check(v["ok"] is False and re.match("^%s%s is not available to hooks \\(see docs/SECURITY\\.md\\)$"
                                            % (where, re.escape(name)), v["err"]), "%s refused: %r" % (name, v))
    refused(p["dump"], "string.dump")
    eq(p["binary"]["chunk"], "nil", "a binary chunk is not loaded")
    check("attempt to load a binary chunk" in p["binary"]["err"], "binary chunk refused: %r" % p["binary"])
    for k in ("mode_b", "mode_bt"):
        eq(p[k], {"ok": False, "err": 'load: only text chunks (mode "t") are allowed'}, "load with mode " + k)
    eq(p["load_fn"], {"ok": False, "err": "load: only strings can be loaded by scripts"}, "load of a function")
    eq(p["load_text"], {"ok": True, "value": "2"}, "load of text works")
    refused(p["load_env"], "io", r'\[string "x"\]:1: ')  # a loaded chunk gets the script's env
    for n in ("debug", "io", "package", "dofile", "loadfile", "loadstring", "module", "newproxy", "setfenv",
              "getfenv"):
        refused(p["names"][n], n)
    eq(p["names"]["rawequal_"], {"ok": True, "value": "nil"}, "other missing globals are nil")
    eq(p["names"]["collectgarbage_"], {"ok": True, "value": "nil"}, "other missing globals are nil")
    eq(set(p["names"]), {"debug", "io", "package", "dofile", "loadfile", "loadstring", "module", "newproxy",
                         "setfenv", "getfenv", "rawequal_", "collectgarbage_"}, "probed names")
    for n in ("execute", "getenv", "exit", "remove", "rename", "tmpname", "setlocale"):
        refused(p["os"][n], "os." + n)
    for n in ("time", "clock", "date", "difftime"):
        eq(p["os"][n], {"ok": True, "value": "function"}, "os." + n)
    not_found = ("require: module '%s' not found (scripts may require \"wix\" and modules on runtime.lua_paths)")
    for k, name in (("req_io", "io"), ("req_os", "os"), ("req_debug", "debug"), ("req_core", "wix.core"),
                    ("req_c", "lfs"), ("req_outside", "outside"), ("req_dots", "..outside")):
        eq(p[k], {"ok": False, "err": not_found % name}, "require %s" % name)
    eq(p["req_slash"], {"ok": False, "err": "require: bad module name '../outside'"}, "require with a slash")
    eq(p["req_lib"], {"ok": True, "value": "42"}, "a module on lua_paths")
    eq(p["req_cjson"], {"ok": True, "value": "function"}, "cjson")
    msg = 'collectgarbage: only "count" is available to scripts'
    eq(p["gc_collect"], {"ok": False, "err": msg}, 'collectgarbage("collect")')
    eq(p["gc_stop"], {"ok": False, "err": msg}, 'collectgarbage("stop")')
    eq(p["gc_count"], "number", 'collectgarbage("count")')
    eq(p["G_is_env"], True, "_G is the script's env")
    eq(p["string_mt"], "false", 'getmetatable("")')
    eq(p["set_string_mt"]["ok"], False, "setmetatable on a string")
    eq(p["string_index_write"]["ok"], False, "writing through a string")
    eq(p["string_methods"], "abab", "string methods still work")


STRING_GLOBALS_1 = r"""
local wix = require "wix"
return function(event, ctx)
  local seen = { counter = counter, added = ctx.options.added, n = #ctx.options.list, name = ctx.options.name,
                 fmt = type(string.format) }
  counter = (counter or 0) + 1
  marker = "from g1"
  ctx.options.added = true
  table.insert(ctx.options.list, 3)
  ctx.options.name = "changed"
  string.format, string.gsub, string.match = nil, nil, nil
  string.rep = function() error("hijacked") end
  table.concat = nil
  local ok, err = pcall(wix.packages.get, "not-a-guid")
  seen.wix_error = tostring(err)
  local p = wix.packages.create{ account_id = "%s",
    products = {{ catalog_product_id = "%s", country_code = "de" }} }
  seen.created = type(p.id)
  seen.country = p.product_instances[1].country_code
  ctx.log("info", "probe", seen)
  return seen
end
""" % (JANE, P_SERVICE)

STRING_GLOBALS_2 = r"""
return function(event, ctx)
  local seen = { marker = tostring(marker), counter = tostring(counter), fmt = type(string.format) }
  ctx.log("info", "probe", seen)
  return seen
end
"""


@test
def sandbox_globals_options_and_the_string_library():
    cfg = ("hooks:\n  g:\n    - script: g1.lua\n      options: {list: [1, 2], name: first}\n"
           "    - script: g2.lua\n")
    w = Work(cfg, {"g1.lua": STRING_GLOBALS_1, "g2.lua": STRING_GLOBALS_2}, wix=True)
    r = w.batch([{"event": "g", "id": "1"}, {"event": "g", "id": "2"}], "--json", "--concurrency", "1")
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(summary(r)["ok"], 2, "both events ok: %r" % r.out)
    logs = [x["fields"] for x in r.log_lines() if x.get("msg") == "probe"]
    g1 = [x for x in logs if x["hook"] == "g (g1.lua)"]
    g2 = [x for x in logs if x["hook"] == "g (g2.lua)"]
    eq(len(g1), 2, "g1 ran twice: %r" % logs)
    eq(len(g2), 2, "g2 ran twice: %r" % logs)
    # The first run changed string.format/table.concat in its env: wix still works.
    for x in g1:
        check(re.search(r"g1\.lua:14: wix: 400 INVALID_ARGUMENT: id: must be a GUID", x["wix_error"]),
              "wix errors are formatted although the script removed string.format: %r" % x["wix_error"])
        eq((x["created"], x["country"]), ("string", "DE"), "wix.packages.create works")
    # A global set in a run is the run's own: the next run of the same hook does not see it ...
    eq([x.get("counter") for x in g1], [None, None], "a run does not see the globals an earlier run set")
    # The script's change to its own copy of the string library lives in the hook's state ...
    eq(g1[1]["fmt"], "nil", "the script's string table lives in the hook's state")
    # ... but neither is visible to another hook's script.
    eq([(x["marker"], x["counter"], x["fmt"]) for x in g2], [("nil", "nil", "function")] * 2,
       "another hook's globals and string table are its own")
    # ctx.options is fresh for every run.
    for i, x in enumerate(g1):
        eq((x.get("added"), x["n"], x["name"]), (None, 2, "first"), "run %d sees the configured options" % (i + 1))


@test
def sandbox_dry_run_cannot_be_switched_off_by_a_script():
    script = r"""
local wix = require "wix"
return function(event, ctx)
  local attempts = {}
  attempts.assign = pcall(function() wix.settings.dry_run = false end)
  attempts.rawset = pcall(rawset, wix.settings, "dry_run", false)
  attempts.metatable = pcall(function()
    local mt = getmetatable(wix.settings)
    if type(mt) == "table" and type(mt.__index) == "table" then mt.__index.dry_run = false end
  end)
  local p = wix.packages.create{ account_id = "%s",
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  return { attempts = attempts, simulated = p.dry_run == true, dry = ctx.dry_run }
end
""" % (JANE, P_SERVICE)
    w = Work("hooks:\n  d:\n    - script: d.lua\n  count:\n    - script: count.lua\n",
             {"d.lua": script, "count.lua": COUNT}, wix=True)
    r = w.fire("d", "--dry-run", "--json")
    c = w.fire("count", "--json")
    eq(c.rc, 0, "count (%s)" % c)
    eq(hook_of(c.json)["result"]["n"], 0, "no package was created by a --dry-run run (report: %s)" % r.out.strip())
    h = hook_of(r.json)
    if h["status"] == "ok":
        eq(h["result"]["simulated"], True, "the create was simulated")
        eq(len(h.get("planned", [])), 1, "the create is planned")


# ---------------------------------------------------------------------------
# 4. Limits
# ---------------------------------------------------------------------------

LIMITS = "runtime:\n  limits: {%s}\nhooks:\n  bad:\n    - script: bad.lua\n%s  good:\n    - script: good.lua\n"


def limit_case(script, limits="instructions: 1000000, wall_ms: 3000", hook_extra="", timeout=4, wix=False):
    """A batch: the bad event, then a good one (one at a time). Returns (run, report, the bad hook's error)."""
    w = Work(LIMITS % (limits, hook_extra), {"bad.lua": script, "good.lua": GOOD}, wix=wix)
    r = w.batch([{"event": "bad", "id": "b1"}, {"event": "good", "id": "g1"}], "--json", "--concurrency", "1",
                timeout=timeout)
    rep = summary(r)
    eq(r.rc, 1, "exit status (%s)" % r)
    eq((rep["events"], rep["ok"], rep["failed"]), (2, 1, 1),
       "the bad event failed, the good one after it succeeded: %r" % rep)
    eq([f["event"] for f in rep["failures"]], ["bad"], "failures")
    h = rep["failures"][0]["hooks"][0]
    eq((h["hook"], h["status"]), ("bad (bad.lua)", "failed"), "the bad hook's status")
    check(h["error"].startswith("bad (bad.lua): "), "the error names the hook and script: %r" % h["error"])
    return w, r, rep, h["error"]


def instruction_error(err, line):
    check(re.search(r"(^|[ /])bad\.lua:%d: instruction limit exceeded \(1000000\)$" % line, err),
          "instruction limit error at bad.lua:%d: %r" % (line, err))


@test
def limits_infinite_loop():
    _, _, _, err = limit_case("return function(event, ctx)\n  while true do end\nend\n")
    instruction_error(err, 2)


@test
def limits_pcall_cannot_swallow_the_instruction_limit():
    script = ("return function(event, ctx)\n  local n = 0\n  while true do\n    n = n + 1\n"
              "    pcall(function() while true do end end)\n  end\nend\n")
    _, _, _, err = limit_case(script)
    instruction_error(err, 5)


@test
def limits_loop_inside_coroutine_wrap():
    script = ("return function(event, ctx)\n  local f = coroutine.wrap(function()\n    while true do end\n"
              "  end)\n  f()\n  return 'unreachable'\nend\n")
    _, _, _, err = limit_case(script)
    instruction_error(err, 3)


@test
def limits_loop_inside_coroutine_create_resume():
    script = ("return function(event, ctx)\n  local co = coroutine.create(function()\n    while true do end\n"
              "  end)\n  local ok, err = coroutine.resume(co)\n  return { resumed = ok, err = err }\nend\n")
    _, _, _, err = limit_case(script)
    instruction_error(err, 3)


@test
def limits_loop_inside_wix_spawn_wait():
    script = ('local wix = require "wix"\nreturn function(event, ctx)\n  return wix.spawn(function()\n'
              '    while true do end\n  end):wait()\nend\n')
    _, _, _, err = limit_case(script)
    check("instruction limit exceeded (1000000)" in err, "instruction limit: %r" % err)


@test
def limits_loop_inside_wix_all():
    script = ('local wix = require "wix"\nreturn function(event, ctx)\n  return wix.all{ function()\n'
              '    while true do end\n  end }\nend\n')
    _, _, _, err = limit_case(script)
    check("instruction limit exceeded (1000000)" in err, "instruction limit: %r" % err)


@test
def limits_deep_recursion_is_a_stack_overflow():
    script = "return function(event, ctx)\n  local function f() return 1 + f() end\n  return f()\nend\n"
    # Reaching Lua's stack limit (about 200k frames) takes more than the default 64 MB
    # and more than 1M instructions.
    _, _, _, err = limit_case(script, hook_extra="      limits: {memory_mb: 256, instructions: 100000000}\n",
                              timeout=10)
    check(re.search(r"(^|[ /])bad\.lua:2: stack overflow", err), "stack overflow at bad.lua:2: %r" % err)


@test
def limits_string_rep_memory_bomb():
    script = 'return function(event, ctx)\n  local s = string.rep("x", 2^30)\n  return #s\nend\n'
    _, _, _, err = limit_case(script, "instructions: 1000000, wall_ms: 3000, memory_mb: 16")
    eq(err, "bad (bad.lua): bad.lua:2: memory limit exceeded (16 MB)", "error")  # where the cap broke


@test
def limits_table_growth_memory_bomb():
    script = ("return function(event, ctx)\n  local t = {}\n  for i = 1, 1e9 do t[i] = { i } end\n"
              "  return #t\nend\n")
    _, _, _, err = limit_case(script, "instructions: 100000000000, wall_ms: 5000, memory_mb: 16", timeout=8)
    eq(err, "bad (bad.lua): bad.lua:3: memory limit exceeded (16 MB)", "error")  # where the cap broke


@test
def limits_wall_time_while_waiting_in_wix_sleep():
    script = 'local wix = require "wix"\nreturn function(event, ctx)\n  wix.sleep(5000)\n  return 1\nend\n'
    w, r, rep, err = limit_case(script, "wall_ms: 300", timeout=10)
    # the message names where the run was waiting when the limit struck
    eq(err, "bad (bad.lua): bad.lua:3: wall time limit exceeded (300 ms) while waiting", "error")
    ms = rep["failures"][0]["hooks"][0]["ms"]
    check(290 <= ms < 1000, "the run ended at about 300 ms: %r" % ms)
    check(r.elapsed < 2.0, "the batch finished soon after the limit, not after the 5 s sleep: %.2f s" % r.elapsed)


@test
def limits_wall_time_on_a_busy_loop():
    script = "return function(event, ctx)\n  local n = 0\n  while true do n = n + 1 end\nend\n"
    _, r, _, err = limit_case(script, "instructions: 100000000000, wall_ms: 300")
    check(re.search(r"(^|[ /])bad\.lua:3: wall time limit exceeded \(300 ms\)$", err), "error: %r" % err)
    check(r.elapsed < 2.0, "elapsed %.2f s" % r.elapsed)


@test
def limits_apply_inside_gc_finalizers():
    # Lua runs __gc metamethods with hooks disabled, out of reach of every
    # limit: the sandbox refuses finalizers, so the host cannot hang on one.
    script = ("return function(event, ctx)\n"
              "  setmetatable({}, { __gc = function() while true do end end })\n"
              "  for i = 1, 100000 do local t = { i } end\n"
              "  return 'done'\nend\n")
    _, r, _, err = limit_case(script, "instructions: 1000000, wall_ms: 300")
    check("bad.lua:2: setmetatable: __gc finalizers are not allowed in scripts" in err, "refused: %r" % err)


@test
def limits_wall_time_stops_a_long_pattern_match():
    # One C call (string.find with a backtracking pattern) runs no Lua
    # instruction for a long time, where no limit can stop it: the sandbox
    # refuses patterns whose backtracking could run away on a long subject.
    script = ("return function(event, ctx)\n  local s = string.rep('a', 5000)\n"
              "  return s:find('.-.-.-.-b') or 'no match'\nend\n")
    _, r, _, err = limit_case(script, "instructions: 1000000, wall_ms: 300")
    check("bad.lua:3: pattern too costly for a 5000-byte string" in err, "refused: %r" % err)


@test
def limits_apply_to_a_coroutine_created_when_the_script_loaded():
    script = ("local co = coroutine.wrap(function()\n  coroutine.yield()\n  while true do end\nend)\nco()\n"
              "return function(event, ctx)\n  co()\n  return 'unreachable'\nend\n")
    _, _, _, err = limit_case(script)
    instruction_error(err, 3)


@test
def limits_apply_to_a_coroutine_kept_from_an_earlier_run():
    # kept in a table of the script's top level: a run's own globals end with it
    script = ("local keep = {} return function(event, ctx)\n  if not keep.saved then\n"
              "    keep.saved = coroutine.wrap(function() coroutine.yield('stored') while true do end end)\n"
              "    return keep.saved()\n  end\n  return keep.saved()\nend\n")
    w = Work(LIMITS % ("instructions: 1000000, wall_ms: 3000", ""), {"bad.lua": script, "good.lua": GOOD})
    r = w.batch([{"event": "bad", "id": "1"}, {"event": "bad", "id": "2"}, {"event": "good", "id": "3"}],
                "--json", "--concurrency", "1", timeout=4)
    rep = summary(r)
    eq((rep["events"], rep["ok"], rep["failed"]), (3, 2, 1), "the second run failed, the others ok: %r" % rep)
    eq(rep["failures"][0]["id"], "2", "the failed run")
    instruction_error(rep["failures"][0]["hooks"][0]["error"], 3)


# ---------------------------------------------------------------------------
# 5. Permissions
# ---------------------------------------------------------------------------

PERMS = ("hooks:\n  ro:\n    - script: create.lua\n      allow: [read]\n"
         "  one:\n    - script: create.lua\n      max_mutations: 1\n"
         "  cr:\n    - script: create.lua\n      allow: [create]\n"
         "  count:\n    - script: count.lua\n      allow: [query]\n")


def perm_work():
    return Work(PERMS, {"create.lua": CREATE, "count.lua": COUNT}, wix=True)


def packages(w):
    r = w.fire("count", "--json")
    eq(r.rc, 0, "count (%s)" % r)
    return hook_of(r.json)["result"]["n"]


@test
def permissions_read_only_hook_cannot_create():
    w = perm_work()
    r = w.fire("ro", "--json")
    eq(r.rc, 1, "exit status (%s)" % r)
    h = hook_of(r.json)
    eq(h["status"], "failed", "status")
    check("ro (create.lua): create.lua:5: operation 'create' is not allowed for this hook (allow: get, query)" in h["error"],
          "error: %r" % h["error"])
    eq(packages(w), 0, "nothing created")
    r = w.fire("ro")
    eq(r.rc, 1, "human exit status")
    check(re.search(r"^  FAILED  ro \(create\.lua\)  \d+ ms$", r.out, re.M), "FAILED line: %r" % r.out)
    check("operation 'create' is not allowed for this hook (allow: get, query)" in r.out, "error shown: %r" % r.out)


@test
def permissions_error_names_the_script_line():
    w = perm_work()
    h = hook_of(w.fire("ro", "--json").json)
    check(re.search(r"create\.lua:5: ", h["error"]) and "[wix]:" not in h["error"],
          "the error points at the script's call (create.lua:5), not into the wix module: %r" % h["error"])


@test
def permissions_max_mutations():
    w = perm_work()
    w.write("two.json", '{"n": 2}')
    r = w.fire("one", "--data", "two.json", "--json")
    eq(r.rc, 1, "exit status (%s)" % r)
    h = hook_of(r.json)
    check(h["error"].startswith("one (create.lua): ")
          and "one (create.lua): create.lua:5: more than 1 mutating call in one run (max_mutations)" in h["error"],
          "error: %r" % h["error"])
    eq(packages(w), 1, "the first create went through, the second was refused")
    r = w.fire("one", "--json")
    eq((r.rc, hook_of(r.json)["result"]), (0, {"n": 1, "dry": False}), "one mutation is fine")


@test
def permissions_are_enforced_in_dry_run():
    w = perm_work()
    r = w.fire("ro", "--dry-run", "--json")
    eq(r.rc, 1, "allow [read] in dry-run (%s)" % r)
    check("ro (create.lua): create.lua:5: operation 'create' is not allowed for this hook (allow: get, query)"
          in hook_of(r.json)["error"], "error: %r" % hook_of(r.json))
    check("planned" not in hook_of(r.json), "nothing planned: %r" % hook_of(r.json))
    w.write("two.json", '{"n": 2}')
    r = w.fire("one", "--dry-run", "--data", "two.json", "--json")
    eq(r.rc, 1, "max_mutations in dry-run (%s)" % r)
    h = hook_of(r.json)
    check("more than 1 mutating call in one run (max_mutations)" in h["error"], "error: %r" % h["error"])
    eq(len(h["planned"]), 1, "the first create is planned")
    eq((h["planned"][0]["method"], h["planned"][0]["path"]), ("POST", "/resellers/v2/packages"), "planned call")
    eq(h["planned"][0]["body"]["products"][0]["catalogProductId"], P_SERVICE, "planned body (wire names)")
    r = w.fire("one", "--dry-run", "--json")
    eq((r.rc, hook_of(r.json)["result"], len(hook_of(r.json)["planned"])), (0, {"n": 1, "dry": True}, 1),
       "one planned mutation is fine")
    r = w.fire("one", "--dry-run")
    check(re.search(r"^          planned: POST /resellers/v2/packages \{", r.out, re.M), "human plan: %r" % r.out)
    eq(packages(w), 0, "nothing was created in dry-run")


@test
def permissions_allow_create_permits_create():
    w = perm_work()
    w.write("two.json", '{"n": 2}')
    r = w.fire("cr", "--data", "two.json", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(hook_of(r.json)["result"], {"n": 2, "dry": False}, "result")
    eq(packages(w), 2, "two packages")


@test
def permissions_follow_spawned_tasks():
    script = r"""
local wix = require "wix"
return function(event, ctx)
  local t = wix.spawn(function()
    return wix.packages.create{ account_id = "%s",
      products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  end)
  local ok, err = pcall(t.wait, t)
  local all_ok, all_err = pcall(wix.all, { function()
    return wix.packages.create{ account_id = "%s",
      products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  end })
  return { spawn = ok, spawn_err = tostring(err), all = all_ok, all_err = tostring(all_err) }
end
""" % (JANE, P_SERVICE, JANE, P_SERVICE)
    w = Work("hooks:\n  sp:\n    - script: sp.lua\n      allow: [read]\n  count:\n    - script: count.lua\n",
             {"sp.lua": script, "count.lua": COUNT}, wix=True)
    r = w.fire("sp", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    res = hook_of(r.json)["result"]
    eq((res["spawn"], res["all"]), (False, False), "both refused: %r" % res)
    for k in ("spawn_err", "all_err"):
        check("operation 'create' is not allowed for this hook (allow: get, query)" in res[k], "%s: %r" % (k, res))
    eq(packages(w), 0, "nothing created")


# ---------------------------------------------------------------------------
# 6. Batches and single events
# ---------------------------------------------------------------------------

EV = ('return function(event, ctx)\n  if event.fail then error("boom " .. tostring(event.n)) end\n'
      '  return { n = event.n, id = ctx.event.id }\nend\n')
SECOND = "return function(event, ctx)\n  return { second = true }\nend\n"
ORDER_CFG = ("hooks:\n  order:\n    - script: ev.lua\n    - script: second.lua\n"
             "  cont:\n    - script: ev.lua\n      on_error: continue\n    - script: second.lua\n")

MIXED = [
    '{"event":"order","id":"o1","data":{"n":1}}',
    '{"event":"order","id":"o2","data":{"n":2,"fail":true}}',
    '{"event":"order","data":{"n":3',
    'not json',
    '',
    '{"event":"nohooks"}',
    '["a"]',
    '{"id":"z"}',
    '{"event":"cont","id":"c1","data":{"n":4,"fail":true}}',
    '{"event":"order","id":7,"data":{"n":5}}',
    '{"event":"order","id":"o6","data":[1]}',
    '{"event":"order","id":true}',
    '{"event":"order","id":"o1","data":{"n":1}}',
    '{"event":"order","data":{"n":8}}',
]
MALFORMED = [
    "events.ndjson:3: column 31: ',' or '}' expected in object (line skipped)",
    "events.ndjson:4: column 1: unexpected character (line skipped)",
    "events.ndjson:7: a line must be a JSON object (line skipped)",
    'events.ndjson:8: "event" (a non-empty string) is required (line skipped)',
    'events.ndjson:11: "data" must be an object (line skipped)',
    'events.ndjson:12: "id" must be a string or a number (line skipped)',
]


def batch_work():
    w = Work(ORDER_CFG, {"ev.lua": EV, "second.lua": SECOND})
    w.write("events.ndjson", "\n".join(MIXED) + "\n")
    return w


@test
def batch_mixed_lines_human_report():
    w = batch_work()
    r = w.fire("--batch", "events.ndjson", "--quiet")
    eq(r.rc, 1, "exit status (%s)" % r)
    lines = r.lines()
    eq([x for x in lines if "(line skipped)" in x], MALFORMED, "malformed lines, with their line numbers")
    summary = [x for x in lines if " events: " in x]
    eq(len(summary), 1, "one summary line: %r" % lines)
    check(re.fullmatch(r"7 events: 3 ok, 2 failed, 2 skipped \(1 seen before, 1 without hooks\), "
                       r"6 malformed lines; \d+\.\d\d s, \d+ events/s", summary[0]), "summary: %r" % summary[0])
    idx = lines.index(summary[0])
    failures = sorted(lines[idx + 1:])
    eq(len(failures), 2, "each failure listed after the summary: %r" % lines)
    check(re.fullmatch(r"  cont c1: cont \(ev\.lua\): (\./)?ev\.lua:2: boom 4", failures[0]), "c1: %r" % failures[0])
    check(re.fullmatch(r"  order o2: order \(ev\.lua\): (\./)?ev\.lua:2: boom 2", failures[1]), "o2: %r" % failures[1])
    r = w.run("fire", "--batch", "-", "--quiet", "--no-dedupe", stdin="\n".join(MIXED) + "\n")
    eq([x for x in r.lines() if "(line skipped)" in x], [x.replace("events.ndjson", "<stdin>") for x in MALFORMED],
       "standard input is named <stdin>")


@test
def batch_json_report_and_dedupe_across_runs():
    w = batch_work()
    r = w.fire("--batch", "events.ndjson", "--json")
    eq(r.rc, 1, "exit status (%s)" % r)
    lines, rep = batch_report(r)
    eq(set(rep), {"summary", "events", "ok", "failed", "skipped", "duplicates", "queued", "malformed", "unrecorded",
                  "seconds", "failures"}, "fields")
    eq({k: rep[k] for k in ("events", "ok", "failed", "skipped", "duplicates", "malformed")},
       {"events": 7, "ok": 3, "failed": 2, "skipped": 2, "duplicates": 1, "malformed": 6}, "counts")
    eq(len(lines), 7, "one line per event: %r" % r.out)
    check(isinstance(rep["seconds"], (int, float)) and 0 <= rep["seconds"] < 10, "seconds: %r" % rep["seconds"])
    fails = sorted(rep["failures"], key=lambda f: f["id"])
    eq([(f["event"], f["id"], f["ok"]) for f in fails], [("cont", "c1", False), ("order", "o2", False)], "failures")
    o2 = fails[1]["hooks"]
    eq([(h["hook"], h["status"]) for h in o2], [("order (ev.lua)", "failed"), ("order (second.lua)", "skipped")],
       "on_error: stop skips the second hook")
    check(re.fullmatch(r"order \(ev\.lua\): (\./)?ev\.lua:2: boom 2", o2[0]["error"]), "error: %r" % o2[0]["error"])
    c1 = fails[0]["hooks"]
    eq([(h["hook"], h["status"]) for h in c1], [("cont (ev.lua)", "failed"), ("cont (second.lua)", "ok")],
       "on_error: continue runs the second hook")
    eq(c1[1]["result"], {"second": True}, "the second hook's result")
    check(all(isinstance(h["ms"], int) for f in fails for h in f["hooks"]), "ms on every hook")
    # The same batch again: the done ids are skipped, the failed ones (o2, c1) run again.
    r = w.fire("--batch", "events.ndjson", "--json")
    eq(r.rc, 1, "exit status (%s)" % r)
    rep = summary(r)
    eq({k: rep[k] for k in ("events", "ok", "failed", "skipped", "duplicates", "malformed")},
       {"events": 7, "ok": 1, "failed": 2, "skipped": 4, "duplicates": 3, "malformed": 6},
       "second run: o1, 7 and the repeated o1 are duplicates; o2, c1 and the event without an id run")
    eq(sorted(f["id"] for f in rep["failures"]), ["c1", "o2"], "the failed events ran again")
    r = w.fire("--batch", "events.ndjson", "--json", "--no-dedupe")
    eq({k: summary(r)[k] for k in ("events", "ok", "failed", "skipped", "duplicates", "malformed")},
       {"events": 7, "ok": 4, "failed": 2, "skipped": 1, "duplicates": 0, "malformed": 6}, "--no-dedupe runs all")
    check(os.path.exists(os.path.join(w.dir, ".wixr", "journal.db")), "the events are in .wixr/journal.db")
    check(not os.path.exists(os.path.join(w.dir, ".wixr", "events.db")), "no second store")


FIXABLE = ('return function(event, ctx)\n  if event.fail and not ctx.options.fixed then error("boom " .. event.n) end\n'
           '  return { n = event.n }\nend\n')


@test
def batch_rerun_after_a_fix_runs_the_failed_events_only():
    cfg = "hooks:\n  order:\n    - script: fx.lua\n%s"
    w = Work(cfg % "", {"fx.lua": FIXABLE})
    events = [{"event": "order", "id": "a", "data": {"n": 1}}, {"event": "order", "id": "b", "data": {"n": 2, "fail": True}},
              {"event": "order", "id": "c", "data": {"n": 3}}]
    r = w.batch(events, "--json")
    eq(r.rc, 1, "b failed (%s)" % r)
    lines, _ = batch_report(r)
    eq(sorted((x["id"], x["ok"]) for x in lines), [("a", True), ("b", False), ("c", True)], "first run")
    w.write("wixr.yaml", cfg % "      options: {fixed: true}\n")
    r = w.batch(events, "--json")
    eq(r.rc, 0, "the re-run after the fix succeeds (%s)" % r)
    lines, rep = batch_report(r)
    eq(sorted((x["id"], x.get("skipped"), x["ok"]) for x in lines),
       [("a", "done before", True), ("b", None, True), ("c", "done before", True)], "only b ran: %r" % lines)
    eq(hook_of([x for x in lines if x["id"] == "b"][0])["result"], {"n": 2}, "b's result")
    eq((rep["ok"], rep["failed"], rep["skipped"], rep["duplicates"]), (1, 0, 2, 2), "summary: %r" % rep)
    r = w.batch(events, "--json")
    eq((r.rc, summary(r)["ok"], summary(r)["skipped"]), (0, 0, 3), "a third run runs nothing (%s)" % r)


@test
def dry_run_uses_up_no_event_id():
    w = Work("hooks:\n  cr:\n    - script: cr.lua\n  count:\n    - script: count.lua\n",
             {"cr.lua": CREATE, "count.lua": COUNT}, wix=True)
    r = w.fire("cr", "--id", "x-1", "--dry-run", "--json")
    eq(r.rc, 0, "dry run (%s)" % r)
    eq((r.json["dry_run"], hook_of(r.json)["result"], len(hook_of(r.json)["planned"])), (True, {"n": 1, "dry": True}, 1),
       "planned, not sent: %r" % r.json)
    check(not os.path.exists(os.path.join(w.dir, ".wixr", "journal.db")), "a dry run records nothing")
    r = w.fire("cr", "--id", "x-1", "--dry-run")
    check(re.match(r"event cr \(id x-1\)  \[dry run: nothing sent or recorded\]\n  ok ", r.out),
          "a second dry run runs too, and its report says it is one: %r" % r.out)
    r = w.fire("cr", "--id", "x-1", "--json")
    eq((r.rc, hook_of(r.json)["result"]), (0, {"n": 1, "dry": False}), "then the real run runs (%s)" % r)
    check("dry_run" not in r.json, "a real run's report has no dry_run: %r" % r.json)
    r = w.fire("cr", "--id", "x-1", "--json")
    eq((r.rc, r.json), (0, {"event": "cr", "id": "x-1", "ok": True, "skipped": "done before"}), "then it is done")
    check("wixr fire: event x-1 is done (recorded in the journal); not run (--no-dedupe runs it anyway)" in r.err,
          r.err)
    r = w.fire("cr", "--id", "x-1", "--dry-run", "--json")
    eq((r.rc, r.json.get("skipped"), r.json.get("dry_run")), (0, "done before", True),
       "a dry run of a done event says what a real run would do: %r" % r.json)
    eq(hook_of(w.fire("count", "--json").json)["result"]["n"], 1, "one package: the real run's")
    # A batch: the dry run records nothing either.
    ev = [{"event": "cr", "id": "y-1"}, {"event": "cr", "id": "y-2"}]
    lines, rep = batch_report(w.batch(ev, "--json", "--dry-run"))
    eq([x["dry_run"] for x in lines] + [rep["dry_run"]], [True] * 3, "every line of a dry run says so")
    lines, rep = batch_report(w.batch(ev, "--json"))
    eq((rep["ok"], rep["skipped"]), (2, 0), "the real batch runs both: %r" % rep)
    check(all("dry_run" not in x for x in lines + [rep]), "no dry_run in a real run's lines")


@test
def fire_applies_the_journal_retention():
    """A journal only wixr fire writes is kept as wixr serve keeps it: after a batch, finished
    events beyond serve.journal_keep_events (oldest first) are deleted."""
    w = Work("serve: {journal_keep_events: 3}\n" + ORDER_CFG, {"ev.lua": EV, "second.lua": SECOND})
    r = w.batch([{"event": "order", "id": "keep-%d" % i, "data": {"n": i}} for i in range(8)], "--quiet",
                "--concurrency", "1")
    eq(r.rc, 0, "the batch (%s)" % r)
    r = w.run("events", "list", "--json")
    ids = sorted(json.loads(line)["id"] for line in r.out.splitlines())
    eq(len(ids), 3, "three events kept: %r" % ids)
    check("keep-7" in ids, "the last one is kept: %r" % ids)


@test
def events_list_and_show_see_fire_events():
    w = Work(ORDER_CFG, {"ev.lua": EV, "second.lua": SECOND})
    eq(w.fire("order", "--id", "e-ok", "--data", "-", stdin='{"n": 1}').rc, 0, "e-ok")
    w.batch([{"event": "order", "id": "e-bad", "data": {"n": 2, "fail": True}}], "--quiet")
    r = w.run("events", "list", "--json")
    eq(r.rc, 0, "events list (%s)" % r)
    got = {x["id"]: x for x in (json.loads(line) for line in r.out.splitlines())}
    eq(sorted(got), ["e-bad", "e-ok"], "both events are listed: %r" % r.out)
    eq((got["e-ok"]["name"], got["e-ok"]["state"], got["e-ok"]["attempts"]), ("order", "done", 1), "e-ok")
    eq((got["e-bad"]["state"], got["e-bad"]["attempts"]), ("dead", 1), "e-bad")
    check(re.search(r"boom 2", got["e-bad"]["last_error"] or ""), "last error: %r" % got["e-bad"])
    r = w.run("events", "show", "e-bad")
    eq(r.rc, 0, "events show (%s)" % r)
    check("dead" in r.out and "boom 2" in r.out and "order (second.lua)" in r.out,
          "state, error and per-hook results shown: %r" % r.out)
    # A re-run that fails again counts a second attempt; one without an id gets a new id.
    w.batch([{"event": "order", "id": "e-bad", "data": {"n": 2, "fail": True}}, {"event": "order"}], "--quiet")
    r = w.run("events", "list", "--json")
    got = [json.loads(line) for line in r.out.splitlines()]
    eq([x["attempts"] for x in got if x["id"] == "e-bad"], [2], "second attempt")
    new = [x for x in got if x["id"] not in ("e-ok", "e-bad")]
    eq(len(new), 1, "the event without an id is recorded: %r" % got)
    check(re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", new[0]["id"]),
          "under a new UUID: %r" % new[0]["id"])


@test
def ids_of_an_old_events_db_are_imported_once():
    import sqlite3
    w = Work("hooks:\n  order:\n    - script: ev.lua\n", {"ev.lua": EV})
    os.makedirs(w.path(".wixr"))
    db = sqlite3.connect(w.path(".wixr/events.db"))
    db.execute("CREATE TABLE events(id TEXT PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, token TEXT NOT NULL,"
               " finished INTEGER) WITHOUT ROWID")
    db.executemany("INSERT INTO events VALUES(?, 'order', ?, '', 0)", [("d1", "done"), ("d2", "done"), ("f1", "failed")])
    db.commit()
    db.close()
    events = [{"event": "order", "id": i, "data": {"n": 1}} for i in ("d1", "f1", "n1")]
    r = w.batch(events, "--json", "--concurrency", "1")
    eq(r.rc, 0, "exit status (%s)" % r)
    lines, _ = batch_report(r)
    eq([(x["id"], x.get("skipped")) for x in lines], [("d1", "done before"), ("f1", None), ("n1", None)],
       "a done id of the old file is skipped; a failed one runs again")
    check(re.search(r"wixr fire: 2 finished event ids imported from \.wixr/events\.db into \.wixr/journal\.db "
                    r"\(the old file is now \.wixr/events\.db\.imported\)", r.err), r.err)
    check(not os.path.exists(w.path(".wixr/events.db")) and os.path.exists(w.path(".wixr/events.db.imported")),
          "the old file is renamed")
    r = w.batch(events, "--json")
    eq([x.get("skipped") for x in batch_report(r)[0]], ["done before"] * 3, "all done now (%s)" % r)
    check("imported" not in r.err, "imported once: %r" % r.err)
    got = {x["id"]: x["state"] for x in map(json.loads, w.run("events", "list", "--json").out.splitlines())}
    eq(got, {"d1": "done", "d2": "done", "f1": "done", "n1": "done"}, "the journal")


RAN = ('local wix = require "wix"\nreturn function(event, ctx)\n  wix.sleep(2)\n  ctx.log("info", "ran", {})\n'
       '  return { n = event.n }\nend\n')


@test
def fire_and_serve_share_one_journal_at_once():
    """fire and serve write the same journal at the same moment (each with its own emulator state); each runs
    only its own events, and the journal ends with all of them done."""
    import http.client
    import signal
    import subprocess
    import threading
    import time
    from testlib import clean_env, no_sanitizer_report, wait_for_port_file
    hooks = "hooks:\n  order:\n    - script: ran.lua\n"
    w = Work(None, {"ran.lua": RAN,
                    "serve.yaml": "runtime: {state_dir: srv}\nserve: {listen: '127.0.0.1:0', journal: shared.db}\n" + hooks,
                    "fire.yaml": "runtime: {state_dir: fst}\nserve: {journal: shared.db}\n" + hooks})
    log = open(w.path("serve.log"), "wb")
    proc = subprocess.Popen([ARGS.wixr, "serve", "--config", "serve.yaml", "--insecure-no-auth"], cwd=w.dir,
                            env=clean_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        port = wait_for_port_file(proc, w.path("srv/serve.port"), 15, lambda: open(w.path("serve.log")).read(),
                                  "wixr serve")
        posted = []

        def post():
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            try:
                for i in range(150):
                    c.request("POST", "/v1/events/order", body=json.dumps({"n": i}),
                              headers={"X-Event-Id": "s-%d" % i})
                    resp = c.getresponse()
                    resp.read()
                    posted.append(resp.status)
            except Exception as e:  # noqa: BLE001 (reported by the check below)
                posted.append(repr(e))
            c.close()
        t = threading.Thread(target=post)
        t.start()
        w.write("ev.ndjson", "".join(json.dumps({"event": "order", "id": "f-%d" % i, "data": {"n": i}}) + "\n"
                                     for i in range(400)))
        r = w.run("fire", "--batch", "ev.ndjson", "--config", "fire.yaml", "--quiet", "--concurrency", "4")
        t.join(30)
        eq(r.rc, 0, "fire (%s)" % r)
        eq(posted, [202] * 150, "every POST accepted")
        deadline = time.time() + 20
        while time.time() < deadline:
            lst = w.run("events", "list", "--config", "fire.yaml", "--limit", "0", "--json")
            got = [json.loads(x) for x in lst.out.splitlines()]
            if len(got) == 550 and all(x["state"] == "done" for x in got):
                break
            time.sleep(0.2)
        eq((len(got), sorted(set(x["state"] for x in got))), (550, ["done"]), "every event done in the journal")
        eq(sorted(x["attempts"] for x in got), [1] * 550, "each ran once")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    serve_log = open(w.path("serve.log")).read()
    no_sanitizer_report(serve_log, "wixr serve")
    served = set(re.findall(r'"event_id":"([sf]-\d+)"', serve_log))
    fired = set(re.findall(r'"event_id":"([sf]-\d+)"', r.err))
    eq((len(served), len(fired)), (150, 400), "each process ran its own events")
    check(all(x.startswith("s-") for x in served) and all(x.startswith("f-") for x in fired),
          "serve ran none of fire's events, nor fire serve's")


@test
def batch_json_lines_carry_each_event():
    cfg = ("hooks:\n  order:\n    - script: ev.lua\n    - script: second.lua\n  cr:\n    - script: cr.lua\n")
    w = Work(cfg, {"ev.lua": EV, "second.lua": SECOND, "cr.lua": CREATE}, wix=True)
    events = [{"event": "order", "id": "j1", "data": {"n": 1}}, {"event": "order", "id": "j2", "data": {"n": 2, "fail": True}},
              {"event": "none", "id": "j3"}, {"event": "cr", "id": "j4"}, {"event": "order", "id": "j1"}]
    lines, rep = batch_report(w.batch(events, "--json", "--dry-run", "--concurrency", "1"))
    eq([x["id"] for x in lines], ["j1", "j2", "j3", "j4", "j1"], "one line per event, in order (concurrency 1)")
    by = {(x["id"], x.get("skipped")): x for x in lines}
    check({"event", "id", "ok", "dry_run", "hooks"} <= set(by[("j1", None)]), "an event's keys: %r" % by[("j1", None)])
    eq([(h["hook"], h["status"], h.get("result")) for h in by[("j1", None)]["hooks"]],
       [("order (ev.lua)", "ok", {"id": "j1", "n": 1}), ("order (second.lua)", "ok", {"second": True})], "j1's hooks")
    eq([(h["status"], "error" in h) for h in by[("j2", None)]["hooks"]], [("failed", True), ("skipped", False)],
       "j2's hooks")
    eq(by[("j2", None)]["ok"], False, "j2 failed")
    eq(by[("j3", "no hook")]["ok"], True, "an event without hooks is reported as skipped")
    eq(by[("j1", "repeated in this batch")]["ok"], True, "a repeated id is reported as skipped")
    planned = hook_of(by[("j4", None)])["planned"]
    eq([(p["method"], p["path"]) for p in planned], [("POST", "/resellers/v2/packages")], "j4's planned call")
    check(all({"hook", "status", "ms"} <= set(h) and ("result" in h or "error" in h or h["status"] == "skipped")
              for x in lines for h in x.get("hooks", [])), "hook keys: %r" % lines)
    eq((rep["events"], rep["ok"], rep["failed"], rep["skipped"]), (5, 2, 1, 2), "summary")


@test
def batch_verbose_prints_one_line_per_event():
    w = Work("hooks:\n  order:\n    - script: ev.lua\n", {"ev.lua": EV})
    events = [{"event": "order", "id": "v1", "data": {"n": 1}}, {"event": "order", "id": "v2", "data": {"n": 2, "fail": True}},
              {"event": "none", "id": "v3"}]
    r = w.batch(events, "--verbose", "--concurrency", "1")
    eq(r.rc, 1, "v2 failed (%s)" % r)
    out = r.out.splitlines()
    eq(len(out), 3, "one line per event: %r" % r.out)
    eq(re.sub(r" +", " ", out[0]), ' v1 order ev.lua {"id":"v1","n":1}', "v1")
    check(re.fullmatch(r" +v2 +order +ev\.lua +FAILED: order \(ev\.lua\): (\./)?ev\.lua:2: boom 2", out[1]), out[1])
    eq(re.sub(r" +", " ", out[2]), " v3 none - skipped: no hook", "v3")
    check(any(re.match(r"3 events: 1 ok, 1 failed, 1 skipped", x) for x in r.lines()), "the summary: %r" % r.err)
    r = w.batch(events, "--verbose", "--concurrency", "1")
    eq(re.sub(r" +", " ", r.out.splitlines()[0]), " v1 order - skipped: done before", "a re-run: %r" % r.out)
    r = w.fire("order", "--verbose")
    eq(r.rc, 2, "--verbose is for batches (%s)" % r)


KEYS = r"""
return function(event, ctx)
  local t, inner = {}, {}
  for i = 30, 1, -1 do t[string.format("k%02d", i)] = i; inner[string.char(96 + i % 26 + 1) .. i] = i end
  t.inner = inner
  t.list = { { zeta = 1, alpha = 2, mid = { y = 1, b = 2 } } }
  ctx.log("info", "keys", { zz = 1, aa = 2 })
  return t
end
"""


@test
def results_keep_a_stable_key_order():
    w = Work("hooks:\n  k:\n    - script: k.lua\n", {"k.lua": KEYS})
    outs = []
    for i in range(2):
        r = w.fire("k", "--id", "run-%d" % i, "--json")
        eq(r.rc, 0, "run %d (%s)" % (i, r))
        outs.append(r.out)
        res = hook_of(r.json)["result"]
        keys = list(res)
        eq(keys, sorted(keys), "top-level keys sorted")
        eq(list(res["inner"]), sorted(res["inner"]), "nested keys sorted")
        eq(list(res["list"][0]), ["alpha", "mid", "zeta"], "keys inside a list sorted")
        eq(list(res["list"][0]["mid"]), ["b", "y"], "and deeper")
    eq(re.sub(r'"ms":\d+', "", outs[0]).replace("run-0", "run-X"),
       re.sub(r'"ms":\d+', "", outs[1]).replace("run-1", "run-X"), "the same report, byte for byte, from two runs")
    lines, _ = batch_report(w.batch([{"event": "k", "id": "b1"}], "--json"))
    res = hook_of(lines[0])["result"]
    eq(list(res), sorted(res), "a batch line's result keys sorted")
    r = w.run("events", "show", "run-0", "--json")
    stored = json.loads(r.out)
    text = json.dumps(stored, separators=(",", ":"))
    check('"result":{"inner":{' in text, "the journal keeps the sorted result: %r" % text[:300])


SLOW_LOG = r"""
local wix = require "wix"
return function(event, ctx)
  wix.sleep(40)
  ctx.log("info", "halfway", { n = event.n })
  wix.sleep(40)
  return { n = event.n }
end
"""


@test
def batch_runs_events_as_they_arrive_on_a_pipe():
    """The batch is read as it comes: an event runs, and its report is out, while the writer of the
    pipe has not closed it; the process never waits for the end of the input to start."""
    import select
    import subprocess
    from testlib import clean_env
    w = batch_work()
    p = subprocess.Popen([ARGS.wixr, "fire", "--batch", "-", "--json"], cwd=w.dir, env=clean_env(),
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for n in (1, 2, 3):
            p.stdin.write((json.dumps({"event": "order", "id": "p%d" % n, "data": {"n": n}}) + "\n").encode())
            p.stdin.flush()
            ready, _, _ = select.select([p.stdout], [], [], 20)
            check(ready, "event %d's report came while the input was still open" % n)
            rep = json.loads(p.stdout.readline())
            eq((rep["id"], rep["ok"]), ("p%d" % n, True), "the report of event %d" % n)
        p.stdin.close()
        rest = p.stdout.read().decode()
        eq(p.wait(timeout=20), 0, "exit status")
        eq(json.loads(rest.splitlines()[-1])["ok"], 3, "the summary counts the three events")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        p.stdout.close()
        p.stderr.close()


def peak_rss_kb(args, cwd):
    """Runs wixr with args in cwd; returns (exit status, the process's own peak resident memory in KB,
    its workers not counted), read from /proc while it runs."""
    import subprocess
    import time
    from testlib import clean_env
    p = subprocess.Popen([ARGS.wixr] + args, cwd=cwd, env=clean_env(), stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while p.poll() is None:
        try:
            with open("/proc/%d/status" % p.pid) as f:
                m = re.search(r"VmHWM:\s*(\d+)", f.read())
            peak = max(peak, int(m.group(1))) if m else peak
        except OSError:
            pass
        time.sleep(0.02)
    return p.returncode, peak


@test
def batch_memory_stays_flat_in_the_number_of_events():
    """fire --batch reads its input in slices: 150,000 events take no more memory than 10,000 but
    the ids it keeps to tell a repeated one (a few dozen bytes each). Loading the whole file took
    over 700 bytes an event. (Release build only: the sanitizers keep freed memory on purpose.)"""
    with open(ARGS.wixr, "rb") as f:
        if b"__asan_init" in f.read():
            print("     (skipped under AddressSanitizer)")
            return
    w = Work("hooks:\n  e:\n    - script: noop.lua\n", {"noop.lua": "return function(event, ctx) end\n"})
    line = '{"event":"e","id":"ev-%d","data":{"n":%d,"pad":"' + "x" * 100 + '"}}\n'
    for n in (10000, 150000):
        w.write("e%d.ndjson" % n, "".join(line % (i, i) for i in range(n)))
    rc, small = peak_rss_kb(["fire", "--batch", "e10000.ndjson", "--quiet", "--dry-run", "--workers", "1"], w.dir)
    eq(rc, 0, "exit status, 10,000 events")
    rc, big = peak_rss_kb(["fire", "--batch", "e150000.ndjson", "--quiet", "--dry-run", "--workers", "1"], w.dir)
    eq(rc, 0, "exit status, 150,000 events")
    check(big - small < 140000 * 128 // 1024, "140,000 more events took %d KB more (%d KB, then %d KB): "
          "more than 128 bytes an event" % (big - small, small, big))


@test
def batch_lines_over_the_event_cap_are_skipped():
    """A line is an event: one longer than serve.max_body_kb (the service's cap on an event) is
    malformed, whether it ends within one read or spans several; the lines after it keep their
    numbers and run, and a last line without a newline runs too."""
    w = Work("serve: {max_body_kb: 1}\nhooks:\n  order:\n    - script: ev.lua\n", {"ev.lua": EV})
    line = lambda n, pad=0: json.dumps({"event": "order", "id": "l%d" % n, "data": {"n": n, "pad": "x" * pad}})
    w.write("events.ndjson", "\n".join([line(1), line(2, 2000), line(3), line(4, 700 * 1024), line(5)]))
    r = w.fire("--batch", "events.ndjson", "--quiet")
    eq(r.rc, 1, "exit status: malformed lines (%s)" % r)
    eq([x for x in r.lines() if "(line skipped)" in x],
       ["events.ndjson:2: longer than 1024 bytes (line skipped)",
        "events.ndjson:4: longer than 1024 bytes (line skipped)"], "the long lines, with their numbers")
    check(any(re.match(r"3 events: 3 ok, 0 failed, 0 skipped .* 2 malformed lines", x) for x in r.lines()),
          "the others ran: %r" % r.lines())


@test
def progress_bar_never_shares_a_line_with_log_lines():
    import pty
    import subprocess
    from testlib import clean_env, no_sanitizer_report
    w = Work("hooks:\n  slow:\n    - script: slow.lua\n", {"slow.lua": SLOW_LOG})
    w.write("ev.ndjson", "".join(json.dumps({"event": "slow", "id": "s%d" % i, "data": {"n": i}}) + "\n"
                                 for i in range(8)))
    master, slave = pty.openpty()
    p = subprocess.Popen([ARGS.wixr, "fire", "--batch", "ev.ndjson", "--concurrency", "1"], cwd=w.dir,
                         env=clean_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the other end is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    p.stdout.read()
    p.stdout.close()
    eq(p.wait(timeout=20), 0, "exit status")
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    no_sanitizer_report(text, "wixr fire --batch on a terminal")
    check("[" in text and "#" in text and "ok 8" in text, "a progress bar was drawn: %r" % text[-400:])
    logs = 0
    for line in text.split("\n"):
        if '{"ts"' not in line:
            continue
        logs += 1
        visible = line[line.rfind("\r") + 1:] if "\r" in line else line
        visible = visible[3:] if visible.startswith("\x1b[K") else visible
        check(visible.startswith('{"ts"') and "#" not in visible and "ok " not in visible,
              "a log line shares its line with the bar: %r" % line)
        check(line.startswith('{"ts"') or line.startswith("\r\x1b[K") or "\r\x1b[K{" in line,
              "the bar is erased before a log line: %r" % line)
    eq(logs, 8, "every log line is there: %r" % text[-600:])
    check(re.search(r"\n8 events: 8 ok, 0 failed", text), "the summary on its own line: %r" % text[-300:])


@test
def version_names_the_commit_and_the_build_date():
    r = Work().run("version")
    eq(r.rc, 0, "exit status (%s)" % r)
    check(re.fullmatch(r"wixr \d+\.\d+\.\d+ \(commit ([0-9a-f]{7,40}(-dirty)?|unknown), built \d{4}-\d\d-\d\d\)\n",
                       r.out), "version line: %r" % r.out)
    eq(Work().run("--version").out, r.out, "--version says the same")


@test
def batch_exit_codes():
    w = Work(ORDER_CFG, {"ev.lua": EV, "second.lua": SECOND})
    r = w.batch([{"event": "order", "data": {"n": 1}}, {"event": "unknown"}], "--json")
    eq((r.rc, summary(r)["ok"], summary(r)["skipped"]), (0, 1, 1),
       "all good (an event without hooks is fine) (%s)" % r)
    r = w.batch([{"event": "order", "data": {"n": 1, "fail": True}}], "--json")
    eq((r.rc, summary(r)["failed"]), (1, 1), "a failure (%s)" % r)
    r = w.batch([{"event": "order"}, "{oops"], "--json")
    eq((r.rc, summary(r)["ok"], summary(r)["malformed"]), (1, 1, 1), "a malformed line (%s)" % r)
    r = w.batch([], "--json")
    eq((r.rc, summary(r)["events"]), (0, 0), "an empty batch")
    r = w.run("fire", "--batch", "missing.ndjson")
    eq(r.rc, 3, "a missing batch file (%s)" % r)


@test
def fire_single_event_outcomes():
    cfg = ORDER_CFG + "  off:\n    - script: ev.lua\n      enabled: false\n"
    w = Work(cfg, {"ev.lua": EV, "second.lua": SECOND})
    r = w.fire("order", "--json")
    eq(r.rc, 0, "ok (%s)" % r)
    eq(r.json["event"], "order", "event")
    eq(r.json["ok"], True, "ok")
    new_id = r.json["id"]
    check(re.fullmatch(r"[0-9a-f-]{36}", new_id), "an event without an id gets one: %r" % new_id)
    eq([(h["hook"], h["status"], h.get("result")) for h in r.json["hooks"]],
       [("order (ev.lua)", "ok", {"id": new_id}), ("order (second.lua)", "ok", {"second": True})], "hooks")
    check("chained" not in r.json, "no chained key without emits")
    w.write("fail.json", '{"n": 9, "fail": true}')
    r = w.fire("order", "--data", "fail.json")
    eq(r.rc, 1, "a failed hook (%s)" % r)
    check(re.search(r"^event order \(id [0-9a-f-]{36}\)\n  FAILED  order \(ev\.lua\)  \d+ ms\n          order \(ev\.lua\): (\./)?ev\.lua:2: "
                    r"boom 9\n  skipped order \(second\.lua\)  \d+ ms\n$", r.out), "human output: %r" % r.out)
    r = w.fire("cont", "--data", "-", stdin='{"n": 9, "fail": true}')
    eq(r.rc, 1, "continue still fails the event")
    check(re.search(r'^  ok      cont \(second\.lua\)  \d+ ms  -> \{"second":true\}$', r.out, re.M),
          "the second hook ran: %r" % r.out)
    r = w.fire("nohooks")
    eq(r.rc, 3, "no hook (%s)" % r)
    check("wixr fire: no enabled hook is configured for event 'nohooks' in wixr.yaml" in r.err, r.err)
    r = w.fire("off")
    eq(r.rc, 3, "only a disabled hook (%s)" % r)
    w.write("bad.json", '{"n":\n')
    r = w.fire("order", "--data", "bad.json")
    eq(r.rc, 3, "bad data")
    check("wixr fire: bad.json:2:1: " in r.err, "data error position: %r" % r.err)
    w.write("arr.json", "[1]")
    r = w.fire("order", "--data", "arr.json")
    eq(r.rc, 3, "data not an object")
    r = w.fire("order", "--id", "e-1", "--json")
    eq((r.rc, r.json["id"], r.json["ok"]), (0, "e-1", True), "first with an id")
    r = w.fire("order", "--id", "e-1", "--json")
    eq((r.rc, r.json), (0, {"event": "order", "id": "e-1", "ok": True, "skipped": "done before"}), "done before")
    check("wixr fire: event e-1 is done (recorded in the journal); not run" in r.err, r.err)
    for bad in ("", "a/b", "a b", "x" * 201, "a\x01b", "q?"):
        r = w.fire("order", "--id", bad)
        eq(r.rc, 2, "id %r (%s)" % (bad, r))
        check("wixr fire: --id: must be 1 to 200 bytes of UTF-8, without control characters, spaces, '/', '%', "
              "'?', '#' or '\\'" in r.err, r.err)
    eq(w.fire("order", "--id", "caf\u00e9-1").rc, 0, "a UTF-8 id")
    r = w.batch([{"event": "order", "id": "a/b"}, {"event": "order", "id": "ok-1"}], "--json")
    eq((r.rc, summary(r)["ok"], summary(r)["malformed"]), (1, 1, 1), "an id serve would refuse (%s)" % r)
    check('<stdin>:1: "id" must be 1 to 200 bytes' in r.err, r.err)


# ---------------------------------------------------------------------------
# 7. Chaining
# ---------------------------------------------------------------------------

EMIT = r"""
return function(event, ctx)
  local nxt = ctx.options.next
  if nxt then ctx.emit(nxt, { from = ctx.event.name, v = (event.v or 0) + 1 }) end
  return { name = ctx.event.name, depth = ctx.event.depth, id = ctx.event.id, v = event.v, from = event.from }
end
"""
CHAIN_CFG = "runtime:\n  max_chain_depth: 2\nhooks:\n" + "".join(
    "  %s:\n    - script: emit.lua\n%s" % (ev, "      options: {next: %s}\n" % nxt if nxt else "")
    for ev, nxt in (("a", "b"), ("b", "c"), ("c", None), ("d1", "d2"), ("d2", "d3"), ("d3", "d4"), ("d4", None),
                    ("x", "y"), ("y", "x")))


@test
def chain_emit_runs_the_chained_event():
    w = Work(CHAIN_CFG, {"emit.lua": EMIT})
    r = w.fire("a", "--id", "ev1", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    rep = r.json
    eq(hook_of(rep)["result"], {"name": "a", "depth": 0, "id": "ev1"}, "the first event")
    eq(len(rep["chained"]), 1, "one chained event")
    b = rep["chained"][0]
    eq((b["event"], b["id"], b["ok"]), ("b", "ev1/1", True), "chained event")
    eq(hook_of(b)["result"], {"name": "b", "depth": 1, "id": "ev1/1", "v": 1, "from": "a"}, "depth 1 and the data")
    c = b["chained"][0]
    eq(hook_of(c)["result"], {"name": "c", "depth": 2, "id": "ev1/1/1", "v": 2, "from": "b"}, "depth 2")
    check("chained" not in c, "the chain ends")
    r = w.fire("a")
    check(re.search(r"^event a \(id (\S+)\)\n  ok .*\n    event b \(id \1/1\)\n      ok .*\n        event c \(id \1/1/1\)\n"
                    r"          ok ", r.out),
          "human output nests chained events: %r" % r.out)


@test
def chain_depth_limit():
    w = Work(CHAIN_CFG, {"emit.lua": EMIT})
    r = w.fire("d1", "--json")
    eq(r.rc, 1, "exit status (%s)" % r)
    rep = r.json
    eq(rep["ok"], False, "the event failed")
    d3 = rep["chained"][0]["chained"][0]
    eq(d3["event"], "d3", "the third event")
    h = hook_of(d3)
    eq(h["status"], "failed", "status")
    check(re.fullmatch(r"d3 \(emit\.lua\): (\./)?emit\.lua:4: ctx\.emit: chain depth limit reached \(2\): "
                       r"d1>d2>d3>d4", h["error"]), "error: %r" % h["error"])
    eq(hook_of(rep)["status"], "ok", "the first hook itself succeeded")


@test
def chain_cycle():
    w = Work(CHAIN_CFG.replace("max_chain_depth: 2", "max_chain_depth: 8"), {"emit.lua": EMIT})
    r = w.fire("x", "--json")
    eq(r.rc, 1, "exit status (%s)" % r)
    y = r.json["chained"][0]
    h = hook_of(y)
    check(re.fullmatch(r"y \(emit\.lua\): (\./)?emit\.lua:4: ctx\.emit: cycle: x>y>x", h["error"]),
          "error: %r" % h["error"])
    check("chained" not in y, "nothing chained after the cycle")


# ---------------------------------------------------------------------------
# 8. What handlers return, ctx.log
# ---------------------------------------------------------------------------

@test
def returns_must_be_plain_data():
    cases = {
        "fn": ("return function() return function() end end", "value: a function cannot be sent as JSON"),
        "tf": ("return function() return { a = 1, f = print } end", "f: a function cannot be sent as JSON"),
        "cyc": ("return function() local t = {} t.t = t return t end", "table nested deeper than 64 (a cycle?)"),
        "co": ("return function() return coroutine.create(print) end", "value: a thread cannot be sent as JSON"),
        "key": ("return function() return { [{}] = 1 } end", "value: object keys must be strings"),
    }
    cfg = "hooks:\n" + "".join("  %s:\n    - script: %s.lua\n" % (k, k) for k in list(cases) + ["nil", "many"])
    files = {"%s.lua" % k: v[0] + "\n" for k, v in cases.items()}
    files["nil.lua"] = "return function() end\n"
    files["many.lua"] = "return function() return { 1, 'two', { x = false } }, 'ignored' end\n"
    w = Work(cfg, files)
    events = [{"event": k, "id": k} for k in list(cases) + ["nil", "many"]]
    r = w.batch(events, "--json")
    rep = summary(r)
    eq((r.rc, rep["ok"], rep["failed"]), (1, 2, len(cases)), "counts: %r" % rep)
    for f in rep["failures"]:
        k = f["event"]
        h = hook_of(f)
        eq(h["error"], "%s (%s.lua): the handler returned a value that is not data: %s" % (k, k, cases[k][1]),
           "error of %s" % k)
        check("result" not in h, "no result when it fails")
    r = w.fire("nil", "--json")
    eq((r.rc, hook_of(r.json)["status"], hook_of(r.json)["result"]), (0, "ok", None), "nil gives null")
    check('"result":null' in r.out, "result is null: %r" % r.out)
    r = w.fire("nil")
    check(re.search(r"^  ok      nil \(nil\.lua\)  \d+ ms  -> null$", r.out, re.M), "human: %r" % r.out)
    r = w.fire("many", "--json")
    eq(hook_of(r.json)["result"], [1, "two", {"x": False}], "the first value is the result")


@test
def ctx_log_writes_a_json_line_with_the_hook_name():
    script = ('return function(event, ctx)\n  ctx.log("info", "with fields", { n = 1 })\n'
              '  ctx.log("warn", "no fields")\n  print("printed", 1)\n  return true\nend\n')
    w = Work("hooks:\n  lg:\n    - script: lg.lua\n", {"lg.lua": script})
    r = w.fire("lg", "--id", "e-7", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    eq(r.out.count("\n"), 1, "stdout holds only the report")
    raw = [x for x in r.lines() if x.startswith("{")]
    eq(len(raw), 2, "two log lines: %r" % r.err)
    first = json.loads(raw[0])
    eq((first["level"], first["msg"], first["fields"]), ("info", "with fields", {"hook": "lg (lg.lua)",
                                                                                 "event_id": "e-7", "n": 1}),
       "log line with fields")
    check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"]), "ts: %r" % first["ts"])
    check("[lg (lg.lua)] printed\t1" in r.lines(), "print goes to stderr with the hook name: %r" % r.err)
    try:
        second = json.loads(raw[1])
    except ValueError:
        raise TestFailure("ctx.log without fields wrote a line that is not JSON: %r" % raw[1])
    eq((second["level"], second["msg"], second.get("fields")),
       ("warn", "no fields", {"hook": "lg (lg.lua)", "event_id": "e-7"}), "log line without fields")


@test
def ctx_log_in_a_dry_run_says_so_and_sorts_its_fields():
    script = ('return function(event, ctx)\n  ctx.log("info", "planned", { zeta = 1, alpha = 2, mid = { b = 1, a = 2 } })\n'
              '  return { z = 1, a = 2 }\nend\n')
    w = Work("hooks:\n  lg:\n    - script: lg.lua\n", {"lg.lua": script})
    for dry in (True, False):
        r = w.fire("lg", "--id", "d-%d" % dry, *(["--dry-run"] if dry else []))
        eq(r.rc, 0, "exit status (%s)" % r)
        raw = [x for x in r.lines() if x.startswith("{")]
        eq(len(raw), 1, "one log line: %r" % r.err)
        line = json.loads(raw[0])
        eq(line.get("dry_run"), True if dry else None, "dry_run on the log line of a %s run" % ("dry" if dry else "real"))
        # the script's fields come out sorted, however the table was built
        check(raw[0].index('"alpha"') < raw[0].index('"mid"') < raw[0].index('"zeta"')
              and raw[0].index('"a":2') < raw[0].index('"b":1'), "fields sorted: %r" % raw[0])


@test
def a_state_that_broke_its_memory_cap_is_rebuilt_before_the_next_run():
    # run 1 keeps a global, then breaks the cap; run 2 runs on a fresh state (the global is gone) and works
    script = ('seen = seen or 0\n'
              'return function(event, ctx)\n  seen = seen + 1\n'
              '  if event.hog then local t = {} for i = 1, 1e9 do t[i] = { i } end end\n'
              '  return { runs_on_this_state = seen }\nend\n')
    w = Work(LIMITS % ("instructions: 100000000000, wall_ms: 10000, memory_mb: 8", ""),
             {"bad.lua": script, "good.lua": GOOD})
    r = w.batch([{"event": "bad", "id": "m1", "data": {}}, {"event": "bad", "id": "m2", "data": {"hog": True}},
                 {"event": "bad", "id": "m3", "data": {}}], "--json", "--concurrency", "1", timeout=20)
    lines = [json.loads(x) for x in r.out.splitlines() if x.strip()]
    by_id = {x.get("id"): x for x in lines if "id" in x}
    eq(by_id["m1"]["hooks"][0]["result"], {"runs_on_this_state": 1}, "first run")
    check("memory limit exceeded (8 MB)" in by_id["m2"]["hooks"][0]["error"], "the hog broke the cap: %r" % by_id["m2"])
    eq(by_id["m3"]["hooks"][0]["result"], {"runs_on_this_state": 1}, "the next run is on a fresh state")


@test
def ctx_log_keeps_the_run_names_and_the_callers_table():
    script = ('return function(event, ctx)\n'
              '  local f = { hook = "forged", event_id = "forged", n = 2 }\n'
              '  ctx.log("info", "forged", f)\n'
              '  ctx.log("info", "list", { 1, 2 })\n'
              '  ctx.log("info", "empty", {})\n'
              '  return { f.hook, f.event_id, f.n }\nend\n')
    w = Work("hooks:\n  lg:\n    - script: lg.lua\n", {"lg.lua": script})
    r = w.fire("lg", "--id", "e-8", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    lines = {x["msg"]: x for x in (json.loads(l) for l in r.lines() if l.startswith("{"))}
    run = {"hook": "lg (lg.lua)", "event_id": "e-8"}
    eq(lines["forged"]["fields"], dict(run, n=2), "the run's hook and event id win over the script's")
    eq(lines["list"]["fields"], run, "a list of fields is not an object: only the run's names")
    eq(lines["empty"]["fields"], run, "empty fields")
    eq(hook_of(r.json)["result"], ["forged", "forged", 2], "the caller's table is left as it was")


@test
def spawned_tasks_left_running_or_failing_are_logged_as_json():
    """A task nobody waits for: stopped when its run ends (warn), or failing (warn from wix.spawn);
    both are JSON log lines naming the hook and the event."""
    script = ('local wix = require("wix")\n'
              'return function(event, ctx)\n'
              '  wix.spawn(function() wix.sleep(5000) end)\n'
              '  wix.spawn(function() error("task boom") end)\n'
              '  wix.sleep(20)\n'
              '  return true\nend\n')
    w = Work("hooks:\n  sp:\n    - script: sp.lua\n", {"sp.lua": script})
    r = w.fire("sp", "--id", "e-9", "--json")
    eq(r.rc, 0, "exit status (%s)" % r)
    check(r.elapsed < 4, "the run does not wait for its unwaited task (%.1f s)" % r.elapsed)
    for line in r.lines():
        check(not line or line.startswith("{"), "every stderr line is JSON: %r" % r.err)
    lines = [json.loads(x) for x in r.lines() if x]
    stopped = [x for x in lines if "stopped" in x["msg"]]
    eq(len(stopped), 1, "one line for the stopped task: %r" % r.err)
    eq((stopped[0]["level"], stopped[0]["fields"]["hook"], stopped[0]["fields"]["event_id"],
        stopped[0]["fields"]["error"]), ("warn", "sp (sp.lua)", "e-9", "the run has ended"), "the stopped task")
    failed = [x for x in lines if "task boom" in x["msg"] + json.dumps(x.get("fields"))]
    eq(len(failed), 1, "one line for the failed task: %r" % r.err)
    eq((failed[0]["level"], failed[0]["msg"], failed[0]["fields"]),
       ("warn", "a task started with wix.spawn failed",
        {"error": "sp.lua:4: task boom", "hook": "sp (sp.lua)", "event_id": "e-9"}),
       "the failed task's line names the hook, the event and the error")


def main():
    return run_tests(TESTS, parse_args(__doc__))


if __name__ == "__main__":
    sys.exit(main())

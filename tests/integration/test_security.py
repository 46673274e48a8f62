#!/usr/bin/env python3
"""The security suite: known Lua sandbox escapes and resource attacks, the
secrets, and the HTTP front of `wixr serve`. docs/SECURITY.md points here.

Usage: test_security.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Every attack is a hostile policy run as a hook (`wixr fire`, or `wixr serve`)
and must fail safely: the run fails with a message naming what stopped it, the
process survives and carries on with the next event, nothing of the host is
reached. The hooks use the in-process emulator (no WIX_* variables) unless a
test says otherwise. Each test works in a temporary folder of its own; every
process started is killed after its test, and sanitizer reports in any
output fail the test (the suite also runs against the ASan build).
Python 3 standard library only.
"""
import atexit
import http.client
import json
import os
import re
import secrets
import signal
import select
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import (ARGS, JANE, P_SERVICE, SITE_JANE1, UNKNOWN_GUID, Folder, Server, TestFailure, check,  # noqa: E402
                     clean_env, eq, json_body, no_sanitizer_report, parse_args, run_tests, wait_for_port_file,
                     wix_error)

TESTS = []
SANDBOX_NOTICE = "using the embedded sandbox emulator"
PROCS = []


def test(fn):
    def wrapped():
        try:
            fn()
        finally:
            kill_all()
    wrapped.__name__ = fn.__name__
    TESTS.append(wrapped)
    return wrapped


def kill_all():
    for p in list(PROCS):
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    PROCS.clear()


atexit.register(kill_all)


# ---------------------------------------------------------------------------
# `wixr fire` in a folder of its own
# ---------------------------------------------------------------------------

class Work(Folder):
    """A temporary folder with a wixr.yaml and scripts; runs wixr there."""
    prefix = "wixr-sec-"
    # What a `wixr fire` cut by its process timeout means here.
    timeout_hint = "the attack escaped every limit"

    def fire(self, name, data=None, timeout=20):
        args = ["fire", name, "--json"]
        if data is not None:
            self.write("event.json", json.dumps(data))
            args += ["--data", "event.json"]
        return self.run(*args, timeout=timeout)

    def batch(self, events, timeout=20):
        text = "".join(json.dumps(e) + "\n" for e in events)
        r = self.run("fire", "--batch", "-", "--json", "--concurrency", "1", "--no-dedupe", stdin=text,
                     timeout=timeout)
        # --batch --json writes a line per event, then the summary: .json is the summary, .event_lines the rest
        lines = r.out.strip().splitlines()
        r.event_lines = [json.loads(x) for x in lines[:-1]]
        r.out = lines[-1] if lines else r.out
        return r


def wix_block():
    return "wix:\n  rate_limit: {requests: 0}\n  sandbox: {catalog: %s}\n" % json.dumps(ARGS.catalog)


GOOD = "return function(event, ctx)\n  return { good = true }\nend\n"
# Only the limit a test is about may strike: the wall time is generous (the suite also runs
# under ASan, beside other suites); a hang would still be cut by the process timeout.
LIMITS = "instructions: 1000000, wall_ms: 20000, memory_mb: 16"


LAST_WORK = None


def packages_in(w):
    """Packages of the in-process emulator of w's folder (JANE's account), through a hook of its own."""
    w.write("count.lua", 'local wix = require "wix"\nreturn function()\n'
                         '  return #wix.packages.query({}, { account_id = "%s" }).packages\nend\n' % JANE)
    w.write("count.yaml", wix_block() + "hooks:\n  count:\n    - script: count.lua\n")
    r = w.run("fire", "count", "--json", "--config", "count.yaml")
    eq(r.rc, 0, "count (%s)" % r)
    return r.json["hooks"][0]["result"]


def attacks(scripts, limits=LIMITS, hook_extra=None, timeout=60, max_seconds=None):
    """Runs each attack script as the hook of its own event, one at a time, then a
    good event: every attack must fail (the batch goes on), the good event must
    succeed after them. Returns {name: error}."""
    hook_extra = hook_extra or {}
    cfg = wix_block() + "runtime:\n  limits: {%s}\nhooks:\n" % limits
    files = {"good.lua": GOOD}
    for name, script in scripts.items():
        cfg += "  %s:\n    - script: %s.lua\n%s" % (name, name, hook_extra.get(name, ""))
        files[name + ".lua"] = script
    cfg += "  good:\n    - script: good.lua\n"
    w = Work(cfg, files)
    global LAST_WORK
    LAST_WORK = w
    r = w.batch([{"event": n, "id": n} for n in scripts] + [{"event": "good", "id": "good"}], timeout=timeout)
    rep = r.json
    eq(r.rc, 1, "exit status of the batch (%s)" % r)
    eq((rep["events"], rep["ok"], rep["failed"]), (len(scripts) + 1, 1, len(scripts)),
       "every attack failed and the good event after them ran: %r" % rep)
    if max_seconds is not None:
        check(r.elapsed < max_seconds, "the batch took %.1f s (more than %.0f s): a limit struck late"
              % (r.elapsed, max_seconds))
    out = {}
    for f in rep["failures"]:
        h = f["hooks"][0]
        eq(h["status"], "failed", "status of %s" % f["event"])
        prefix = "%s (%s.lua): " % (f["event"], f["event"])
        check(h["error"].startswith(prefix), "the error names the hook and the script: %r" % h["error"])
        out[f["event"]] = h["error"][len(prefix):]
    return out


def expect(errors, want):
    """want: {name: regex the error (after 'hook (script): ') must match}."""
    for name, pattern in want.items():
        check(name in errors, "%s did not fail: %r" % (name, errors))
        check(re.search(pattern, errors[name]), "%s: error %r does not match %r" % (name, errors[name], pattern))


def probe(script, name="probe", extra_config="", files=None):
    """Runs one probe hook (it returns what it found); returns its result."""
    fs = {name + ".lua": script}
    fs.update(files or {})
    w = Work(wix_block() + extra_config + "hooks:\n  %s:\n    - script: %s.lua\n" % (name, name), fs)
    r = w.fire(name)
    eq(r.rc, 0, "the probe ran (%s)" % r)
    return r.json["hooks"][0]["result"]


def instruction_limit_at(line):
    return r"(^|/)\w+\.lua:%d: instruction limit exceeded \(1000000\)$" % line


INSTRUCTIONS = r"instruction limit exceeded \(1000000\)$"
MEMORY = r"^(\w+\.lua:\d+: )?memory limit exceeded \(16 MB\)$"  # names the line where the cap broke, when a script frame was running


# ---------------------------------------------------------------------------
# 1. Escapes: what a script can reach
# ---------------------------------------------------------------------------

@test
def escape_bytecode_cannot_be_loaded_or_made():
    script = r"""
local function try(f, ...)
  local r = table.pack(pcall(f, ...))
  if r[1] then return { ok = true, value = type(r[2]) == "function" and "function" or tostring(r[2]) } end
  return { ok = false, err = tostring(r[2]) }
end
secret_global = "visible"
return function(event, ctx)
  local r = {}
  -- a binary chunk (the header of a Lua 5.4 chunk, then junk) given as a string
  local chunk, why = load("\27Lua\84\0\25\147\13\10\26\10\4\8\8\120\86\0\0\0\0\0\0\0\0\0\0\0\40\119\64\1")
  r.binary = { chunk = type(chunk), err = tostring(why) }
  r.binary_t = try(load, "\27Lua", "x", "t")
  r.mode_b = try(load, "return 1", "x", "b")
  r.mode_bt = try(load, "return 1", "x", "bt")
  r.reader = try(load, function() return nil end)
  r.dump = try(function() return string.dump end)
  r.dump_method = type(("").dump)
  r.dump_index = try(function() return ("").dump(function() end) end)
  -- text chunks work, in the script's environment ...
  r.text = try(function() return load("return 1 + 1")() end)
  r.text_env = try(function() return load("return secret_global")() end)
  -- ... or in the one given, which reaches nothing else
  r.own_env = try(function() return load("return tostring(_G) .. tostring(wix) .. tostring(ctx) .. tostring(print)", "x", "t", {})() end)
  r.env_g = try(function() return load("return _G", "x", "t", { _G = 1 })() end)
  r.nil_env = try(function() return load("return print", "x", "t", nil)() end)
  r.escape_env = try(function() return load("local _ENV = ...; return io", "x", "t", {})({ io = 5 }) end)
  return r
end
"""
    p = probe(script)
    eq(p["binary"]["chunk"], "nil", "a binary chunk given as a string is not loaded")
    check("attempt to load a binary chunk" in p["binary"]["err"], "why: %r" % p["binary"])
    check(not p["binary_t"]["ok"] or p["binary_t"]["value"] != "function", "a binary header in text mode: %r"
          % p["binary_t"])
    for k in ("mode_b", "mode_bt"):
        eq(p[k], {"ok": False, "err": 'load: only text chunks (mode "t") are allowed'}, "load with mode " + k)
    eq(p["reader"], {"ok": False, "err": "load: only strings can be loaded by scripts"}, "load with a reader")
    eq(p["dump"], {"ok": False, "err": "probe.lua:17: string.dump is not available to hooks (see docs/SECURITY.md)"},
       "string.dump is refused, saying so")
    eq(p["dump_method"], "nil", "(\"\").dump is absent")
    eq(p["dump_index"]["ok"], False, "(\"\").dump(f) fails")
    eq(p["text"], {"ok": True, "value": "2"}, "a text chunk")
    eq(p["text_env"], {"ok": True, "value": "visible"}, "a text chunk runs in the script's environment")
    eq(p["own_env"], {"ok": False, "err": '[string "x"]:1: attempt to call a nil value (global \'tostring\')'},
       "a chunk with an empty environment reaches nothing")
    eq(p["env_g"], {"ok": True, "value": "1"}, "_G of a given environment is that environment's")
    check(not p["nil_env"]["ok"] and "attempt to index a nil value" in p["nil_env"]["err"],
          "a chunk with a nil environment: %r" % p["nil_env"])
    eq(p["escape_env"], {"ok": True, "value": "5"}, "local _ENV only reaches what it is given")


@test
def escape_host_libraries_are_absent():
    script = r"""
local function try(f, ...)
  local ok, e = pcall(f, ...)
  return ok and ("ok: " .. type(e)) or tostring(e)
end
return function(event, ctx)
  local r = { globals = {}, os = {}, string = {}, require = {} }
  for _, n in ipairs({ "io", "debug", "package", "dofile", "loadfile", "loadstring", "module", "newproxy",
                       "setfenv", "getfenv", "jit", "ffi", "bit32", "unpack", "gcinfo" }) do
    r.globals[n] = try(function() return _G[n] end)
  end
  for _, n in ipairs({ "exit", "execute", "getenv", "remove", "rename", "tmpname", "setlocale" }) do
    r.os[n] = try(function() return os[n] end)
  end
  for _, n in ipairs({ "ffi", "io", "os", "debug", "package", "coroutine", "string", "jit", "wix.core", "socket",
                       "lfs", "posix", "_G" }) do
    r.require[n] = try(require, n)
  end
  r.loadlib = try(function() return package.loadlib("libc.so.6", "system") end)
  r.searchers = try(function() return #package.searchers end)
  r.exit = try(function() os.exit(0) end)
  r.execute = try(function() return os.execute("true") end)
  r.open = try(function() return io.open("/etc/passwd") end)
  r.popen = try(function() return io.popen("id") end)
  r.getenv = try(function() return os.getenv("HOME") end)
  r.wix_admin = try(function() return require("wix").sandbox_admin end)
  return r
end
"""
    p = probe(script)
    # what the sandbox leaves out says so (a clear error at the script's line), the rest is nil
    refused = "probe.lua:%d: %s is not available to hooks (see docs/SECURITY.md)"
    for n in ("io", "debug", "package", "dofile", "loadfile", "loadstring", "module", "newproxy", "setfenv",
              "getfenv"):
        eq(p["globals"][n], refused % (10, n), "absent global %s" % n)
    for n in ("jit", "ffi", "bit32", "unpack", "gcinfo"):
        eq(p["globals"][n], "ok: nil", "absent global %s" % n)
    eq(p["os"], {n: refused % (13, "os." + n) for n in p["os"]}, "absent os functions")
    not_found = ('require: module \'%s\' not found (scripts may require "wix" and modules on runtime.lua_paths)')
    for n, v in p["require"].items():
        if n == "_G":
            eq(v, "require: module '_G' not found (scripts may require \"wix\" and modules on runtime.lua_paths)",
               "require _G")
        else:
            eq(v, not_found % n, "require %s" % n)
    for k in ("loadlib", "searchers"):
        check("package is not available to hooks (see docs/SECURITY.md)" in p[k], "%s: %r" % (k, p[k]))
    for k in ("exit", "execute", "getenv"):
        check("os.%s is not available to hooks (see docs/SECURITY.md)" % k in p[k], "os.%s: %r" % (k, p[k]))
    for k in ("open", "popen"):
        check("io is not available to hooks (see docs/SECURITY.md)" in p[k], "io.%s: %r" % (k, p[k]))
    eq(p["wix_admin"], "ok: nil", "the emulator's admin call is not in the wix module")


# Walks every value a script can reach (fields, keys and metatables, from its
# environment, the wix module, cjson, ctx, a task, an error, a wix.array) and
# reports any field whose name is one of the host's powers.
WALK = r"""
local wix = require "wix"
local cjson = require "cjson"
local POWERS = { getupvalue=1, setupvalue=1, upvalueid=1, sethook=1, gethook=1, getregistry=1, getinfo=1,
  getlocal=1, setlocal=1, traceback=1, loadlib=1, searchers=1, searchpath=1, preload=1, loaded=1, cpath=1,
  execute=1, popen=1, open=1, lines=1, output=1, input=1, stdin=1, stdout=1, stderr=1, exit=1, getenv=1,
  remove=1, rename=1, tmpname=1, setlocale=1, dofile=1, loadfile=1, dump=1, core=1, sandbox_admin=1,
  request=1, plan=1, next_key=1, suspend=1, wake=1, setcstacklimit=1 }
local ALLOWED = { ["_ENV.table.remove"] = true }
local function walk_all(roots)
  local seen, found, n = {}, {}, 0
  local function walk(v, path, depth)
    local t = type(v)
    if depth > 16 or (t ~= "table" and t ~= "function" and t ~= "userdata" and t ~= "thread") or seen[v] then
      return
    end
    seen[v] = true
    n = n + 1
    local mt = getmetatable(v)
    if mt ~= nil then walk(mt, path .. "<mt>", depth + 1) end
    if t == "table" then
      for k, x in next, v do
        local p = path .. "." .. tostring(k)
        if type(k) == "string" and POWERS[k] and not ALLOWED[p] then found[#found + 1] = p end
        walk(k, path .. "[key]", depth + 1)
        walk(x, p, depth + 1)
      end
    end
  end
  for _, r in ipairs(roots) do walk(r[2], r[1], 0) end
  return found, n
end
"""


@test
def escape_nothing_reachable_leads_to_a_host_power():
    script = WALK + r"""
return function(event, ctx)
  local task = wix.spawn(function() return 1 end)
  local _, werr = pcall(wix.packages.get, "not-a-guid")
  local found, n = walk_all({ { "_ENV", _ENV }, { "wix", wix }, { "cjson", cjson }, { "ctx", ctx },
    { "event", event }, { "task", task }, { "error", werr }, { "array", wix.array() },
    { "string_mt", getmetatable("") }, { "settings_mt", getmetatable(wix.settings) } })
  task:wait()
  return { found = found, n = n, G_is_env = _G == _ENV, string_mt = tostring(getmetatable("")),
           settings_mt = tostring(getmetatable(wix.settings)) }
end
"""
    p = probe(script, extra_config="")
    check(p["found"] in ([], {}), "no host power is reachable: %r" % p["found"])
    check(p["n"] > 100, "the walk went through the reachable values (%d)" % p["n"])
    eq(p["G_is_env"], True, "_G is the script's own environment")
    eq((p["string_mt"], p["settings_mt"]), ("false", "false"), "protected metatables")


STRING_TAMPER = r"""
local wix = require "wix"
return function(event, ctx)
  local r = {}
  r.get_mt = tostring(getmetatable(""))
  r.set_mt = pcall(setmetatable, "", {})
  r.rawset_mt = pcall(function() rawset(getmetatable(""), "__index", {}) end)
  r.index_write = pcall(function() local s = "" s.upper = function() return "hijacked" end end)
  -- the script's own string table: emptied and poisoned
  string.format, string.gsub, string.find, string.rep = nil, nil, nil, nil
  rawset(string, "upper", function() return "hijacked" end)
  setmetatable(string, { __index = function() return function() return "hijacked" end end })
  r.method = ("abc"):upper()
  r.method_find = ("abc"):find("b")
  -- the wix module still formats its errors and works
  local ok, e = pcall(wix.packages.get, "not-a-guid")
  r.wix_error = tostring(e)
  return r
end
"""
STRING_VICTIM = r"""
return function(event, ctx)
  return { upper = ("abc"):upper(), format = string.format("%d", 7), fn = type(string.upper),
           find = ("abc"):find("c") }
end
"""


@test
def escape_string_metatable_and_library_stay_per_script():
    cfg = wix_block() + "hooks:\n  tamper:\n    - script: tamper.lua\n  victim:\n    - script: victim.lua\n"
    w = Work(cfg, {"tamper.lua": STRING_TAMPER, "victim.lua": STRING_VICTIM})
    r = w.batch([{"event": "tamper", "id": "t1"}, {"event": "victim", "id": "v1"}, {"event": "tamper", "id": "t2"}])
    eq((r.rc, r.json["ok"]), (0, 3), "all three ran (%s)" % r)
    t = w.fire("tamper").json["hooks"][0]["result"]
    eq(t["get_mt"], "false", "getmetatable(\"\") is hidden")
    eq((t["set_mt"], t["rawset_mt"], t["index_write"]), (False, False, False),
       "the strings' metatable cannot be set, reached or written through")
    eq((t["method"], t["method_find"]), ("ABC", 2), "method calls on strings are not affected by the script's "
                                                     "own string table")
    check(re.search(r"tamper\.lua:\d+: wix: 400 INVALID_ARGUMENT: id: must be a GUID", t["wix_error"]),
          "the wix module still works: %r" % t["wix_error"])
    v = w.fire("victim").json["hooks"][0]["result"]
    eq(v, {"upper": "ABC", "format": "7", "fn": "function", "find": 3}, "another script's strings are its own")


@test
def escape_shared_tables_do_not_cross_hooks_or_permissions():
    tamper = r"""
local wix = require "wix"
return function(event, ctx)
  local r = {}
  -- replace the wix module's functions, its settings, its metatables
  rawset(wix, "packages", { create = function() return { id = "fake" } end, get = wix.packages.get,
                            query = wix.packages.query })
  r.settings_rawset = pcall(rawset, wix.settings, "dry_run", true)
  r.settings_set = pcall(function() wix.settings.transport = "http" end)
  r.settings_mt = pcall(setmetatable, wix.settings, {})
  setmetatable(_G, { __index = function(t, k) return "injected " .. k end })
  r.global = tostring(anything)
  return r
end
"""
    creator = r"""
local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  return { id = p.id, real = p.id ~= "fake", global = tostring(anything) }
end
""" % (JANE, P_SERVICE)
    sneaky = r"""
local wix = require "wix"
return function(event, ctx)
  -- a read-only hook dresses a create up as a read: the check is on the call that goes out
  wix.packages.get = function() return wix.packages.create{ account_id = "%s",
    products = {{ catalog_product_id = "%s", country_code = "DE" }} } end
  return wix.packages.get("x")
end
""" % (JANE, P_SERVICE)
    cfg = (wix_block() + "hooks:\n  tamper:\n    - script: tamper.lua\n  create:\n    - script: creator.lua\n"
           "  sneaky:\n    - script: sneaky.lua\n      allow: [read]\n")
    w = Work(cfg, {"tamper.lua": tamper, "creator.lua": creator, "sneaky.lua": sneaky})
    t = w.fire("tamper")
    eq(t.rc, 0, "tamper (%s)" % t)
    res = t.json["hooks"][0]["result"]
    eq(res["global"], "injected anything", "the script's own _G took the metatable")
    eq((res["settings_set"], res["settings_mt"]), (False, False), "wix.settings is read-only and locked")
    c = w.batch([{"event": "tamper", "id": "t"}, {"event": "create", "id": "c"}])
    eq(c.rc, 0, "batch (%s)" % c)
    c = w.fire("create")
    eq(c.rc, 0, "create (%s)" % c)
    res = c.json["hooks"][0]["result"]
    eq((res["real"], res["global"]), (True, "nil"), "another hook has its own wix module and globals")
    s = w.fire("sneaky")
    eq(s.rc, 1, "sneaky (%s)" % s)
    check("operation 'create' is not allowed for this hook (allow: get, query)" in s.json["hooks"][0]["error"],
          "the allow list holds whatever the module was turned into: %r" % s.json["hooks"][0])


# A hook run's globals: several runs of one hook are in flight together in its one Lua state (they
# wait on API calls, the scheduler interleaves them). A forgotten `local` made 3 of 4 concurrent
# events act for another customer; a later run saw what an earlier one left.
RUN_GLOBALS = r"""
local wix = require "wix"
counter = 0                                   -- the script's own top-level globals
function remember(c) last_customer = c end    -- a top-level function writes a global...
function recall() return last_customer end    -- ...and another reads it, during a run
return function(event, ctx)
  local r = { left = tostring(customer), left_by_fn = tostring(recall()), left_raw = tostring(raw),
              left_env = tostring(env_raw), left_meta = tostring(unknown_name) }
  customer = event.customer                   -- the forgotten local
  remember(event.customer)
  rawset(_G, "raw", event.customer)
  rawset(_ENV, "env_raw", event.customer)
  counter = counter + 1
  setmetatable(_ENV, { __index = function(_, k) return k .. " of " .. event.customer end })
  wix.sleep(event.wait)                       -- the other runs go on meanwhile
  r.customer, r.by_fn, r.raw, r.env_raw, r.counter = customer, recall(), raw, env_raw, counter
  r.meta = unknown_name
  r.listed = {}                               -- pairs(_G): the run's own, then the script's
  for k, v in pairs(_G) do
    if k == "customer" or k == "counter" or k == "recall" then r.listed[k] = type(v) == "function" and "fn" or v end
  end
  return r
end
"""


# The script's own metatable on _G, fetched at the top level: what it stores through its table
# argument is the run's too.
MEMO_GLOBALS = r"""
getmetatable(_G).__index = function(t, k) rawset(t, k, "memo of " .. k) return "memo of " .. k end
return function(event, ctx)
  local before = rawget(_G, "anything")
  return { before = tostring(before), now = anything }
end
"""


@test
def escape_runs_in_flight_together_do_not_share_globals():
    cfg = wix_block() + "hooks:\n  order:\n    - script: globals.lua\n  memo:\n    - script: memo.lua\n"
    w = Work(cfg, {"globals.lua": RUN_GLOBALS, "memo.lua": MEMO_GLOBALS})
    waits = [200, 50, 150, 100]
    events = [{"event": "order", "id": "o%d" % i, "data": {"customer": "cust-%d" % i, "wait": waits[i]}}
              for i in range(4)]
    text = "".join(json.dumps(e) + "\n" for e in events)
    r = w.run("fire", "--batch", "-", "--json", "--concurrency", "4", "--no-dedupe", stdin=text, timeout=20)
    eq(r.rc, 0, "the four events ran (%s)" % r)
    lines = [json.loads(x) for x in r.out.strip().splitlines()[:-1]]
    eq(len(lines), 4, "a line per event: %r" % lines)
    for line in lines:
        want = "cust-%s" % line["id"][1:]
        res = line["hooks"][0]["result"]
        eq((res["customer"], res["by_fn"], res["raw"], res["env_raw"]), (want, want, want, want),
           "event %s acts for its own customer (a global, one a top-level function set, rawset on _G and _ENV)"
           % line["id"])
        eq(res["counter"], 1, "a top-level global assigned in a run is the run's own (event %s)" % line["id"])
        eq(res["meta"], "unknown_name of " + want, "a metatable set on _ENV is the run's own (event %s)" % line["id"])
        eq(res["listed"], {"customer": want, "counter": 1, "recall": "fn"}, "pairs(_G) lists what the run sees")
    # one after the other: the second run sees nothing the first one left
    seq = [{"event": "order", "id": "s%d" % i, "data": {"customer": "seq-%d" % i, "wait": 1}} for i in range(2)]
    r = w.batch(seq)
    eq(r.rc, 0, "the two events ran (%s)" % r)
    for line in r.event_lines:
        res = line["hooks"][0]["result"]
        eq((res["left"], res["left_by_fn"], res["left_raw"], res["left_env"], res["left_meta"], res["counter"]),
           ("nil", "nil", "nil", "nil", "nil", 1), "run %s starts from the script's own globals" % line["id"])
    r = w.batch([{"event": "memo", "id": "m%d" % i} for i in range(2)])
    eq(r.rc, 0, "the two events ran (%s)" % r)
    eq([line["hooks"][0]["result"] for line in r.event_lines], [{"before": "nil", "now": "memo of anything"}] * 2,
       "what the script's __index stored in a run stays in that run")


@test
def escape_gc_finalizers_cannot_be_set():
    # Lua runs __gc with every hook off: one that loops would hang the process.
    loop = "function() while true do end end"
    scripts = {
        "direct": "return function() setmetatable({}, { __gc = %s }) end\n" % loop,
        "error_mt": ('local wix = require "wix"\nreturn function()\n  wix.Error.__gc = %s\n'
                     '  for i = 1, 200 do pcall(wix.packages.get, "x") end\n'
                     '  for i = 1, 20000 do local x = { i } end\n  error("done")\nend\n') % loop,
        "task_mt": ('local wix = require "wix"\nreturn function()\n'
                    '  getmetatable(wix.spawn(function() end)).__gc = %s\n'
                    '  for i = 1, 100 do wix.spawn(function() end) end\nend\n') % loop,
        "array_mt": ('local wix = require "wix"\nreturn function()\n  getmetatable(wix.array()).__gc = %s\n'
                     '  for i = 1, 100 do wix.array() end\nend\n') % loop,
        "via_index": ("return function()\n  local mt = setmetatable({}, { __index = function(t, k) return %s end })\n"
                      "  setmetatable({}, mt)\nend\n") % loop,
    }
    errors = attacks(scripts, max_seconds=20)
    gc = r"setmetatable: __gc finalizers are not allowed in scripts"
    expect(errors, {"direct": r"^(\./)?direct\.lua:1: " + gc, "task_mt": gc, "array_mt": gc,
                    "via_index": r"via_index\.lua:3: " + gc, "error_mt": r"error_mt\.lua:6: done$"})
    # a __gc added to a metatable after setmetatable is never run (Lua marks objects when their
    # metatable is set): the run ends, garbage is collected, nothing hangs
    t0 = time.time()
    p = probe("return function()\n  local mt = {}\n  local t = setmetatable({}, mt)\n"
              "  mt.__gc = %s\n  t = nil\n  for i = 1, 50000 do local x = { i } end\n"
              "  return collectgarbage('count') > 0\nend\n" % loop)
    eq(p, True, "the run returned")
    check(time.time() - t0 < 20, "and ended")


@test
def escape_setmetatable_with_something_else_than_a_table():
    # lua_setmetatable takes any value for a table: a number or a function there
    # was memory corruption (a crash of the process, of wixr serve too).
    scripts = {
        "number": "return function() return setmetatable({}, 12345) end\n",
        "func": "return function() return setmetatable({}, print) end\n",
        "text": "return function() return setmetatable({}, 'mt') end\n",
        "bool": "return function() return setmetatable({}, true) end\n",
    }
    errors = attacks(scripts)
    for name, kind in (("number", "number"), ("func", "function"), ("text", "string"), ("bool", "boolean")):
        expect(errors, {name: r"bad argument #2 to 'setmetatable' \(nil or table expected, got %s\)$" % kind})


@test
def escape_collectgarbage_only_counts():
    script = r"""
return function(event, ctx)
  local r = {}
  for _, opt in ipairs({ "collect", "stop", "restart", "step", "setpause", "setstepmul", "incremental",
                         "generational", "isrunning" }) do
    r[opt] = select(2, pcall(collectgarbage, opt, 0))
  end
  r.count = type(collectgarbage("count"))
  r.default = type(collectgarbage())
  return r
end
"""
    p = probe(script)
    msg = 'collectgarbage: only "count" is available to scripts'
    for opt in ("collect", "stop", "restart", "step", "setpause", "setstepmul", "incremental", "generational",
                "isrunning"):
        eq(p[opt], msg, "collectgarbage(%r)" % opt)
    eq((p["count"], p["default"]), ("number", "number"), "collectgarbage(\"count\")")


@test
def escape_coroutines_cannot_touch_the_runs_own_threads():
    script = r"""
local wix = require "wix"
return function(event, ctx)
  local r = {}
  local th
  local task = wix.spawn(function() th = coroutine.running() wix.sleep(150) return "slept" end)
  wix.sleep(20)
  r.status = coroutine.status(th)
  r.resume = { coroutine.resume(th, 200, "{}", "forged", 1) }
  r.close = { pcall(coroutine.close, th) }
  r.resume_self = { coroutine.resume(coroutine.running()) }
  r.yieldable = coroutine.isyieldable()
  r.wait = task:wait()
  local own = coroutine.wrap(function() coroutine.yield(coroutine.isyieldable()) end)
  r.own_yieldable = own()
  return r
end
"""
    p = probe(script)
    not_own = "a coroutine wixr runs (only those made with coroutine.create or wrap)"
    eq(p["status"], "suspended", "the task was parked")
    eq(p["resume"], [False, "cannot resume " + not_own], "resuming a task of the run")
    eq(p["close"], [False, "cannot close " + not_own], "closing a task of the run")
    eq(p["resume_self"], [False, "cannot resume " + not_own], "resuming the run's own thread")
    eq((p["yieldable"], p["own_yieldable"]), (False, True), "isyieldable")
    eq(p["wait"], "slept", "the task slept its full time and ended on its own")
    errors = attacks({"yield": "return function()\n  coroutine.yield()\n  return 'resumed'\nend\n"}, max_seconds=10)
    expect(errors, {"yield": r"(^|/)yield\.lua:2: attempt to yield from outside a coroutine$"})


@test
def escape_spawned_tasks_keep_the_runs_limits_and_permissions():
    create = ('wix.packages.create{ account_id = "%s", products = {{ catalog_product_id = "%s", '
              'country_code = "DE" }} }' % (JANE, P_SERVICE))
    scripts = {
        # started from inside a coroutine of the script, where no run is current
        "from_coroutine_loop": ('local wix = require "wix"\nreturn function()\n  local t\n'
                                '  coroutine.wrap(function() t = wix.spawn(function()\n    while true do end\n'
                                '  end) end)()\n  return t:wait()\nend\n'),
        "from_coroutine_create": ('local wix = require "wix"\nreturn function()\n  local t\n'
                                  '  coroutine.wrap(function() t = wix.spawn(function()\n    return %s.id\n'
                                  '  end) end)()\n  return t:wait()\nend\n') % create,
        "all_in_coroutine": ('local wix = require "wix"\nreturn function()\n  return coroutine.wrap(function()\n'
                             '    return wix.all{ function() return %s.id end }\n  end)()\nend\n') % create,
    }
    errors = attacks(scripts, hook_extra={"from_coroutine_create": "      allow: [read]\n",
                                          "all_in_coroutine": "      allow: [read]\n"}, max_seconds=20)
    refused = r"operation 'create' is not allowed for this hook \(allow: get, query\)"
    expect(errors, {"from_coroutine_loop": instruction_limit_at(5), "from_coroutine_create": refused,
                    "all_in_coroutine": refused + r"|wix\.core\.suspend must be called from a script run by wixr"})
    eq(packages_in(LAST_WORK), 0, "nothing was created")
    # at load time there is no run for a task to belong to
    w = Work(wix_block() + "hooks:\n  early:\n    - script: early.lua\n",
             {"early.lua": 'local wix = require "wix"\nwix.spawn(function() while true do end end)\n'
                           'return function() return 1 end\n'})
    r = w.run("check", timeout=10)
    eq(r.rc, 3, "check refuses the script (%s)" % r)
    check("wix.spawn: tasks can only be started by a run of the handler, not while the script loads" in r.err,
          "the reason: %r" % r.err)
    r = w.fire("early", timeout=10)
    eq(r.rc, 3, "fire refuses to start (%s)" % r)


@test
def escape_error_objects_are_turned_into_text_safely():
    # The error of a run is made text after the run: a __tostring is script code.
    scripts = {
        "tostring_loops": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                           "    while true do end\n  end }))\nend\n"),
        "tostring_raises": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                            "    error('inside __tostring')\n  end }))\nend\n"),
        "tostring_big": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                         "    return ('x'):rep(4 * 1024 * 1024)\n  end }))\nend\n"),
        "tostring_memory": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                            "    local t = {} for i = 1, 1e8 do t[i] = ('x'):rep(1000) .. i end\n  end }))\nend\n"),
        "tostring_yields": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                            "    coroutine.yield()\n  end }))\nend\n"),
        # script code with no task running still answers to the hook's limits: a coroutine's loop,
        # a C library call charged to the budget
        "tostring_coroutine": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                               "    coroutine.wrap(function() while true do end end)()\n  end }))\nend\n"),
        "tostring_len_insert": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                                "    table.insert(setmetatable({}, { __len = function() return 1e15 end }), 1, 'x')\n"
                                "  end }))\nend\n"),
        "tostring_ok": ("return function()\n  error(setmetatable({}, { __tostring = function()\n"
                        "    return 'a custom message'\n  end }))\nend\n"),
        "table": "return function()\n  error({ code = 7, where = 'here' })\nend\n",
        "function": "return function()\n  error(print)\nend\n",
    }
    errors = attacks(scripts, max_seconds=20)
    # made text under protection and a bound of its own (outcome.c): what went wrong is said
    cannot = r"^\(error object is a table value; its text cannot be had: %s\)$"
    expect(errors, {"tostring_loops": cannot % r"its __tostring ran for more than 1000000 instructions",
                    "tostring_raises": cannot % r"tostring_raises\.lua:3: inside __tostring",
                    "tostring_memory": cannot % r"(it ran out of memory|.*memory.*)",
                    "tostring_yields": cannot % r"tostring_yields\.lua:3: attempt to yield .*",
                    "tostring_coroutine": cannot % r"tostring_coroutine\.lua:3: instruction limit exceeded \(1000000\)",
                    "tostring_len_insert": cannot % r"tostring_len_insert\.lua:3: instruction limit exceeded \(1000000\)",
                    "tostring_ok": r"^a custom message$", "table": r'^\{"(code|where)":',
                    "function": r"^\(error object is a function value\)$"})
    check(re.fullmatch(r"x{900,1100}", errors["tostring_big"]), "a huge message is cut: %d characters"
          % len(errors["tostring_big"]))
    # while loading, a coroutine's loop answers to the limits too (it escaped them: the check hung)
    w = Work(wix_block() + "runtime:\n  limits: {instructions: 1000000}\nhooks:\n  early:\n    - script: early.lua\n",
             {"early.lua": "coroutine.wrap(function() while true do end end)()\nreturn function() end\n"})
    r = w.run("check", timeout=20)
    eq(r.rc, 3, "check (%s)" % r)
    check("early.lua:1: instruction limit exceeded (1000000) (while loading)" in r.err or
          re.search(r"early\.lua:1: instruction limit exceeded \(1000000\)", r.err), "message: %r" % r.err)
    # while loading, an error object is not made text by its metamethods at all
    w = Work(wix_block() + "hooks:\n  early:\n    - script: early.lua\n",
             {"early.lua": "error(setmetatable({}, { __tostring = function() while true do end end }))\n"})
    r = w.run("check", timeout=10)
    eq(r.rc, 3, "check (%s)" % r)
    check("early.lua: the script raised a table value while loading" in r.err, "message: %r" % r.err)


@test
def escape_print_cannot_forge_log_lines():
    script = ('return function()\n  print("first\\n{\\"level\\":\\"error\\",\\"msg\\":\\"forged\\"}\\r\\0\\27[2J")\n'
              '  return true\nend\n')
    w = Work(wix_block() + "hooks:\n  p:\n    - script: p.lua\n", {"p.lua": script})
    r = w.fire("p")
    eq(r.rc, 0, "fire (%s)" % r)
    lines = [x for x in r.err.splitlines() if SANDBOX_NOTICE not in x]
    eq(lines, ['[p (p.lua)] first\\n{"level":"error","msg":"forged"}\\r\\x00\\x1b[2J'],
       "one line, control characters escaped")


# ---------------------------------------------------------------------------
# 2. Limits that a script tries to evade
# ---------------------------------------------------------------------------

@test
def limits_instruction_budget_survives_pcall_xpcall_and_handlers():
    scripts = {
        "pcall_loop": ("return function()\n  while true do\n    pcall(function()\n      while true do end\n"
                       "    end)\n  end\nend\n"),
        "xpcall_handler_loops": ("return function()\n  while true do\n    xpcall(function() while true do end end,\n"
                                 "      function(e) while true do end end)\n  end\nend\n"),
        "xpcall_handler_returns": ("return function()\n  local caught = 0\n  while true do\n"
                                   "    xpcall(function() while true do end end, function(e) caught = caught + 1 "
                                   "return e end)\n  end\nend\n"),
        "error_rethrown": ("return function()\n  for i = 1, 1e12 do\n    local ok, e = pcall(function() "
                           "while true do end end)\n    ok = pcall(error, e)\n  end\nend\n"),
        "close_handler": ("return function()\n  local guard <close> = setmetatable({}, { __close = function()\n"
                          "    while true do end\n  end })\n  while true do end\nend\n"),
        "pcall_wrap": ("return function()\n  while true do\n    pcall(coroutine.wrap(function() while true do end end))\n"
                       "  end\nend\n"),
        "nested_wraps": ("return function()\n  local f = coroutine.wrap(function()\n"
                         "    return coroutine.wrap(function()\n      return coroutine.wrap(function()\n"
                         "        while true do end\n      end)()\n    end)()\n  end)\n  return f()\nend\n"),
        "gsub_callback": ("return function()\n  return (('x'):rep(10)):gsub('.', function()\n"
                          "    while true do end\n  end)\nend\n"),
        "sort_comparator": ("return function()\n  local t = { 3, 1, 2 }\n  table.sort(t, function(a, b)\n"
                            "    while true do end\n  end)\nend\n"),
    }
    errors = attacks(scripts, max_seconds=20)
    expect(errors, {"pcall_loop": instruction_limit_at(4), "xpcall_handler_loops": INSTRUCTIONS,
                    "xpcall_handler_returns": INSTRUCTIONS, "error_rethrown": INSTRUCTIONS,
                    "close_handler": INSTRUCTIONS, "pcall_wrap": instruction_limit_at(3),
                    "nested_wraps": instruction_limit_at(5), "gsub_callback": instruction_limit_at(3),
                    "sort_comparator": instruction_limit_at(4)})


@test
def waits_are_refused_where_they_cannot_yield():
    # wix.sleep from a string.gsub callback cannot yield: it is refused before its timer is armed (a
    # stray timer woke the run's next wait early: two 1.5 s sleeps took 1.5 s)
    script = ('local wix = require "wix"\nreturn function()\n'
              '  local ok, e = pcall(string.gsub, "a", "a", function() wix.sleep(0) end)\n'
              '  wix.sleep(1500)\n  wix.sleep(1500)\n  return { ok = ok, err = tostring(e) }\nend\n')
    w = Work(wix_block() + "runtime:\n  limits: {wall_ms: 20000}\nhooks:\n  w:\n    - script: w.lua\n",
             {"w.lua": script})
    r = w.fire("w", timeout=30)
    eq(r.rc, 0, "fire (%s)" % r)
    res = r.json["hooks"][0]["result"]
    eq(res["ok"], False, "the wait in the callback failed")
    check("wix.sleep cannot wait here" in res["err"], "it says why: %r" % res["err"])
    check(r.elapsed >= 3.0, "both sleeps waited their whole time: %.2f s" % r.elapsed)


@test
def encoding_at_the_memory_cap_leaks_nothing():
    # ctx.emit and ctx.log encode into C buffers; a memory error while encoding (the hook at its cap)
    # once unwound past them: 100 MB leaked in 200 calls. Under the sanitizers, a leak fails this test.
    script = ('return function(event, ctx)\n'
              '  local data = { a = string.rep("x", 400000), b = {} }\n'
              '  for i = 1, 40 do data.b["field_number_" .. i] = i end\n'
              '  local head\n'
              '  local function grow() head = { next = head, 1, 2, 3, 4 } end\n'
              '  local fails = 0\n'
              '  for round = 1, 100 do\n'
              '    while pcall(grow) do end\n'  # fill the state up to its cap
              '    if not pcall(ctx.emit, "other", data) then fails = fails + 1 end\n'
              '    while pcall(grow) do end\n'
              '    if not pcall(ctx.log, "info", "at the cap", data.b) then fails = fails + 1 end\n'
              '  end\n'
              '  head = nil\n'
              '  return { fails = fails }\nend\n')
    w = Work(wix_block() + "runtime:\n  limits: {memory_mb: 4, instructions: 10000000000, wall_ms: 60000}\n"
             "hooks:\n  m:\n    - script: m.lua\n  other:\n    - script: other.lua\n",
             {"m.lua": script, "other.lua": "return function() return true end\n"})
    r = w.fire("m", timeout=120)
    check(r.rc in (0, 1), "fire ended (%s)" % r)
    check(r.json["hooks"][0].get("result", {}).get("fails", 0) > 0 or r.rc == 1,
          "encoding failed at the cap at least once: %r" % r.json["hooks"][0])


@test
def an_answer_whose_document_cannot_fit_is_refused_before_it_is_built():
    # An API answer is parsed into a C document before its Lua values are made: a dense answer
    # (12 MB of "0,") is a document of ~300 MB, outside the hook's memory cap. Refused first now:
    # the run fails with the memory limit and the process stays small.
    import http.server
    body = b'{"packages": [' + b"0," * (6 * 1024 * 1024) + b'0]}'

    class Dense(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Dense)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        script = ('local wix = require "wix"\nreturn function()\n'
                  '  return #wix.packages.query{ limit = 1 }.packages\nend\n')
        cfg = ("wix:\n  transport: http\n  base_url: \"http://127.0.0.1:%d\"\n  rate_limit: {requests: 0}\n"
               "  retry: {attempts: 1}\n  account_id: %s\nruntime:\n  limits: {memory_mb: 16}\n"
               "hooks:\n  dense:\n    - script: dense.lua\n" % (srv.server_address[1], JANE))
        w = Work(cfg, {"dense.lua": script})
        code = ("import resource, subprocess, sys\n"
                "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                "print(p.stdout)\n")
        env = clean_env(None)
        env["WIX_API_KEY"] = "dense-key"
        p = subprocess.run([sys.executable, "-c", code, ARGS.wixr, "fire", "dense", "--json"], cwd=w.dir, env=env,
                           capture_output=True, text=True, timeout=60)
        lines = p.stdout.strip().splitlines()
        rss_mb = int(lines[0]) / 1024
        rep = json.loads(lines[1])
        h = rep["hooks"][0]
        eq(h["status"], "failed", "the run failed (%r)" % h)
        check("memory limit exceeded (16 MB)" in h["error"], "as a memory failure: %r" % h["error"])
        check(rss_mb < 150, "wixr fire peaked at %.0f MB for a 12 MB answer and a hook capped at 16 MB" % rss_mb)
    finally:
        srv.shutdown()


@test
def limits_wall_time_survives_pcall():
    scripts = {
        "busy_pcall": ("return function()\n  while true do\n    pcall(function()\n      while true do end\n"
                       "    end)\n  end\nend\n"),
        "sleep_pcall": ('local wix = require "wix"\nreturn function()\n  while true do\n'
                        '    pcall(wix.sleep, 100)\n  end\nend\n'),
        # math.huge (cast to an integer: undefined behaviour) sleeps until the run ends
        "sleep_huge": ('local wix = require "wix"\nreturn function()\n  while true do\n'
                       '    wix.sleep(math.huge)\n  end\nend\n'),
    }
    t0 = time.time()
    errors = attacks(scripts, limits="instructions: 100000000000, wall_ms: 300, memory_mb: 16", max_seconds=8)
    expect(errors, {"busy_pcall": r"wall time limit exceeded \(300 ms\)$",
                    "sleep_pcall": r"^sleep_pcall\.lua:\d+: wall time limit exceeded \(300 ms\) while waiting$",
                    "sleep_huge": r"^sleep_huge\.lua:\d+: wall time limit exceeded \(300 ms\) while waiting$"})
    check(time.time() - t0 < 8, "each ended near its 300 ms, long before any other limit")


@test
def limits_memory_bombs():
    scripts = {
        "rep_huge": "return function()\n  return #('x'):rep(1e9)\nend\n",
        "string_rep": "return function()\n  return #string.rep('abc', 2^24, ',')\nend\n",
        "doubling": "return function()\n  local s = 'x'\n  while true do s = s .. s end\nend\n",
        "concat_growth": ("return function()\n  local t = {}\n  for i = 1, 1e9 do t[i] = ('y'):rep(1000) .. i end\n"
                          "  return #table.concat(t)\nend\n"),
        "table_growth": "return function()\n  local t = {}\n  for i = 1, 1e9 do t[i] = { i } end\nend\n",
        "nested": "return function()\n  local t = {}\n  for i = 1, 1e9 do t = { t } end\nend\n",
        "keys": "return function()\n  local t = {}\n  for i = 1, 1e9 do t['k' .. i] = i end\nend\n",
        "format_width": "return function()\n  return string.format('%099999d', 1)\nend\n",
        "closures": ("return function()\n  local fs = {}\n  for i = 1, 1e9 do fs[i] = function() return i end end\n"
                     "end\n"),
        "coroutines": ("return function()\n  local cs = {}\n  for i = 1, 1e9 do cs[i] = coroutine.create(print) end\n"
                       "end\n"),
    }
    errors = attacks(scripts, limits="instructions: 100000000, wall_ms: 60000, memory_mb: 16", timeout=90,
                     max_seconds=60)
    for name in ("rep_huge", "string_rep", "doubling", "concat_growth", "table_growth", "nested", "keys",
                 "closures", "coroutines"):
        expect(errors, {name: MEMORY})
    expect(errors, {"format_width": r"format_width\.lua:2: invalid conversion specification: '%099999d'$"})
    # a memory error can be caught (the cap held); catching it for ever is stopped like any loop
    errors = attacks({"pcall_swallows": ("return function()\n  local caught = 0\n  while true do\n"
                                         "    if not pcall(string.rep, 'x', 2^28) then caught = caught + 1 end\n"
                                         "  end\nend\n")}, max_seconds=20)
    expect(errors, {"pcall_swallows": instruction_limit_at(4)})


@test
def limits_deep_recursion_and_metamethod_chains():
    scripts = {
        "lua_recursion": "local function f(n) return 1 + f(n + 1) end\nreturn function()\n  return f(1)\nend\n",
        "index_function": ("return function()\n  local t = setmetatable({}, {})\n"
                           "  getmetatable(t).__index = function(t, k) return t[k] end\n  return t.x\nend\n"),
        "index_loop": ("return function()\n  local a, b = {}, {}\n  setmetatable(a, { __index = b })\n"
                       "  setmetatable(b, { __index = a })\n  return a.x\nend\n"),
        "newindex_loop": ("return function()\n  local a, b = {}, {}\n  setmetatable(a, { __newindex = b })\n"
                          "  setmetatable(b, { __newindex = a })\n  a.x = 1\nend\n"),
        "eq_recursion": ("return function()\n  local mt = {}\n  mt.__eq = function(a, b) return a == b end\n"
                         "  return setmetatable({}, mt) == setmetatable({}, mt)\nend\n"),
        "concat_recursion": ("return function()\n  local mt = {}\n  mt.__concat = function(a, b) return a .. b end\n"
                             "  return setmetatable({}, mt) .. 'x'\nend\n"),
        "tostring_recursion": ("return function()\n  local t = setmetatable({}, {})\n"
                               "  getmetatable(t).__tostring = function(x) return tostring(x) end\n"
                               "  return tostring(t)\nend\n"),
        "gsub_recursion": ("local function f(s) return (s:gsub('.', f)) end\nreturn function()\n"
                           "  return f('abc')\nend\n"),
        "load_nesting": ("return function()\n  return assert(load('return ' .. ('('):rep(100000) .. '1' .. (')'):rep(100000)))\n"
                         "end\n"),
        "returned_depth": ("return function()\n  local t = {}\n  for i = 1, 1000 do t = { t } end\n  return t\nend\n"),
        "returned_cycle": "return function()\n  local t = {}\n  t.self = t\n  return t\nend\n",
    }
    errors = attacks(scripts, limits="instructions: 100000000, wall_ms: 60000, memory_mb: 64", timeout=90,
                     max_seconds=60)
    expect(errors, {
        "lua_recursion": r"^memory limit exceeded \(64 MB\)$|lua_recursion\.lua:1: stack overflow",
        "index_function": r"index_function\.lua:3: (stack overflow|C stack overflow)",
        "index_loop": r"index_loop\.lua:5: '__index' chain too long; possible loop$",
        "newindex_loop": r"newindex_loop\.lua:5: '__newindex' chain too long; possible loop$",
        "eq_recursion": r"eq_recursion\.lua:3: (stack overflow|C stack overflow)",
        "concat_recursion": r"concat_recursion\.lua:3: (stack overflow|C stack overflow)",
        "tostring_recursion": r"(stack overflow|C stack overflow)",
        "gsub_recursion": r"(stack overflow|C stack overflow)",
        "returned_depth": r"^the handler returned a value that is not data: table nested deeper than 64",
        "returned_cycle": r"^the handler returned a value that is not data: table nested deeper than 64",
    })
    check(re.search(r"load_nesting\.lua:2: .*(too many|overflow|C levels)", errors["load_nesting"]),
          "load of a deeply nested chunk: %r" % errors.get("load_nesting"))


@test
def limits_single_c_calls_cannot_run_forever():
    # The count hook never runs inside a C function: these calls looped in C
    # for ever, past every limit.
    lying_len = "setmetatable({}, { __len = function() return 1e15 end })"
    scripts = {
        "rep_empty": "return function()\n  error(#string.rep('', math.maxinteger) .. ' bytes')\nend\n",
        "rep_empty_sep": "return function()\n  error(#(''):rep(1e15, '') .. ' bytes')\nend\n",
        "move": "return function()\n  return #table.move({}, 1, 1e15, 2)\nend\n",
        "insert": "return function()\n  table.insert(%s, 1, 'x')\nend\n" % lying_len,
        "remove": "return function()\n  return table.remove(%s, 1)\nend\n" % lying_len,
        "unpack": "return function()\n  return select('#', table.unpack(%s))\nend\n" % lying_len,
        "concat": "return function()\n  return table.concat(%s)\nend\n" % lying_len,
        "sort": "return function()\n  table.sort(setmetatable({}, { __len = function() return 2^31 - 2 end }))\nend\n",
    }
    errors = attacks(scripts, max_seconds=20)
    expect(errors, {"move": instruction_limit_at(2), "insert": instruction_limit_at(2),
                    "remove": instruction_limit_at(2), "unpack": r"unpack\.lua:2: too many results to unpack$",
                    "concat": r"concat\.lua:2: invalid value \(at index 1\) in table for 'concat'$|"
                              r"concat\.lua:2: invalid value \(nil\) at index 1",
                    "sort": instruction_limit_at(2)})
    # an empty string repeated is empty, at once
    expect(errors, {"rep_empty": r"rep_empty\.lua:2: 0 bytes$", "rep_empty_sep": r"rep_empty_sep\.lua:2: 0 bytes$"})


@test
def limits_costly_patterns_are_refused():
    big = "local s = ('a'):rep(%d)\n"
    scripts = {
        "find_nested": big % 300 + "return function() return s:find('a*a*a*b') end\n",
        "find_lazy": big % 100000 + "return function() return s:find('.-b') end\n",
        "match_optional": big % 40 + "return function() return s:match(('a?'):rep(40) .. ('a'):rep(40)) end\n",
        "gmatch_lazy": big % 100000 + "return function() for x in s:gmatch('(.-)b') do end end\n",
        "gsub_classes": big % 5000 + "return function() return s:gsub('%a*%a*%a*b', '') end\n",
        "sets": big % 5000 + "return function() return string.find(s, '[%w_]*[%w_]*[%w_]*b') end\n",
        "backref": big % 100000 + "return function() return s:find('(a*)%1b') end\n",
        "balance": ("local s = ('('):rep(50000)\nreturn function() return s:find('%b()%b()') end\n"),
    }
    errors = attacks(scripts, max_seconds=20)
    for name in scripts:
        expect(errors, {name: r"%s\.lua:\d+: pattern too costly for a \d+-byte string" % name})
    # what policies do every day still works, on large texts too
    ok = probe(r"""
return function(event, ctx)
  local text = ("word  word\t12.5 \n"):rep(20000)
  local lines = 0
  for _ in text:gmatch("[^\n]+") do lines = lines + 1 end
  return {
    trim = ("   padded value  "):match("^%s*(.-)%s*$"),
    squeeze = #(text:gsub("%s+", " ")),
    lines = lines,
    number = tonumber(text:match("%d+%.%d+")),
    guid = ("33333333-4444-4555-8666-777777777777"):match("^%x+%-%x+%-%x+%-%x+%-%x+$") ~= nil,
    plain = text:find("12.5", 1, true),
    kv = { ("key = value"):match("^(%w+)%s*=%s*(%w+)$") },
  }
end
""")
    eq(ok["trim"], "padded value", "trim")
    eq((ok["lines"], ok["number"], ok["guid"], ok["plain"], ok["kv"]), (20000, 12.5, True, 12, ["key", "value"]),
       "everyday patterns")
    check(ok["squeeze"] > 0, "gsub over 360 kB")


@test
def limits_cjson_is_wixrs_encoder_with_its_caps():
    # lua-cjson itself was reachable: a settable encode depth crashed the
    # process in C recursion, and its buffer grew outside memory_mb.
    deep = ("local t = {}\nlocal cur = t\nfor _ = 1, 200000 do cur[1] = {} cur = cur[1] end\n")
    scripts = {
        "cjson_depth": 'local cjson = require "cjson"\n' + deep +
                       "return function()\n  pcall(cjson.encode_max_depth, 1000000)\n"
                       "  return #cjson.encode(t)\nend\n",
        "cjson_growth": 'local cjson = require "cjson"\nlocal s = ("x"):rep(4 * 1024 * 1024)\n'
                        "return function()\n  local t = {}\n  for i = 1, 100 do t[i] = s end\n"
                        "  return #cjson.encode(t)\nend\n",
        # 6 MB of text is 3 million values: their parsed document (C memory) is refused first
        "cjson_decode_growth": 'local cjson = require "cjson"\nlocal s = "[" .. ("0,"):rep(3 * 1024 * 1024) .. "0]"\n'
                               "return function()\n  return #cjson.decode(s)\nend\n",
    }
    errors = attacks(scripts, max_seconds=20)
    expect(errors, {"cjson_depth": r"cjson_depth\.lua:7: cjson\.encode: table nested deeper than 64",
                    "cjson_growth": MEMORY, "cjson_decode_growth": MEMORY})
    # the growth stayed near the hook's memory: 400 MB of text was never made (lua-cjson peaked at
    # 428 MB; here 36 MB, 119 MB under ASan)
    w = LAST_WORK
    code = ("import resource, subprocess, sys\n"
            "subprocess.run(sys.argv[1:], capture_output=True)\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    for name in ("cjson_growth", "cjson_decode_growth"):
        p = subprocess.run([sys.executable, "-c", code, ARGS.wixr, "fire", name, "--json"], cwd=w.dir,
                           env=clean_env(None), capture_output=True, text=True, timeout=60)
        rss_mb = int(p.stdout.strip()) / 1024
        check(rss_mb < 250, "wixr fire %s peaked at %.0f MB for a hook capped at 16 MB" % (name, rss_mb))
    # what is left: encode, decode and null, as lua-cjson's, with no setters
    got = probe(r"""
local cjson = require "cjson"
local wix = require "wix"
return function()
  local names = {}
  for k in pairs(cjson) do names[#names + 1] = k end
  table.sort(names)
  local back = cjson.decode('{"a":[1,null,"x"],"b":{"c":true}}')
  return { names = names, null = cjson.null == wix.null, second = back.a[2] == cjson.null,
           text = cjson.encode({ b = { 1, 2, cjson.null }, a = "x" }), c = back.b.c,
           bad = select(2, pcall(function() return cjson.decode("{oops") end)) }
end
""")
    eq(got["names"], ["decode", "encode", "null"], "cjson's names")
    eq((got["null"], got["second"], got["c"]), (True, True, True), "null and decode")
    eq(got["text"], '{"a":"x","b":[1,2,null]}', "encode")
    check(re.search(r"probe\.lua:\d+: cjson\.decode: invalid JSON at line 1, column 2", got["bad"]),
          "a bad text says where: %r" % got["bad"])


@test
def limits_encoder_walks_are_charged_and_stop_at_the_first_failure():
    # A table holding the same sub-table twice at each of 30 levels is 2^30
    # values to the encoder: it walked them all (minutes in C) before its
    # size check, whichever way it was reached.
    dag = "local n = {}\nfor _ = 1, 30 do n = { n, n } end\n"
    scripts = {
        "dag_result": dag + "return function()\n  return n\nend\n",
        "dag_cjson": dag + 'local cjson = require "cjson"\nreturn function()\n  return #cjson.encode(n)\nend\n',
        "dag_log": dag + "return function(event, ctx)\n  ctx.log('info', 'x', { n = n })\n  error('logged')\nend\n",
        "dag_emit": dag + "return function(event, ctx)\n  ctx.emit('next', { n = n })\nend\n",
        "dag_wix": dag + 'local wix = require "wix"\nreturn function()\n'
                         '  return wix.packages.query({ filter = { n = n } }, { account_id = "%s" })\nend\n' % JANE,
    }
    errors = attacks(scripts, max_seconds=20)
    for name in scripts:
        expect(errors, {name: INSTRUCTIONS + "|JSON text is too large|logged$"})


@test
def limits_sort_is_charged_for_its_length():
    # table.sort compares in C: with C metamethods (__index, __newindex and
    # the comparisons) no count hook saw the work, minutes of it.
    cmeta = "setmetatable({}, { __len = function() return 1 << 26 end, __index = rawlen, __newindex = rawlen })"
    scripts = {
        "sort_cmeta": "return function()\n  table.sort(%s)\nend\n" % cmeta,
        "sort_comparator": "return function()\n  table.sort(%s, rawequal)\nend\n" % cmeta,
        # a length asked twice could be answered twice: small when charged, large when sorted
        "sort_lying_len": "local asked = 0\nreturn function()\n  table.sort(setmetatable({}, { __len = function()\n"
                          "    asked = asked + 1\n    return asked == 1 and 3 or 1 << 26 end,\n"
                          "    __index = rawlen, __newindex = rawlen }))\n  error('sorted ' .. asked)\nend\n",
    }
    errors = attacks(scripts, max_seconds=20)
    expect(errors, {"sort_cmeta": instruction_limit_at(2), "sort_comparator": instruction_limit_at(2),
                    "sort_lying_len": r"sort_lying_len\.lua:7: sorted 1$"})
    # sorting still sorts, plain tables and tables with metamethods alike
    got = probe(r"""
return function()
  local plain = { 5, 3, 9, 1, 7, 2 }
  table.sort(plain)
  local backing = { "pear", "apple", "fig", "kiwi", "date" }
  local proxy = setmetatable({}, { __len = function() return #backing end,
    __index = function(_, i) return backing[i] end, __newindex = function(_, i, v) backing[i] = v end })
  table.sort(proxy, function(a, b) return a > b end)
  local big = {}
  for i = 1, 5000 do big[i] = (i * 7919) % 5003 end
  table.sort(setmetatable(big, {}))
  local sorted = true
  for i = 2, #big do sorted = sorted and big[i - 1] <= big[i] end
  return { plain = plain, proxy = backing, big = sorted }
end
""")
    eq(got, {"plain": [1, 2, 3, 5, 7, 9], "proxy": ["pear", "kiwi", "fig", "date", "apple"], "big": True},
       "sorts")


@test
def limits_long_literal_patterns_are_counted():
    # The bound counted repetitions only: a long literal compares its length
    # at every start position (minutes of C for a 500 kB pattern over 1 MB).
    big = "local s = ('a'):rep(1000000)\nlocal p = ('a'):rep(500000) .. 'b'\n"
    scripts = {
        "literal_match": big + "return function() return s:match(p) end\n",
        "literal_find": big + "return function() return s:find(p) end\n",
        "literal_plain": big + "return function() return s:find(p, 1, true) end\n",
        "literal_gsub": big + "return function() return s:gsub(p, '') end\n",
    }
    errors = attacks(scripts, max_seconds=20)
    for name in scripts:
        expect(errors, {name: r"%s\.lua:3: pattern too costly for a 1000000-byte string" % name})
    got = probe("return function()\n  local s = ('word '):rep(200000) .. 'needle in the hay'\n"
                "  return { s:find('needle in the hay', 1, true), s:find('needle in the hay'),\n"
                "           s:match('needle (%w+)') }\nend\n")
    eq(got, [1000001, 1000001, "in"], "ordinary literal patterns")


@test
def limits_overrun_inside_one_c_call_is_not_ok():
    # A pattern just under the cost bound takes its time in C, where neither
    # the count hook nor the watchdog reaches: the handler came back past its
    # wall time and the run was recorded ok.
    w = Work(wix_block() + "runtime:\n  limits: {wall_ms: 50}\nhooks:\n  slow:\n    - script: slow.lua\n",
             {"slow.lua": "local s = ('a'):rep(10000)\n"
                          "return function()\n  return { found = s:find('.-b') ~= nil }\nend\n"})
    r = w.fire("slow")
    eq(r.rc, 1, "the run failed (%s)" % r)
    h = r.json["hooks"][0]
    eq(h["status"], "failed", "status")
    check(re.search(r"wall time limit exceeded \(50 ms\) inside one call$", h["error"]), "error: %r" % h["error"])


@test
def logs_a_message_over_the_cap_is_cut_and_stays_one_json_line():
    w = Work(wix_block() + "hooks:\n  loud:\n    - script: loud.lua\n",
             {"loud.lua": "return function(event, ctx)\n  ctx.log('info', ('\\u{e9}'):rep(1500000), { k = 1 })\n"
                          "  print(('p\\n'):rep(1500000))\n  return true\nend\n"})
    r = w.fire("loud")
    eq(r.rc, 0, "the run (%s)" % r.out[:300])
    lines = [x for x in r.err.splitlines() if x.startswith("{")]
    check(len(lines) == 1, "one log line: %d" % len(lines))
    line = json.loads(lines[0])
    m = re.search(r" \[\.\.\. (\d+) bytes cut\]$", line["msg"])
    check(m, "a marker ends the message: %r" % line["msg"][-60:])
    kept = line["msg"][:m.start()]
    eq(set(kept), {"\u00e9"}, "whole characters kept")
    eq(len(kept.encode()) + int(m.group(1)), 3000000, "kept and cut add up")
    check(len(kept.encode()) <= 64 * 1024, "at most 64 kB kept: %d" % len(kept.encode()))
    eq(line["fields"]["k"], 1, "the fields are kept")
    prints = [x for x in r.err.splitlines() if x.startswith("[loud")]
    eq(len(prints), 1, "one print line")
    check(re.search(r"^\[loud \(loud\.lua\)\] (p\\n)+p? \[\.\.\. \d+ bytes cut\]$", prints[0]),
          "the print is cut with a marker: %r" % prints[0][-80:])


@test
def limits_emitted_events_are_capped():
    # Over the cap the list of a run's emitted events was cut, failed to parse,
    # and every one of them was dropped without a word.
    script = ('return function(event, ctx)\n  local pad = ("p"):rep(100)\n'
              '  for i = 1, 200000 do ctx.emit("child", { i = i, pad = pad }) end\nend\n')
    errors = attacks({"fanout": script}, limits="instructions: 100000000, wall_ms: 60000, memory_mb: 64",
                     max_seconds=30)
    expect(errors, {"fanout": r"fanout\.lua:3: ctx\.emit: the events emitted by one run are limited to 16 MB$"})


# ---------------------------------------------------------------------------
# 3. The service: hostile policies, secrets, the HTTP front
# ---------------------------------------------------------------------------

class Service:
    """`wixr serve` in a folder of its own."""

    def __init__(self, config, files=None, token="sec-token", env=None):
        self.w = Work(config, files)
        self.dir = self.w.dir
        self.token = token
        self.env = dict(env or {})
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.dir, "serve.log")

    def state(self, name):
        return os.path.join(self.dir, ".wixr", name)

    def start(self, *args, timeout=10):
        env = dict(self.env)
        if self.token is not None:
            env["WIXR_TOKEN"] = self.token
        self.logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen([ARGS.wixr, "serve"] + list(args), cwd=self.dir, env=clean_env(env),
                                     stdin=subprocess.DEVNULL, stdout=self.logf, stderr=self.logf)
        PROCS.append(self.proc)
        self.port = wait_for_port_file(self.proc, self.state("serve.port"), timeout, self.log, "wixr serve")
        return self

    def stop(self):
        """SIGTERM; asserts a clean exit (no crash, no sanitizer report)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise TestFailure("wixr serve did not stop on SIGTERM")
        self.logf.close()
        no_sanitizer_report(self.log(), "wixr serve")
        eq(rc, 0, "wixr serve exit status after SIGTERM (log %r)" % self.log()[-600:])

    def alive(self):
        return self.proc.poll() is None

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def call(self, method, path, body=None, token="default", headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            h = {}
            tok = self.token if token == "default" else token
            if tok is not None:
                h["Authorization"] = "Bearer " + tok
            data = json_body(body, h)
            h.update(headers or {})
            if data is not None and len(data) > 64 * 1024:
                return self.call_large(method, path, data, h, timeout)
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            payload = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, payload
        finally:
            conn.close()

    def call_large(self, method, path, data, h, timeout):
        """A large body the way a careful client sends it (as with Expect: 100-continue): the
        headers first, then the body only if no answer came. The service answers a 401 or a 413
        from the headers and closes without reading the body."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n" % (method, path, len(data))
            head += "".join("%s: %s\r\n" % kv for kv in h.items()) + "\r\n"
            sock.sendall(head.encode())
            ready, _, _ = select.select([sock], [], [], 1.0)
            if not ready:
                try:
                    sock.sendall(data if isinstance(data, bytes) else data.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # answered and closed meanwhile: the answer is read below
            r = http.client.HTTPResponse(sock)
            r.begin()
            payload = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, payload
        finally:
            sock.close()

    def post(self, name, data, event_id, **kw):
        h = dict(kw.pop("headers", None) or {})
        h["X-Event-Id"] = event_id
        return self.call("POST", "/v1/events/" + name, data, headers=h, **kw)

    def event(self, event_id):
        st, _, body = self.call("GET", "/v1/events/" + event_id)
        eq(st, 200, "GET /v1/events/%s (%r)" % (event_id, body[:200]))
        return json.loads(body)

    def wait_final(self, ids, timeout=15):
        deadline = time.time() + timeout
        evs = {}
        while time.time() < deadline:
            evs = {i: self.event(i) for i in ids}
            if all(e["state"] in ("done", "dead") for e in evs.values()):
                return evs
            time.sleep(0.05)
        raise TestFailure("events did not end within %d s: %r" % (timeout, {i: e["state"] for i, e in evs.items()}))

    def wixr(self, *args, timeout=20):
        p = subprocess.run([ARGS.wixr] + list(args), cwd=self.dir, env=clean_env(self.env), capture_output=True,
                           text=True, timeout=timeout, errors="replace")
        no_sanitizer_report(p.stderr, "wixr " + " ".join(args))
        return p


def serve_config(hooks, wix="", serve="", runtime=""):
    return ("wix:\n  rate_limit: {requests: 0}\n  sandbox: {catalog: %s}\n%s"
            "serve:\n  listen: 127.0.0.1:0\n  retry: {attempts: 1, base_ms: 100}\n%s%s"
            "hooks:\n%s") % (json.dumps(ARGS.catalog), wix, serve, runtime, hooks)


@test
def serve_hostile_policies_fail_their_event_and_the_service_carries_on():
    # Each of these once ended or hung the whole process (a crash, an abort, a
    # finalizer or a C loop outside every limit): in the service, every other
    # event with it.
    scripts = {
        "setmetatable_number": "return function() return setmetatable({}, 42) end\n",
        "tostring_raises": ("return function()\n  error(setmetatable({}, { __tostring = function() "
                            "error('x') end }))\nend\n"),
        "tostring_loops": ("return function()\n  error(setmetatable({}, { __tostring = function() "
                           "while true do end end }))\nend\n"),
        "gc_via_wix_error": ('local wix = require "wix"\nreturn function()\n'
                             '  wix.Error.__gc = function() while true do end end\n'
                             '  for i = 1, 200 do pcall(wix.packages.get, "x") end\n'
                             '  for i = 1, 20000 do local t = { i } end\n  error("done")\nend\n'),
        "spawn_escape": ('local wix = require "wix"\nreturn function()\n  local t\n'
                         '  coroutine.wrap(function() t = wix.spawn(function() while true do end end) end)()\n'
                         '  return t:wait()\nend\n'),
        "left_sleeping": ('local wix = require "wix"\nreturn function()\n'
                          '  wix.spawn(function() wix.sleep(60000) end)\n  wix.sleep(5)\n  error("left a task")\nend\n'),
        "yield": "return function()\n  coroutine.yield()\nend\n",
        "pattern": "local s = ('a'):rep(200000)\nreturn function() return s:find('.-b') end\n",
        "rep_empty": "return function()\n  error(#string.rep('', math.maxinteger) .. ' bytes')\nend\n",
        "move": "return function()\n  table.move({}, 1, 1e15, 2)\nend\n",
        "memory": "return function()\n  local t = {} for i = 1, 1e9 do t[i] = { i } end\nend\n",
        "printer": ('return function()\n  print("x\\n{\\"ts\\":\\"2020-01-01T00:00:00.000Z\\",\\"level\\":\\"error\\",'
                    '\\"msg\\":\\"forged line\\"}")\n  error("printed")\nend\n'),
    }
    hooks = "".join("  %s:\n    - script: %s.lua\n" % (n, n) for n in scripts) + "  good:\n    - script: good.lua\n"
    files = {n + ".lua": s for n, s in scripts.items()}
    files["good.lua"] = GOOD
    svc = Service(serve_config(hooks, runtime="runtime:\n  limits: {%s}\n" % LIMITS), files).start()
    for n in scripts:
        st, _, body = svc.post(n, {"n": n}, "ev-" + n)
        eq(st, 202, "POST %s (%r)" % (n, body[:200]))
    evs = svc.wait_final(["ev-" + n for n in scripts], timeout=30)
    want = {
        "setmetatable_number": r"bad argument #2 to 'setmetatable' \(nil or table expected, got number\)",
        "tostring_raises": r"\(error object is a table value; its text cannot be had: .*\)$",
        "tostring_loops": r"\(error object is a table value; its text cannot be had: its __tostring ran for more "
                          r"than 1000000 instructions\)$",
        "gc_via_wix_error": r"gc_via_wix_error\.lua:6: done$",
        "spawn_escape": INSTRUCTIONS,
        "left_sleeping": r"left_sleeping\.lua:5: left a task$",
        "yield": r"attempt to yield from outside a coroutine$",
        "pattern": r"pattern too costly for a 200000-byte string",
        "rep_empty": r"rep_empty\.lua:2: 0 bytes$",
        "move": INSTRUCTIONS,
        "memory": r"memory limit exceeded \(16 MB\)$",
        "printer": r"printer\.lua:3: printed$",
    }
    for n, pattern in want.items():
        ev = evs["ev-" + n]
        eq(ev["state"], "dead", "%s: state (%r)" % (n, ev))
        check(re.search(pattern, ev.get("last_error") or ""), "%s: last_error %r does not match %r"
              % (n, ev.get("last_error"), pattern))
    # the service carries on
    st, _, _ = svc.post("good", {}, "ev-good")
    eq(st, 202, "POST good")
    eq(svc.wait_final(["ev-good"])["ev-good"]["state"], "done", "the good event after the attacks")
    st, _, body = svc.call("GET", "/healthz", token=None)
    eq((st, json.loads(body)["status"]), (200, "ok"), "/healthz")
    check(svc.alive(), "the service is running")
    # the reload of the rules frees the old states (a task left sleeping outlived its state)
    svc.w.write("good.lua", GOOD.replace("good = true", "good = 2"))
    deadline = time.time() + 10
    while time.time() < deadline and json.loads(svc.call("GET", "/healthz", token=None)[2])["rules_version"] < 2:
        time.sleep(0.05)
    svc.post("good", {}, "ev-good-2")
    eq(svc.wait_final(["ev-good-2"])["ev-good-2"]["result"]["hooks"][0]["result"], {"good": 2}, "after the reload")
    svc.stop()
    log = svc.log()
    prints = []
    for line in log.splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            check(rec.get("msg") != "forged line", "a forged log line: %r" % line)
            if (rec.get("fields") or {}).get("source") == "print":
                prints.append(rec)
        else:
            check(line.startswith("---") or SANDBOX_NOTICE in line, "a log line of serve that is not JSON: %r" % line)
    check(len(prints) == 1 and prints[0]["msg"].startswith('x\n{"ts"') and
          prints[0]["fields"]["hook"] == "printer (printer.lua)", "the print is one JSON line: %r" % prints)


SECRET_CREATE = """local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", external_id = event.ext,
    products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  ctx.log("info", "created", { package = p, settings = wix.settings })
  return { package = p.id }
end
""" % (JANE, P_SERVICE)

SECRET_FAILS = """local wix = require "wix"
return function(event, ctx)
  local p = wix.packages.create{ account_id = "%s", products = {{ catalog_product_id = "%s", country_code = "DE" }} }
  local ok, e = pcall(wix.packages.get, "%s")
  ctx.log("error", "lookup failed", { err = tostring(e), status = e.status, request_id = e.request_id })
  -- the error of the run holds wix objects
  error({ err = e, package = p, stats = wix.stats() })
end
""" % (JANE, P_SERVICE, UNKNOWN_GUID)

SECRET_RAISES = """local wix = require "wix"
return function(event, ctx)
  wix.instances.assign("%s", "%s")
end
""" % (UNKNOWN_GUID, SITE_JANE1)

SECRET_SNOOP = WALK + r"""
return function(event, ctx)
  local _, werr = pcall(wix.packages.get, "%s")
  local strings, seen = {}, {}
  local function collect(v, depth)
    if depth > 12 or seen[v] then return end
    if type(v) == "string" then strings[#strings + 1] = v return end
    if type(v) ~= "table" then return end
    seen[v] = true
    local mt = getmetatable(v)
    if type(mt) == "table" then collect(mt, depth + 1) end
    for k, x in next, v do collect(k, depth + 1) collect(x, depth + 1) end
  end
  for _, root in ipairs({ _ENV, wix, cjson, ctx, event, werr, wix.settings }) do collect(root, 0) end
  for k, v in pairs(wix.settings) do strings[#strings + 1] = tostring(k) .. "=" .. tostring(v) end
  local all = table.concat(strings, " ")
  print("everything I can reach: " .. all)
  ctx.log("warn", "everything I can reach", { all = all, settings = wix.settings, stats = wix.stats() })
  ctx.emit("sink", { all = all })
  return { reached = #strings, settings = wix.settings, all = all:sub(1, 200000) }
end
""" % UNKNOWN_GUID


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


@test
def secrets_never_appear_in_logs_journal_metrics_or_bodies():
    key = "wixr-api-key-" + secrets.token_hex(12)
    wrong_key = "wixr-wrong-key-" + secrets.token_hex(12)
    token = "wixr-service-token-" + secrets.token_hex(12)
    emu = Server("--keys", key)
    emu.db = os.path.join(emu.dir, "emulator.db")
    emu.start()
    base = "http://127.0.0.1:%d" % emu.port
    hooks = ("  provision:\n    - script: create.lua\n  fails:\n    - script: fails.lua\n"
             "  raises:\n    - script: raises.lua\n  snoop:\n    - script: snoop.lua\n"
             "  sink:\n    - script: good.lua\n")
    files = {"create.lua": SECRET_CREATE, "fails.lua": SECRET_FAILS, "raises.lua": SECRET_RAISES,
             "snoop.lua": SECRET_SNOOP, "good.lua": GOOD}
    env = {"WIX_API_KEY": key, "WIX_BASE_URL": base, "WIX_ACCOUNT_ID": JANE}
    cfg = serve_config(hooks, wix="  transport: http\n  audit: audit.log\n  retry: {attempts: 2, base_ms: 10}\n")
    svc = Service(cfg, files, token=token, env=env).start()
    bodies = []

    def keep(r):
        bodies.append(r[2])
        return r
    # traffic: good and failing calls, a snooping policy
    for i, (name, data) in enumerate((("provision", {"ext": "s-1"}), ("fails", {}), ("raises", {}),
                                      ("snoop", {}), ("provision", {"ext": "s-2"}))):
        st, _, body = keep(svc.post(name, data, "ev-%d" % i))
        eq(st, 202, "POST %s (%r)" % (name, body[:200]))
    evs = svc.wait_final(["ev-%d" % i for i in range(5)], timeout=20)
    eq([evs["ev-%d" % i]["state"] for i in range(5)], ["done", "dead", "dead", "done", "done"],
       "outcomes: %r" % {k: (v["state"], v.get("last_error")) for k, v in evs.items()})
    check("PACKAGE_NOT_FOUND" in json.dumps(evs["ev-1"]),
          "the failing call's error is journaled: %r" % evs["ev-1"].get("last_error"))
    snooped = evs["ev-3"]["result"]["hooks"][0]["result"]
    check(snooped["reached"] > 50, "the snooping policy went through what it can reach: %r" % snooped["reached"])
    check("transport=http" in snooped["all"], "it saw the settings (and no key in them): %r" % snooped["all"][:300])
    # auth failures, with tokens close to the real one, and bad requests
    for bad in (token[:-1], token + "x", token.upper(), "wrong"):
        for method, path, body in (("POST", "/v1/events/provision", {"ext": "nope"}), ("GET", "/metrics", None),
                                   ("GET", "/v1/events/ev-0", None)):
            st, _, _ = keep(svc.call(method, path, body, token=bad))
            eq(st, 401, "%s %s with a wrong token" % (method, path))
        keep(svc.call("GET", "/metrics", headers={"Authorization": token}, token=None))
        keep(svc.call("GET", "/metrics", headers={"Authorization": "Basic " + token}, token=None))
    keep(svc.post("provision", '{"ext": ', "bad-json"))
    keep(svc.post("provision", {"pad": "x" * (2 * 1024 * 1024)}, "too-big"))
    keep(svc.call("GET", "/nowhere"))
    keep(svc.call("GET", "/v1/events/no-such-event"))
    keep(svc.call("DELETE", "/v1/events/ev-0"))
    for i in range(5):
        keep(svc.call("GET", "/v1/events/ev-%d" % i))
    metrics = keep(svc.call("GET", "/metrics"))[2]
    check(b"wixr_" in metrics, "metrics were served")
    health = keep(svc.call("GET", "/healthz", token=None))[2]
    # the journal from the CLI, while the service runs
    cli = []
    for args in (("events", "list", "--json", "--limit", "0"), ("events", "list"), ("events", "show", "ev-1"),
                 ("events", "show", "ev-3", "--json"), ("check",)):
        p = svc.wixr(*args)
        cli.append(p.stdout + p.stderr)
    eq(cli[0].count("\n") >= 5, True, "events list shows the events: %r" % cli[0][:300])
    svc.stop()
    # `wixr run` (--trace, --json) and `wixr fire` with the key, one in a key file, one rejected
    run_script = ('local wix = require "wix"\nreturn function()\n  local ok, e = pcall(wix.packages.get, "%s")\n'
                  '  print(tostring(e))\n  wix.packages.create{ products = {{ catalog_product_id = "%s", '
                  'country_code = "DE" }} }\n  error(e)\nend\n') % (UNKNOWN_GUID, UNKNOWN_GUID)
    w = Work("wix:\n  transport: http\n  api_key_file: key.txt\n  base_url: %s\n  account_id: %s\n"
             "  audit: audit.log\n  retry: {attempts: 2, base_ms: 10}\nhooks:\n  fails:\n    - script: fails.lua\n"
             % (base, JANE), {"key.txt": key + "\n", "run.lua": run_script, "fails.lua": SECRET_FAILS})
    outs = []
    for args, extra in ((("run", "run.lua", "--trace"), None), (("run", "run.lua", "--json", "--trace"), None),
                        (("run", "run.lua", "--dry-run"), None), (("fire", "fails", "--json"), None),
                        (("fire", "fails"), None), (("run", "run.lua", "--trace"), {"WIX_API_KEY": wrong_key}),
                        (("check",), None)):
        r = w.run(*args, env=extra)
        outs.append((" ".join(args), r.out + r.err))
        check(r.rc in (0, 1, 3), "wixr %s exit status (%s)" % (" ".join(args), r))
    check(any("401" in o for a, o in outs), "the rejected key was refused by the emulator: %r"
          % [o[-300:] for a, o in outs][-2])
    emu.stop()
    # every artefact
    artefacts = {"serve log": read_bytes(svc.log_path), "emulator log": read_bytes(os.path.join(emu.dir, "server.log")),
                 "metrics": metrics, "healthz": health}
    for label, folder in (("serve", svc.dir), ("work", w.dir), ("emulator", emu.dir)):
        for root, _, names in os.walk(folder):
            for n in names:
                if n in ("key.txt",):
                    continue
                key = os.path.relpath(os.path.join(root, n), folder)
                # wixr fire records in its folder's journal too: both journals are grepped
                artefacts[key if key not in artefacts else "%s (%s folder)" % (key, label)] = \
                    read_bytes(os.path.join(root, n))
    for i, b in enumerate(bodies):
        artefacts["response body %d" % i] = b
    for i, text in enumerate(cli):
        artefacts["wixr events/check output %d" % i] = text.encode()
    for args, text in outs:
        artefacts["wixr %s output" % args] = text.encode()
    # positive controls: the places grepped hold what went through them
    check(b"ev-3" in artefacts[".wixr/journal.db"] + artefacts.get(".wixr/journal.db-wal", b""),
          "the journal file holds the events")
    check(artefacts.get("audit.log", b"").count(b"\n") >= 3, "the audit log has lines")
    check(b"wixr serve listening" in artefacts["serve log"], "the serve log")
    check(len(artefacts.get("emulator.db", b"")) > 0, "the emulator's state file")
    for what, data in artefacts.items():
        for name, secret in (("the API key", key), ("the service token", token), ("the rejected API key", wrong_key)):
            check(secret.encode() not in data, "%s appears in %s" % (name, what))
            # also in the forms an encoder could give it
            check(json.dumps(secret)[1:-1].encode() not in data.replace(b"\\/", b"/"), "%s (JSON) in %s"
                  % (name, what))


AUTH_HOOKS = "  provision:\n    - script: good.lua\n"


@test
def http_every_route_needs_the_token_but_healthz():
    svc = Service(serve_config(AUTH_HOOKS), {"good.lua": GOOD}, token="front-token-42").start()
    routes = [("POST", "/v1/events/provision", {"a": 1}), ("GET", "/v1/events/some-id", None),
              ("GET", "/metrics", None), ("GET", "/", None), ("GET", "/nowhere", None),
              ("DELETE", "/v1/events/some-id", None), ("PUT", "/v1/events/provision", {"a": 1}),
              ("PATCH", "/metrics", None), ("OPTIONS", "/v1/events/provision", None), ("HEAD", "/metrics", None),
              ("POST", "/v1/events/provision", '{"not json'), ("POST", "/v1/events/unknown.event", {"a": 1}),
              ("GET", "/v1/events/../healthz", None), ("GET", "/healthz/../metrics", None),
              ("GET", "//healthz", None), ("GET", "/healthz?x=1/../metrics", None)]
    bad = [None, "Bearer", "Bearer ", "Bearer wrong", "Bearer front-token-4", "Bearer front-token-42x",
           "Bearer front-token-42 ", "bearer front-token-42", "Bearer  front-token-42", "front-token-42",
           "Basic front-token-42", "Bearer FRONT-TOKEN-42"]
    for method, path, body in routes:
        for auth in bad:
            h = {} if auth is None else {"Authorization": auth}
            try:
                st, headers, payload = svc.call(method, path, body, token=None, headers=h)
            except (ValueError, http.client.InvalidURL):
                continue  # http.client refuses to send this header: nothing to test
            if path.startswith("/healthz?"):
                eq(st, 200, "%s %s is /healthz (query string)" % (method, path))
                continue
            eq(st, 401, "%s %s with Authorization %r" % (method, path, auth))
            if method != "HEAD":
                code, text = wix_error(json.loads(payload), "401")
                eq(code, "UNAUTHENTICATED", "error code")
                check("WIXR_TOKEN" in text, "the message says what to send: %r" % text)
                eq(headers.get("content-type"), "application/json", "a JSON error")
    st, _, payload = svc.call("GET", "/healthz", token=None)
    eq(st, 200, "/healthz without a token")
    check(set(json.loads(payload)) >= {"status", "rules_version", "journal"}, "health document: %r" % payload[:200])
    eq(svc.call("POST", "/healthz", {}, token=None)[0], 405, "/healthz takes GET (and HEAD) only")
    st, headers, payload = svc.call("HEAD", "/healthz", token=None)
    eq((st, payload), (200, b""), "HEAD /healthz: 200 without a body (for load balancers)")
    st, _, payload = svc.call("HEAD", "/metrics")
    eq((st, payload), (200, b""), "HEAD /metrics with the token")
    # a large body without a token is refused for the token, not buffered and parsed
    st, _, payload = svc.call("POST", "/v1/events/provision", {"pad": "x" * (3 * 1024 * 1024)}, token=None)
    eq(st, 401, "an unauthenticated large body")
    # with the token every route answers
    eq(svc.call("GET", "/metrics")[0], 200, "/metrics with the token")
    eq(svc.call("GET", "/v1/events/some-id")[0], 404, "an unknown event with the token")
    # nothing was accepted by all of that
    p = svc.wixr("events", "list", "--json", "--limit", "0")
    eq(p.stdout.strip(), "", "the journal is empty")
    svc.stop()


@test
def http_request_size_limits_and_malformed_bodies():
    svc = Service(serve_config(AUTH_HOOKS, serve="  max_body_kb: 4\n"), {"good.lua": GOOD}).start()

    def error(r, status, code, what):
        st, headers, payload = r
        eq(st, status, "%s (%r)" % (what, payload[:200]))
        kind, text = wix_error(json.loads(payload), what)
        eq(kind, code, "%s: code" % what)
        check(text, "%s: a description" % what)
        eq(headers.get("content-type"), "application/json", "%s: JSON" % what)
        return text

    pad = '{"pad": "%s"}'
    exact = pad % ("p" * (4096 - len(pad % "")))
    eq(svc.post("provision", exact, "exact")[0], 202, "a body of exactly max_body_kb")
    error(svc.post("provision", exact[:-2] + 'pp"}', "over"), 413, "PAYLOAD_TOO_LARGE", "one byte over")
    error(svc.post("provision", pad % ("p" * 10 * 1024 * 1024), "huge"), 413, "PAYLOAD_TOO_LARGE", "10 MB")
    # chunked, no Content-Length
    conn = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
    try:
        conn.request("POST", "/v1/events/provision", body=iter([b'{"pad": "' + b"q" * 3000, b"q" * 3000 + b'"}']),
                     encode_chunked=True, headers={"Authorization": "Bearer " + svc.token,
                                                   "Transfer-Encoding": "chunked"})
        r = conn.getresponse()
        error((r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()), 413, "PAYLOAD_TOO_LARGE", "chunked")
    finally:
        conn.close()
    msg = error(svc.post("provision", '{"a": 1,\n "b": }', "bad"), 400, "INVALID_ARGUMENT body", "malformed JSON")
    check("line 2" in msg and "column" in msg, "line and column: %r" % msg)
    error(svc.post("provision", '{"a": ' + "[" * 2000 + "]" * 2000 + "}", "deep"), 400, "INVALID_ARGUMENT body",
          "deep nesting")
    error(svc.post("provision", "", "empty"), 400, "INVALID_ARGUMENT body", "an empty body")
    error(svc.post("provision", b'{"a": "\xc3\x28"}', "utf8"), 400, "INVALID_ARGUMENT body", "invalid UTF-8")
    error(svc.post("provision", "[1]", "array"), 400, "INVALID_ARGUMENT body", "not an object")
    # headers: the HTTP library's own cap (its answer is not JSON), and the service stays up
    st, _, _ = svc.call("GET", "/metrics", headers={"X-Pad": "h" * 64 * 1024})
    check(400 <= st < 500, "a 64 kB header is refused: %d" % st)
    st, _, _ = svc.call("GET", "/v1/events/" + "i" * 64 * 1024)
    check(400 <= st < 500, "a 64 kB URL is refused: %d" % st)
    eq(svc.call("GET", "/healthz", token=None)[0], 200, "the service is up")
    evs = svc.wixr("events", "list", "--json", "--limit", "0").stdout.splitlines()
    eq([json.loads(x)["id"] for x in evs], ["exact"], "only the valid event was journaled")
    svc.stop()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@test
def http_unauthenticated_bodies_are_not_kept():
    # Bodies up to serve.max_body_kb were kept in memory until the end of the
    # upload, before the token was looked at: 1024 connections, 1 GB.
    svc = Service(serve_config(AUTH_HOOKS, serve="  max_body_kb: 1024\n"), {"good.lua": GOOD}).start()
    eq(svc.call("GET", "/healthz", token=None)[0], 200, "up")
    size = 1024 * 1024
    conns = []
    before = rss_kb(svc.proc.pid)
    try:
        for i in range(64):
            s = socket.create_connection(("127.0.0.1", svc.port), timeout=10)
            s.sendall(b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
            try:
                s.sendall(b"{" + b" " * (size - 2))  # all but the last byte: the upload is not over
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused from its headers, before the upload (what keeping nothing looks like now)
            conns.append(s)
        time.sleep(0.5)
        grown = rss_kb(svc.proc.pid) - before
        check(grown < 32 * 1024, "64 unauthenticated uploads of 1 MB grew the service by %d MB" % (grown // 1024))
    finally:
        for s in conns:
            s.close()
    st, _, _ = svc.post("provision", {"ok": True}, "after")
    eq(st, 202, "the service takes events")
    svc.stop()


def open_slow(port, first_bytes):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    if first_bytes:
        s.sendall(first_bytes)
    return s


def wait_closed(s, results, key, t0):
    """Records when the server closes s (and what it sent before)."""
    got = b""
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
    except OSError:
        pass
    results[key] = (time.time() - t0, got)
    s.close()


@test
def http_slow_clients_are_cut_off():
    svc = Service(serve_config(AUTH_HOOKS), {"good.lua": GOOD}).start()
    auth = ("Authorization: Bearer %s\r\n" % svc.token).encode()
    t0 = time.time()
    slow = {
        "nothing sent": b"",
        "headers stalled": b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Slow: a",
        "body stalled": (b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n" + auth +
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\": "),
        "no token, body stalled": (b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n"
                                   b"Content-Length: 1000\r\n\r\n{\"a\": "),
    }
    results, threads = {}, []
    for key, first in slow.items():
        th = threading.Thread(target=wait_closed, args=(open_slow(svc.port, first), results, key, t0), daemon=True)
        th.start()
        threads.append(th)
    # they hold up nobody else
    for i in range(5):
        t1 = time.time()
        st, _, _ = svc.post("provision", {"i": i}, "fast-%d" % i)
        eq(st, 202, "a normal request while slow clients hang on")
        check(time.time() - t1 < 5, "answered at once (%.2f s)" % (time.time() - t1))
    for th in threads:
        th.join(25)
    for key in slow:
        check(key in results, "%s: the connection is still open after %.0f s" % (key, time.time() - t0))
        elapsed, got = results[key]
        check(elapsed < 20, "%s: cut off after %.1f s (the idle limit is 15 s)" % (key, elapsed))
        check(not got.startswith(b"HTTP/1.1 2"), "%s: no success answer: %r" % (key, got[:100]))
    evs = svc.wixr("events", "list", "--json", "--limit", "0").stdout.splitlines()
    eq(sorted(json.loads(x)["id"] for x in evs), ["fast-%d" % i for i in range(5)], "only the fast events")
    eq(svc.call("GET", "/healthz", token=None)[0], 200, "the service is up")
    svc.stop()


@test
def http_trickling_clients_meet_the_request_deadline():
    # A byte every second resets libmicrohttpd's idle timeout for ever; the
    # request deadline (serve.request_timeout_ms) cuts such a client off.
    svc = Service(serve_config(AUTH_HOOKS, serve="  request_timeout_ms: 2000\n"), {"good.lua": GOOD}).start()
    auth = ("Authorization: Bearer %s\r\n" % svc.token).encode()
    s = open_slow(svc.port, b"POST /v1/events/provision HTTP/1.1\r\nHost: x\r\n" + auth)
    t0, closed = time.time(), False
    try:
        for i in range(12):
            s.sendall(b"X-Trickle-%d: y\r\n" % i)
            time.sleep(0.5)
    except OSError:
        closed = True
    elapsed = time.time() - t0
    if not closed:
        s.settimeout(3)
        try:
            closed = s.recv(100) == b""
        except socket.timeout:
            closed = False  # still open
        except OSError:
            closed = True
    s.close()
    check(closed, "the trickling connection is cut off")
    check(elapsed < 5.5, "within the deadline and a tick (%.1f s)" % elapsed)
    # a keep-alive connection gets a fresh deadline for each request
    c = http.client.HTTPConnection("127.0.0.1", svc.port, timeout=10)
    for i in range(3):
        c.request("POST", "/v1/events/provision", json.dumps({"i": i}),
                  {"Authorization": "Bearer " + svc.token, "X-Event-Id": "ka-%d" % i})
        r = c.getresponse()
        r.read()
        eq(r.status, 202, "request %d on one connection" % i)
        time.sleep(1.2)
    c.close()
    st, _, text = svc.call("GET", "/metrics")
    check(re.search(r"^wixr_http_slow_requests_cut_total [1-9]", text.decode() if isinstance(text, bytes) else text,
                    re.M), "the cut is counted in /metrics")
    svc.stop()


@test
def http_connections_per_address_are_capped():
    svc = Service(serve_config(AUTH_HOOKS, serve="  max_connections_per_ip: 3\n"), {"good.lua": GOOD}).start()
    held = [open_slow(svc.port, b"") for _ in range(3)]
    time.sleep(0.3)
    extra = open_slow(svc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    extra.settimeout(5)
    try:
        got = extra.recv(100)
    except OSError:
        got = b""
    extra.close()
    check(not got.startswith(b"HTTP/1.1 200"), "a fourth connection from one address is refused: %r" % got[:60])
    for h in held:
        h.close()
    time.sleep(0.3)
    eq(svc.call("GET", "/healthz", token=None)[0], 200, "served again once the three are closed")
    svc.stop()


def main():
    return run_tests(TESTS, parse_args(__doc__))


if __name__ == "__main__":
    sys.exit(main())

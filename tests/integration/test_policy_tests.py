#!/usr/bin/env python3
"""Integration tests of `wixr test` as a process: policies under test run in the
hook sandbox of `wixr fire` (what it removes fails the same way, its limits and
result check apply, a hook loaded as configured gets the YAML's options, allow
and max_mutations), each case has a time limit (--timeout) and the run goes on
after one that times out, a test file without tests fails, and a path that is
not a test file is a usage error.

Usage: test_policy_tests.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Runs wixr in temporary folders; nothing reaches Wix. Python 3 standard library only.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import JANE, P_LIGHT, Folder, check, eq, parse_args, run_tests  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


MAKER = """local wix = require "wix"
return function(event, ctx)
  local made = {}
  for i = 1, event.count or 1 do
    local pkg = wix.packages.create { account_id = ctx.options.account_id, external_id = "m-" .. i,
      products = { { catalog_product_id = ctx.options.product, country_code = "DE",
                     billing = { unit = "YEAR", count = 1 } } } }
    made[#made + 1] = pkg.id
  end
  if event.read then wix.packages.get(made[1], { account_id = ctx.options.account_id }) end
  return { made = #made, label = ctx.options.label }
end
"""

CONFIG = """hooks:
  ev:
    - script: bad.lua
  made:
    - script: maker.lua
      options: {account_id: %s, product: %s, label: yaml}
      allow: [create]
      max_mutations: 1
""" % (JANE, P_LIGHT)

BAD = """return function(event, ctx)
  local io = require("io")
  return { ok = io ~= nil }
end
"""


def folder(files):
    all_files = {"bad.lua": BAD, "maker.lua": MAKER}
    all_files.update(files)
    return Folder(CONFIG, all_files)


def summary(r):
    lines = r.out.strip().splitlines()
    return lines[-1] if lines else ""


@test
def a_forbidden_function_fails_as_under_fire():
    w = folder({"bad_test.lua": 'local p = policy("bad.lua")\ntest("uses io", function() p({}) end)\n'})
    fire = w.run("fire", "ev")
    eq(fire.rc, 1, "wixr fire fails the hook (%s)" % fire)
    message = "bad.lua:2: require: module 'io' not found"
    check(message in fire.out, "wixr fire says why: %r" % fire.out)
    r = w.run("test", "bad_test.lua")
    eq(r.rc, 1, "wixr test fails too (%s)" % r)
    check("FAIL bad_test.lua: uses io" in r.out and message in r.out, "the same message: %r" % r.out)
    eq(summary(r), "0 passed, 1 failed", "totals")


@test
def an_endless_loop_times_out_and_the_next_test_runs():
    w = folder({
        "forever.lua": "return function() while true do end end\n",
        "loop_test.lua": """
test("loops in the test itself", function() while true do end end)
test("a pcall does not swallow the time limit", function() while true do pcall(function() end) end end)
local forever = policy("forever.lua", { limits = { instructions = 100000000000, wall_ms = 60000 } })
test("loops in a policy with huge limits", function() forever({}) end)
test("waits longer than the limit", function() wix.sleep(60000) end)
test("runs after them", function() eq(1, 1) end)
"""})
    t0 = time.time()
    r = w.run("test", "loop_test.lua", "--timeout", "300", timeout=30)
    elapsed = time.time() - t0
    check(not r.timed_out, "wixr test ended (%s)" % r)
    eq(r.rc, 1, "exit status (%s)" % r)
    for name in ("loops in the test itself", "a pcall does not swallow the time limit",
                 "loops in a policy with huge limits", "waits longer than the limit"):
        check("FAIL loop_test.lua: %s\n" % name in r.out, "%s fails: %r" % (name, r.out))
    eq(r.out.count("timed out after 300 ms"), 4, "each says it timed out: %r" % r.out)
    check("while the policy test (forever.lua) ran" in r.out, "the policy is named: %r" % r.out)
    check("loop_test.lua:2: timed out after 300 ms" in r.out, "where the test was: %r" % r.out)
    check("ok   loop_test.lua: runs after them" in r.out, "the next test runs: %r" % r.out)
    eq(summary(r), "1 passed, 4 failed", "totals")
    check(elapsed < 10, "four time limits of 300 ms took %.1f s" % elapsed)


@test
def a_top_level_that_never_ends_fails_its_file():
    w = folder({"a_test.lua": "while true do end\n",
                "b_test.lua": 'test("b", function() end)\n'})
    r = w.run("test", ".", "--timeout", "200", timeout=30)
    eq(r.rc, 1, "exit status (%s)" % r)
    check("FAIL ./a_test.lua: ./a_test.lua:1: timed out after 200 ms" in r.out, "a fails, saying where: %r" % r.out)
    check("ok   ./b_test.lua: b" in r.out, "b still runs: %r" % r.out)


@test
def a_handler_returning_a_function_fails():
    w = folder({"fn.lua": "return function() return function() end end\n",
                "fn_test.lua": 'local p = policy("fn.lua")\ntest("returns a function", function() p({}) end)\n'})
    r = w.run("test", "fn_test.lua")
    eq(r.rc, 1, "exit status (%s)" % r)
    check("the handler returned a value that is not data" in r.out, "the result check: %r" % r.out)


@test
def a_hook_as_configured_gets_the_yaml_options_allow_and_max_mutations():
    w = folder({"made_test.lua": """
local made = hook("made")  -- ./wixr.yaml, found as wixr fire finds it
test("options", function() eq(made({}).label, "yaml") end)
test("allow", function() made({ read = true }) end)
test("max_mutations", function() made({ count = 2 }) end)
"""})
    r = w.run("test", "made_test.lua")
    eq(r.rc, 1, "exit status (%s)" % r)
    check("ok   made_test.lua: options" in r.out, "the YAML's options: %r" % r.out)
    check("operation 'get' is not allowed for this hook (allow: create)" in r.out, "allow: %r" % r.out)
    check("more than 1 mutating call in one run (max_mutations)" in r.out, "max_mutations: %r" % r.out)
    eq(summary(r), "1 passed, 2 failed", "totals")
    w.write("read.json", '{"read": true}')
    fire = w.run("fire", "made", "--data", "read.json")
    check("operation 'get' is not allowed for this hook (allow: create)" in fire.out,
          "wixr fire refuses the same call: %r" % fire.out)


@test
def a_test_file_without_tests_fails():
    w = folder({"empty_test.lua": "-- nothing yet\n", "ok_test.lua": 'test("fine", function() end)\n'})
    r = w.run("test", "empty_test.lua", "ok_test.lua")
    eq(r.rc, 1, "exit status (%s)" % r)
    check("FAIL empty_test.lua: no tests" in r.out, "the file is named: %r" % r.out)
    eq(summary(r), "1 passed, 1 failed", "totals")


@test
def a_path_that_is_not_a_test_file_is_a_usage_error():
    w = folder({"ok_test.lua": 'test("fine", function() end)\n'})
    for args, words in ((["bad.lua"], "wixr test: bad.lua: not a test file"),
                        (["ok_test.lua", "wixr.yaml"], "wixr test: wixr.yaml: not a test file"),
                        (["missing_test.lua"], "wixr test: missing_test.lua: no such file or folder"),
                        (["--timeout", "0"], "--timeout")):
        r = w.run("test", *args)
        eq(r.rc, 2, "wixr test %s (%s)" % (" ".join(args), r))
        lines = r.err.splitlines()
        eq(len(lines), 1, "one line: %r" % r.err)
        check(words in lines[0], "%r says %r" % (lines[0], words))
        eq(r.out, "", "no test ran")


@test
def fake_wix_checks_arguments_like_the_wix_module():
    w = folder({"args_test.lua": """
local maker = policy("maker.lua", { options = { account_id = "not-a-guid", product = "%s" } })
test("a bad GUID from a policy", function() maker({}, { wix = fake_wix() }) end)
test("a bad GUID from the test", function() fake_wix().packages.get("nope") end)
test("a required field", function() fake_wix().packages.create { products = {} } end)
""" % P_LIGHT})
    r = w.run("test", "args_test.lua")
    eq(summary(r), "0 passed, 3 failed", "every call is refused: %r" % r.out)
    eq(r.out.count("INVALID_ARGUMENT"), 3, "by the wix module's checks: %r" % r.out)


def main():
    return run_tests(TESTS, parse_args(__doc__))


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Integration tests of the wixr command line: --help on every subcommand,
usage errors (one line naming the command and the option, exit 2), option
forms (--name VALUE, --name=VALUE, --), and the top-level commands.

Usage: test_cli.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING]

Runs wixr in a temporary folder holding a small valid wixr.yaml; nothing is
listened on and nothing reaches Wix. Python 3 standard library only.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import Folder, check, eq, parse_args, run_tests  # noqa: E402

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


WORK = Folder("hooks:\n  ev:\n    - script: h.lua\n",
              {"h.lua": "return function(event, ctx) return { ok = true } end\n"})

# Every subcommand, with the words that name it.
COMMANDS = [["run"], ["fire"], ["check"], ["test"], ["serve"], ["reload"], ["events"], ["events", "list"],
            ["events", "show"], ["events", "retry"], ["events", "purge"], ["sandbox"], ["sandbox", "serve"]]


def wixr(*args, stdin=None):
    return WORK.run(*args, stdin=stdin, timeout=30)


def usage_error(r, *parts):
    """Exit 2 and exactly one line on stderr, holding every part; nothing on stdout."""
    eq(r.rc, 2, "exit status of %s (%s)" % (" ".join(r.args), r))
    lines = r.err.splitlines()
    eq(len(lines), 1, "one line on stderr for %s: %r" % (" ".join(r.args), r.err))
    for p in parts:
        check(p in lines[0], "%r names %r" % (lines[0], p))
    eq(r.out, "", "nothing on stdout")
    return lines[0]


@test
def every_subcommand_has_help():
    for words in COMMANDS:
        for flag in ("--help", "-h"):
            r = wixr(*words, flag)
            eq(r.rc, 0, "wixr %s %s exit status (%s)" % (" ".join(words), flag, r))
            check(r.out.startswith("usage: wixr " + words[0]), "the usage on stdout: %r" % r.out[:200])
            eq(r.err, "", "nothing on stderr for wixr %s %s" % (" ".join(words), flag))
    r = wixr("--help")
    eq(r.rc, 0, "wixr --help")
    for words in COMMANDS:
        check("\n  " + words[0] in r.out, "wixr --help lists %s" % words[0])
    check("Exit codes:" in r.out, "wixr --help explains the exit codes")


@test
def unknown_options_are_named_with_a_suggestion():
    for words in COMMANDS:
        if words in (["events"], ["sandbox"]):
            continue
        line = usage_error(wixr(*words, "--bogus-option"), "wixr " + " ".join(words), "'--bogus-option'")
        check("see 'wixr %s --help'" % " ".join(words) in line, "points to --help: %r" % line)
    usage_error(wixr("fire", "--bacth"), "wixr fire: unknown option '--bacth' (did you mean '--batch'?)")
    usage_error(wixr("check", "--conifg", "x"), "(did you mean '--config'?)")
    usage_error(wixr("events", "list", "--limt", "3"), "(did you mean '--limit'?)")
    usage_error(wixr("events", "list", "--limt=3"), "unknown option '--limt' (did you mean '--limit'?)")
    usage_error(wixr("events", "bogus"), "wixr events: unknown command 'bogus'")
    usage_error(wixr("sandbox", "bogus"), "wixr sandbox: unknown subcommand 'bogus'")


@test
def values_missing_or_out_of_range():
    usage_error(wixr("check", "--config"), "wixr check: --config needs a value")
    usage_error(wixr("fire", "ev", "--id", "--dry-run"), "wixr fire: --id needs a value")
    usage_error(wixr("fire", "ev", "--concurrency", "0"), "--concurrency: expected 1 to 100000, got '0'")
    usage_error(wixr("fire", "ev", "--concurrency=12x"), "--concurrency: expected 1 to 100000, got '12x'")
    usage_error(wixr("events", "list", "--limit", "-1"), "--limit: expected 0 to 10000000, got '-1'")
    usage_error(wixr("events", "list", "--state", "sleeping"), "--state: 'sleeping' is not accepted")
    usage_error(wixr("events", "purge", "--older-than", "7 weeks"), "--older-than: expected a number and a unit")
    usage_error(wixr("events", "purge"), "--older-than D is required")
    usage_error(wixr("sandbox", "serve", "--listen", "nowhere"), "--listen: expected HOST:PORT, got 'nowhere'")
    usage_error(wixr("sandbox", "serve", "--seed", "-3"), "--seed: expected a whole number, got '-3'")
    usage_error(wixr("sandbox", "serve", "--delivery-delay", "-2"),
                "--delivery-delay: expected a whole number from -1, got '-2'")
    usage_error(wixr("run", "--json=yes", "x.lua"), "wixr run: --json takes no value")


@test
def positional_arguments_are_counted():
    usage_error(wixr("fire", "a", "b"), "wixr fire: one event NAME at a time (got 'a' and 'b')")
    usage_error(wixr("fire"), "wixr fire: give an event NAME or --batch")
    usage_error(wixr("fire", "ev", "--batch", "-"), "give an event NAME or --batch, not both")
    usage_error(wixr("run"), "wixr run")
    usage_error(wixr("run", "a.lua", "b.lua"), "wixr run: one SCRIPT at a time")
    usage_error(wixr("check", "extra"), "wixr check: unexpected argument 'extra'")
    usage_error(wixr("events", "show"), "wixr events show: give an event ID")
    usage_error(wixr("events", "show", "a", "b"), "one event id at a time (got 'a' and 'b')")
    usage_error(wixr("events", "retry"), "give an event ID or --dead")
    usage_error(wixr("events", "retry", "a", "--dead"), "give an event ID or --dead (not both)")


@test
def option_forms():
    r = wixr("check", "--config=wixr.yaml")
    eq((r.rc, r.out.split(":")[0]), (0, "wixr.yaml"), "--config=FILE (%s)" % r)
    r = wixr("check", "--config", "wixr.yaml")
    eq(r.rc, 0, "--config FILE (%s)" % r)
    # the options may come before or after the event name; "-" is a value, not an option
    r = wixr("fire", "--dry-run", "ev", "--id", "e-1", "--json", "--config", "wixr.yaml")
    eq(r.rc, 0, "options around the name (%s)" % r)
    check('"id":"e-1"' in r.out.replace(" ", ""), "the id was taken: %r" % r.out[:300])
    r = wixr("fire", "ev", "--data", "-", "--json", stdin='{"k": 1}')
    eq(r.rc, 0, "--data - reads standard input (%s)" % r)
    r = wixr("fire", "--batch", "--json", stdin='{"event": "ev", "id": "b-1", "data": {}}\n')
    eq(r.rc, 0, "--batch without a value reads standard input (%s)" % r)
    # after --, an argument that looks like an option is an argument
    r = wixr("test", "--", "--not-an-option")
    eq(r.rc, 2, "wixr test -- --not-an-option (%s)" % r)
    check("--not-an-option: no such file or folder" in r.err, "taken as a path: %r" % r.err)


@test
def check_json_lists_problems_with_their_positions():
    import json
    r = wixr("check", "--json")
    eq(r.rc, 0, "a good configuration (%s)" % r)
    eq(json.loads(r.out), {"ok": True, "config": "wixr.yaml", "hooks": 1, "enabled": 1, "transport": "sandbox"},
       "check --json")
    WORK.write("bad.yaml", "hooks:\n  ev:\n    - script: h.lua\n      allow: [craete]\n  other: {}\n")
    r = wixr("check", "--json", "--config", "bad.yaml")
    eq(r.rc, 3, "problems: exit 3 (%s)" % r)
    d = json.loads(r.out)
    eq((d["ok"], d["config"]), (False, "bad.yaml"), "check --json with problems")
    eq(d["problems"], [
        {"file": "bad.yaml", "line": 4, "col": 15, "message": "allow: unknown operation 'craete' (did you mean 'create'?)"},
        {"file": "bad.yaml", "line": 5, "col": 10, "message": "hooks.other: expected a list, got a mapping"},
    ], "every problem with its position")
    r = WORK.run("check", "--json", env={"WIXR_CONFIG": "bad.yaml"})
    eq((r.rc, json.loads(r.out)["config"]), (3, "bad.yaml"), "the file found through WIXR_CONFIG is named")
    WORK.write("broken.lua", "return function(event, ctx)\n  local x = = 1\nend\n")
    WORK.write("lua.yaml", "hooks:\n  ev:\n    - script: broken.lua\n")
    r = wixr("check", "--json", "--config", "lua.yaml")
    eq(r.rc, 3, "a script that does not compile (%s)" % r)
    p = json.loads(r.out)["problems"]
    eq(len(p), 1, "one problem: %r" % p)
    check(p[0].get("line") == 2 and "broken.lua" in p[0].get("file", "") and "unexpected symbol" in p[0]["message"],
          "the script's line: %r" % p)


@test
def top_level_commands():
    r = wixr("version")
    eq(r.rc, 0, "wixr version")
    check(r.out.startswith("wixr "), "the version: %r" % r.out)
    eq(wixr("--version").out, r.out, "wixr --version says the same")
    usage_error(wixr("nonsense"), "wixr: unknown command 'nonsense' (see 'wixr help')")
    usage_error(wixr("fier", "x"), "wixr: unknown command 'fier' (did you mean 'fire'?)")
    for words in COMMANDS:
        r = wixr("help", *words)
        eq((r.rc, r.out, r.err), (0, wixr(*words, "--help").out, ""), "wixr help %s" % " ".join(words))
    usage_error(wixr("help", "nonsense"), "wixr: unknown command 'nonsense'")
    r = wixr()
    eq(r.rc, 2, "no command at all")
    check("usage: wixr COMMAND" in r.err, "the usage on stderr: %r" % r.err[:100])


def main():
    return run_tests(TESTS, parse_args(__doc__))


if __name__ == "__main__":
    sys.exit(main())

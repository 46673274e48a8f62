#!/usr/bin/env python3
"""The README's examples, run as pasted.

Usage: test_readme.py --wixr PATH/wixr --catalog PATH/catalog.yaml [-k SUBSTRING] [--readme FILE]

Every fenced block of README.md is read and run, in the README's order, in one
temporary copy of the files a reader has after a build (config/, lua/, scripts/demo,
build/wixr -> the binary under test), on the embedded emulator (no WIX_* in the
environment), with no network beyond 127.0.0.1:

- ```sh blocks: each command (continuation lines and quoted newlines joined) runs in
  bash in that folder; exported variables carry over to the commands after it. It must
  exit 0. A `curl` also gets `-sS -w` so that its HTTP status is seen: it must be 2xx,
  or the status a trailing `# NNN {...}` comment shows, and the JSON of such a comment
  (or of an "answers `NNN {...}`" sentence right after the block, `…` standing for any
  value or more keys) must be part of what it printed. `build/wixr run` prints a JSON
  document and says once on stderr that it uses the embedded emulator.
  `wixr serve` and `wixr sandbox serve` start in the background on a free port (the
  README's 8480/8470 in later commands become that port), are waited for, serve the
  commands and blocks that follow, and are stopped (SIGTERM, exit 0) at the next `## `
  section. `scripts/demo` runs with its package install and build step standing in for
  the binary under test; what it prints must have the shape of the README's sample of it
  (ids masked, columns' spacing ignored).
- ```lua blocks: one whose first line names a file (`-- my_script.lua`) is saved there
  before any command runs, as a reader would; a `*_test.lua` file is run with
  `wixr test` and must pass at least one case; any other named script must be run by a
  README command. An unnamed test file is run the same way; an unnamed handler script
  is loaded as a hook by `wixr check`.
- ```yaml blocks: a complete configuration (with `hooks:`) passes `wixr check` as
  config/readme-LINE.yaml (relative script paths as in config/wixr.yaml); a fragment
  is checked with the `hooks:` of config/wixr.yaml added.
- Plain blocks: the sample of what `scripts/demo` prints (above) and `$ COMMAND`
  transcripts, whose command runs and must print the lines shown (and exit with the code
  an "exits N" right before the block gives).
- A `curl ...` span in the prose runs like a sh command at the end of its section (the
  services of that section still up).
- Output samples in the prose (SAMPLES: an error line of a wix.Error, the message of an
  emulator state file in use, the status a package reaches, `wixr version`) are made
  again at the end of their section and must have the README's shape (ids masked).

What is not run is listed in SKIP with the reason, so a new example runs by default
and skipping one is a visible decision. A failure names README.md:LINE of the block.
Python 3 standard library only. The last line printed is "N passed, N failed".
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from testlib import *  # noqa: F401,F403
from testlib import ARGS

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
README = os.path.join(ROOT, "README.md")

# What is not run, matched against a command (sh) or a block's first line (other kinds).
SKIP = [
    (r"^scripts/test\b", "runs every suite (this one too) in a release and an ASan build: many minutes"),
    (r"^scripts/fuzz\b", "builds build-fuzz/ with clang and libFuzzer, then fuzzes for minutes"),
]

COMMAND_TIMEOUT = 90    # seconds for one command (ASan builds are several times slower)
SERVICE_START = 20      # seconds for a service to listen

TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# ---------------------------------------------------------------------------
# Reading the README
# ---------------------------------------------------------------------------

class Block:
    def __init__(self, kind, line, lines, section, before, after):
        self.kind = kind          # the info string: sh, lua, yaml, "" ...
        self.line = line          # README line of the opening fence
        self.lines = lines        # [(line number, text)] of the body
        self.section = section    # the `## ` heading it is under
        self.before = before      # the prose between the previous block and this one
        self.after = after        # the prose up to the next block

    @property
    def text(self):
        return "".join(t + "\n" for _, t in self.lines)


def read_blocks(text, name="README.md"):
    """The fenced blocks of a Markdown text, in order. An unclosed fence is an error."""
    blocks, section, prose, cur = [], "", [], None
    lines = text.split("\n")
    for n, line in enumerate(lines, 1):
        if cur is None:
            m = re.match(r"^```\s*([\w+-]*)\s*$", line)
            if m:
                if blocks:
                    blocks[-1].after = "\n".join(prose)
                cur = Block(m.group(1).lower(), n, [], section, "\n".join(prose), "")
                prose = []
                continue
            if line.startswith("## "):
                section = line[3:].strip()
            prose.append(line)
        elif line.strip() == "```":
            blocks.append(cur)
            cur = None
        else:
            cur.lines.append((n, line))
    if cur is not None:
        raise TestFailure("%s:%d: a ``` fence that is never closed" % (name, cur.line))
    if blocks:
        blocks[-1].after = "\n".join(prose)
    # Each block's own section: a heading right before the fence counts.
    return blocks


def commands(block):
    """The commands of a sh block: [(line, text)], continuation lines and newlines inside
    quotes joined, blank and comment-only lines dropped."""
    out, cur, start = [], "", None
    for n, line in block.lines:
        if start is None:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            start = n
        cur += line + "\n"
        if open_quote(cur) or cur.rstrip("\n").endswith("\\"):
            continue
        out.append((start, cur.rstrip("\n")))
        cur, start = "", None
    if start is not None:
        out.append((start, cur.rstrip("\n")))
    return out


def open_quote(text):
    """Whether text ends inside a '...' or "..." string (bash rules, roughly; a # starts a
    comment outside quotes)."""
    q, i = None, 0
    while i < len(text):
        c = text[i]
        if q is None:
            if c == "\\":
                i += 1
            elif c in "'\"":
                q = c
            elif c == "#" and (i == 0 or text[i - 1] in " \t\n"):
                j = text.find("\n", i)
                i = len(text) if j < 0 else j
                continue
        elif q == "'" and c == "'":
            q = None
        elif q == '"':
            if c == "\\":
                i += 1
            elif c == '"':
                q = None
        i += 1
    return q is not None


def trailing_comment(cmd):
    """The comment after a command's last line (text after an unquoted ' #'), or ''."""
    last = cmd.split("\n")[-1]
    q = None
    for i, c in enumerate(last):
        if q:
            if c == q:
                q = None
        elif c in "'\"":
            q = c
        elif c == "#" and (i == 0 or last[i - 1] in " \t"):
            return last[i + 1:].strip()
    return ""


def skip_reason(text):
    for pattern, reason in SKIP:
        if re.search(pattern, text.strip()):
            return reason
    return None


# ---------------------------------------------------------------------------
# Expected shapes
# ---------------------------------------------------------------------------

ANY = object()
ANY_TEXT = "\u2026any value\u2026"


def shape(text):
    """A JSON sample as the README writes it, `…` standing for a value (ANY) or, after a
    comma, for more keys or items. None when it is not JSON."""
    t = re.sub(r",\s*…", "", text)
    t = t.replace("…", '"%s"' % ANY_TEXT)
    try:
        value = json.loads(t)
    except ValueError:
        return None

    def conv(v):
        if v == ANY_TEXT:
            return ANY
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        return v
    return conv(value)


def mismatch(actual, expected, path="$"):
    """Where actual does not have the shape expected (a dict: at least its keys; a list:
    at least its items, in order), or None."""
    if expected is ANY:
        return None
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return "%s: expected an object, got %r" % (path, actual)
        for k, v in expected.items():
            if k not in actual:
                return "%s: no key %r (keys %s)" % (path, k, sorted(actual))
            m = mismatch(actual[k], v, "%s.%s" % (path, k))
            if m:
                return m
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) < len(expected):
            return "%s: expected a list of at least %d, got %r" % (path, len(expected), actual)
        for i, v in enumerate(expected):
            m = mismatch(actual[i], v, "%s[%d]" % (path, i))
            if m:
                return m
        return None
    if actual != expected:
        return "%s: expected %r, got %r" % (path, expected, actual)
    return None


def expected_answer(cmd):
    """(status, shape) a curl command's `# NNN {...}` comment promises, or None."""
    m = re.match(r"^(\d{3})\s+(\{.*\})\s*$", trailing_comment(cmd))
    if m and shape(m.group(2)) is not None:
        return int(m.group(1)), shape(m.group(2))
    return None


def answers_after(block):
    """(status, shape) of an "answers `NNN {...}`" sentence right after a block, or None."""
    m = re.match(r"\s*answers\s+`(\d{3})\s+(\{.*?\})`", block.after, re.S)
    if m and shape(m.group(2)) is not None:
        return int(m.group(1)), shape(m.group(2))
    return None


GUID8 = re.compile(r"\b[0-9a-f]{8}\.\.")


def normalized(line):
    """A line of demo output with cut GUIDs masked and runs of spaces made one."""
    return re.sub(r"\s+", " ", GUID8.sub("<id>..", line)).strip()


# ---------------------------------------------------------------------------
# The reader's folder
# ---------------------------------------------------------------------------

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Service:
    def __init__(self, line, cmd, proc, port, log_path):
        self.line, self.cmd, self.proc, self.port, self.log_path = line, cmd, proc, port, log_path

    def log(self):
        return read_log(self.log_path)


class Reader:
    """One temporary folder laid out as a reader has it, and the commands run there."""

    def __init__(self, name):
        self.name = name
        self.dir = work_folder("wixr-readme-")
        for sub in ("config", "lua"):
            shutil.copytree(os.path.join(ROOT, sub), os.path.join(self.dir, sub),
                            ignore=shutil.ignore_patterns(".wixr"))
        os.makedirs(os.path.join(self.dir, "build"))
        os.symlink(ARGS.wixr, os.path.join(self.dir, "build", "wixr"))
        # scripts/demo as it is; its install and build steps stand for the binary under test.
        os.makedirs(os.path.join(self.dir, "scripts"))
        shutil.copy2(os.path.join(ROOT, "scripts", "demo"), os.path.join(self.dir, "scripts", "demo"))
        self.write_exec("scripts/install-deps", "#!/bin/sh\nexit 0\n")
        self.write_exec("scripts/build", "#!/bin/sh\necho '%s'\n" % os.path.dirname(ARGS.wixr))
        self.state = os.path.join(work_folder("wixr-readme-env-"), "env.sh")
        with open(self.state, "w") as f:
            f.write("")
        self.env = clean_env({"PATH": os.path.join(self.dir, "build") + os.pathsep + os.environ.get("PATH", "")})
        self.ports = {}             # README port -> the port used here
        self.services = []
        self.failures = []
        self.skipped = []
        self.outputs = {}           # command -> stdout, of what ran
        self.ran = []               # the commands that ran
        self.verbose = False

    def log_ran(self, line, what):
        if self.verbose:
            print("     ran %s:%d %s" % (self.name, line, what.split("\n")[0][:100]), flush=True)

    def write_exec(self, rel, text):
        path = os.path.join(self.dir, rel)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)

    def fail(self, block, line, msg):
        where = "%s:%d" % (self.name, block.line)
        if line and line != block.line:
            where += " (line %d)" % line
        self.failures.append("%s: %s" % (where, msg))

    def local(self, cmd):
        """The command with the README's ports turned into this run's."""
        for readme_port, port in self.ports.items():
            cmd = re.sub(r"(127\.0\.0\.1|localhost):%d\b" % readme_port, r"\g<1>:%d" % port, cmd)
        return cmd

    def bash(self, script, timeout=COMMAND_TIMEOUT):
        """Runs script in bash in the folder, with the exported variables so far; keeps the
        ones it exports. Returns a Run."""
        full = ("set -o pipefail\n. '%s'\n%s\n__rc=$?\nexport -p > '%s'\nexit $__rc\n"
                % (self.state, script, self.state))
        t0 = time.time()
        try:
            p = subprocess.run(["bash", "-c", full], cwd=self.dir, env=self.env, capture_output=True,
                               text=True, errors="replace", timeout=timeout, stdin=subprocess.DEVNULL)
            return Run([script], p.returncode, p.stdout, p.stderr, time.time() - t0, False)
        except subprocess.TimeoutExpired as te:
            def text(b):
                return b.decode("utf-8", "replace") if isinstance(b, bytes) else (b or "")
            return Run([script], None, text(te.stdout), text(te.stderr), time.time() - t0, True)

    # -- services ---------------------------------------------------------------

    def start_service(self, block, line, cmd, readme_port):
        port = free_port()
        self.ports[readme_port] = port
        log_path = os.path.join(os.path.dirname(self.state), "service-%d.log" % line)
        log = open(log_path, "wb")
        given = re.search(r"\s--listen[ =](\S+)", cmd)
        if given:   # the README's own address: this run's port instead
            m = re.search(r":(\d+)$", given.group(1))
            if m:
                self.ports[int(m.group(1))] = port
            cmd = cmd[:given.start()] + cmd[given.end():]
        script = ". '%s'\nexec %s --listen 127.0.0.1:%d" % (self.state, cmd, port)
        proc = subprocess.Popen(["bash", "-c", script], cwd=self.dir, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        svc = Service(line, cmd, proc, port, log_path)
        self.services.append(svc)
        deadline = time.time() + SERVICE_START
        while time.time() < deadline:
            if proc.poll() is not None:
                self.fail(block, line, "`%s` exited with %s before listening: %s"
                          % (cmd, proc.returncode, svc.log()[-600:]))
                self.services.remove(svc)
                return
            if port_open(port):
                return
            time.sleep(0.05)
        self.fail(block, line, "`%s` did not listen within %d s: %s" % (cmd, SERVICE_START, svc.log()[-600:]))

    def stop_services(self, block):
        for svc in self.services:
            if svc.proc.poll() is None:
                svc.proc.send_signal(signal.SIGTERM)
                try:
                    svc.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    svc.proc.kill()
                    svc.proc.wait()
                    self.failures.append("%s:%d: `%s` did not stop within 20 s of SIGTERM"
                                         % (self.name, svc.line, svc.cmd))
                    continue
            log = svc.log()
            if svc.proc.returncode != 0:
                self.failures.append("%s:%d: `%s` exited %s on SIGTERM: %s"
                                     % (self.name, svc.line, svc.cmd, svc.proc.returncode, log[-600:]))
            report = sanitizer_report(log)
            if report:
                self.failures.append("%s:%d: sanitizer report from `%s`: %s" % (self.name, svc.line, svc.cmd, report))
        self.services = []
        self.ports = {}

    def kill_services(self):
        for svc in self.services:
            if svc.proc.poll() is None:
                svc.proc.kill()
                svc.proc.wait()
        self.services = []

    # -- blocks -----------------------------------------------------------------

    def run_sh(self, block):
        cmds = commands(block)
        for i, (line, cmd) in enumerate(cmds):
            reason = skip_reason(cmd)
            if reason:
                self.skipped.append("%s:%d `%s`: %s" % (self.name, line, cmd.split("\n")[0], reason))
                continue
            self.ran.append(cmd)
            self.log_ran(line, cmd)
            m = re.match(r"^build/wixr\s+(sandbox\s+serve|serve)\b", cmd)
            if m:
                readme_port = 8470 if m.group(1).startswith("sandbox") else 8480
                self.start_service(block, line, cmd.split(" #")[0].rstrip(), readme_port)
                continue
            expect = expected_answer(cmd)
            if expect is None and i == len(cmds) - 1:
                expect = answers_after(block)
            self.run_command(block, line, cmd, expect)

    def run_command(self, block, line, cmd, expect):
        local = self.local(cmd)
        curl = re.match(r"^curl\b", local) is not None
        if curl:
            body = local.split(" #")[0].rstrip() if trailing_comment(local) else local
            local = body + " -sS -w '\\n%{http_code}'"
        r = self.bash(local)
        head = cmd.split("\n")[0]
        if r.timed_out:
            self.fail(block, line, "`%s` did not finish within %d s: %s" % (head, COMMAND_TIMEOUT, r.err[-400:]))
            return
        report = sanitizer_report(r.err)
        if report:
            self.fail(block, line, "sanitizer report from `%s`: %s" % (head, report))
            return
        if r.rc != 0:
            self.fail(block, line, "`%s` exited %s: stdout %r stderr %r" % (head, r.rc, r.out[-400:], r.err[-600:]))
            return
        self.outputs[cmd] = r.out
        if curl:
            body, _, status = r.out.rpartition("\n")
            want = expect[0] if expect else None
            if (want is not None and status != str(want)) or (want is None and not status.startswith("2")):
                self.fail(block, line, "`%s` answered %s (expected %s): %s"
                          % (head, status, want or "2xx", body[:400]))
                return
            if expect:
                try:
                    doc = json.loads(body)
                except ValueError:
                    self.fail(block, line, "`%s` answered no JSON: %r" % (head, body[:300]))
                    return
                m = mismatch(doc, expect[1])
                if m:
                    self.fail(block, line, "`%s` answered %s, not what the README shows: %s"
                              % (head, body[:300], m))
            return
        if re.match(r"^build/wixr\s+run\b", cmd):
            try:
                json.loads(r.out)
            except ValueError:
                self.fail(block, line, "`%s` printed no JSON document: %r" % (head, r.out[:300]))
            notices = [x for x in r.err.splitlines() if "using the embedded sandbox emulator" in x]
            if len(notices) != 1:
                self.fail(block, line, "`%s` should say once on stderr that it uses the embedded emulator: %r"
                          % (head, r.err[-400:]))

    def run_lua(self, block):
        first = block.lines[0][1] if block.lines else ""
        m = re.match(r"^--\s*([\w./-]+\.lua)\b", first)
        path = m.group(1) if m else None
        is_test = re.search(r"^\s*(describe|test|it)\s*\(", block.text, re.M) is not None
        if path is None:
            path = "lua/policies/readme-%d%s.lua" % (block.line, "_test" if is_test else "")
            self.save(block, path)
        if path.endswith("_test.lua"):
            self.log_ran(block.line, "wixr test %s (the lua block)" % path)
            r = self.bash("build/wixr test '%s'" % path)
            m2 = re.search(r"^(\d+) passed, (\d+) failed$", r.out, re.M)
            if r.rc != 0 or not m2 or int(m2.group(1)) < 1:
                self.fail(block, block.line, "`wixr test %s` (the block saved as that file): rc %s: %s %s"
                          % (path, r.rc, r.out[-800:], r.err[-400:]))
            return
        if m is None:
            # An unnamed handler: loaded as a hook script by `wixr check`.
            config = "config/readme-%d.yaml" % block.line
            with open(os.path.join(self.dir, config), "w") as f:
                f.write("hooks:\n  readme.example:\n    - script: ../%s\n" % path)
            self.log_ran(block.line, "wixr check: the lua block as a hook script")
            r = self.bash("build/wixr check --config '%s'" % config)
            if r.rc != 0:
                self.fail(block, block.line, "the script does not load as a hook (`wixr check`): %s %s"
                          % (r.out[-400:], r.err[-600:]))
            return
        if not any(re.search(r"\bwixr\s+(run|check|fire)\b.*%s" % re.escape(path), c, re.S) for c in self.ran):
            self.fail(block, block.line, "no README command runs %s (the file its first line names)" % path)

    def save(self, block, path):
        full = os.path.join(self.dir, path)
        if os.path.exists(full):
            self.fail(block, block.line, "the block names %s, which the repository already has" % path)
            return False
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(block.text)
        return True

    def run_yaml(self, block):
        text = block.text
        if not re.search(r"^hooks:", text, re.M):
            with open(os.path.join(self.dir, "config", "wixr.yaml")) as f:
                base = f.read()
            m = re.search(r"^hooks:.*?(?=^\S|\Z)", base, re.M | re.S)
            text += "\n" + m.group(0)
        config = "config/readme-%d.yaml" % block.line
        with open(os.path.join(self.dir, config), "w") as f:
            f.write(text)
        self.log_ran(block.line, "wixr check --config %s (the yaml block)" % config)
        r = self.bash("build/wixr check --config '%s'" % config)
        if r.rc != 0:
            self.fail(block, block.line, "`wixr check` refuses the configuration: %s %s"
                      % (r.out[-400:], r.err[-800:]))

    def run_plain(self, block):
        if not block.lines:
            return
        if block.lines[0][1].startswith("$ "):
            self.run_transcript(block)
        elif re.search(r"`scripts/demo` prints", block.before):
            self.check_demo_sample(block)

    def run_transcript(self, block):
        cur = None
        steps = []
        for n, text in block.lines:
            if text.startswith("$ "):
                cur = (n, text[2:], [])
                steps.append(cur)
            elif cur:
                cur[2].append(text)
        for n, cmd, want in steps:
            self.log_ran(n, "$ " + cmd + " (its output compared)")
            r = self.bash(cmd)
            got = [x for x in (r.out + r.err).splitlines() if "using the embedded sandbox emulator" not in x]
            want = [x for x in want if x.strip()]
            if got != want:
                self.fail(block, n, "`%s` printed %r, the README shows %r" % (cmd, got, want))
            code = re.search(r"\bexits (\d+)\W*$", block.before.strip())
            if code and r.rc != int(code.group(1)):
                self.fail(block, n, "`%s` exited %s; the README says it exits %s" % (cmd, r.rc, code.group(1)))

    def check_demo_sample(self, block):
        demo = [c for c in self.outputs if re.match(r"^scripts/demo\b", c)]
        if not demo:
            self.fail(block, block.line, "the sample of what `scripts/demo` prints, but the demo did not run")
            return
        self.log_ran(block.line, "the sample of what scripts/demo prints, compared")
        got = [normalized(x) for x in self.outputs[demo[0]].splitlines()]
        want = [(n, normalized(x)) for n, x in block.lines]
        start = got.index(want[0][1]) if want and want[0][1] in got else -1
        if start < 0:
            self.fail(block, want[0][0], "`scripts/demo` did not print %r; it printed %r" % (want[0][1], got[:6]))
            return
        for k, (n, line) in enumerate(want):
            actual = got[start + k] if start + k < len(got) else "(end of output)"
            if actual != line:
                self.fail(block, n, "`scripts/demo` printed %r where the README shows %r" % (actual, line))
                return
        if len(got) > start + len(want) and any(x for x in got[start + len(want):]):
            self.fail(block, block.line, "`scripts/demo` printed more than the README shows: %r"
                      % got[start + len(want):][:5])


# ---------------------------------------------------------------------------
# Output samples written in the README's prose
# ---------------------------------------------------------------------------

DUPLICATE_CREATE = """local wix = require "wix"
-- route.lua: the same Premium plan twice on one site; the second create is refused.
local function create()
  return wix.packages.create{
    account_id = "33333333-4444-4555-8666-777777777777",
    products = { { catalog_product_id = "7a1c0e52-3b4d-4f6a-9c21-0d5e8f7a1b02",
                   site_id = "c0000000-0000-4000-8000-000000000001", country_code = "DE",
                   billing = { unit = "YEAR", count = 1 } } } }
end
create()
local ok, e = pcall(function()
  create()                                                  -- line 12
end)
return tostring(e)
"""

QUERY = 'local wix = require "wix"\nreturn wix.packages.query{}\n'


def sample_error_line(reader):
    """tostring(e) of a wix.Error raised at route.lua:12 (on an emulator of its own)."""
    d = work_folder("wixr-readme-sample-")
    with open(os.path.join(d, "route.lua"), "w") as f:
        f.write(DUPLICATE_CREATE)
    r = reader.bash("cd '%s' && '%s' run route.lua" % (d, ARGS.wixr))
    return r.out if r.rc == 0 else "rc %s: %s" % (r.rc, r.err[-300:])


def sample_in_use(reader):
    """What `wixr run` says, in the reader's folder, while the README's `sandbox serve` runs there."""
    if not any("sandbox" in svc.cmd and svc.proc.poll() is None for svc in reader.services):
        return "(no `wixr sandbox serve` of the README runs)"
    with open(os.path.join(reader.dir, "readme-query.lua"), "w") as f:
        f.write(QUERY)
    r = reader.bash("build/wixr run readme-query.lua")
    return r.err


def sample_enabled(reader):
    """The status of the README's first package, fetched as the sentence says."""
    made = [out for c, out in reader.outputs.items() if re.match(r"^curl\b.*-X POST\b.*/resellers/v2/packages", c, re.S)]
    port = reader.ports.get(8470)
    if not made or not port:
        return "(the README's first call did not run)"
    try:
        pkg = json.loads(made[0].rpartition("\n")[0])["package"]["id"]
    except (ValueError, KeyError, TypeError):
        return "(the first call answered no package: %r)" % made[0][:200]
    r = reader.bash("curl -sS http://127.0.0.1:%d/resellers/v1/packages/%s -H 'Authorization: my-test-key' "
                    "-H 'wix-account-id: 33333333-4444-4555-8666-777777777777'" % (port, pkg))
    try:
        return json.loads(r.out)["package"]["productInstances"][0]["status"]
    except (ValueError, KeyError, TypeError, IndexError):
        return r.out[:300]


def sample_version(reader):
    return reader.bash("build/wixr version").out.strip()


# (where the sample is in the README, how to make it, what in the sample stands for anything)
SAMPLES = [
    (r"`(route\.lua:12: wix: [^`]*)`", sample_error_line,
     [(r"\.\.\.", r".+")]),
    (r"`(\.wixr/sandbox\.db is in use by process [^`]*)`", sample_in_use,
     [(r"\d+", r"\d+")]),
    (r"a moment later shows the instance `([A-Z_]+)`", sample_enabled, []),
    (r"`(wixr \d+\.\d+\.\d+ \(commit [^`]*\))`", sample_version,
     [(r"\d+\.\d+\.\d+", r"\d+\.\d+\.\d+"), (r"\b[0-9a-f]{12}\b", r"([0-9a-f]{12}(-dirty)?|unknown)"),
      (r"\d{4}-\d{2}-\d{2}", r"\d{4}-\d{2}-\d{2}")]),
]


def sample_regex(sample, masks):
    """A regex for text of the sample's shape: what a mask matches stands for its pattern;
    runs of white space for any white space."""
    spans = []
    for pattern, repl in masks:
        for m in re.finditer(pattern, sample):
            if not any(a < m.end() and m.start() < b for a, b, _ in spans):
                spans.append((m.start(), m.end(), repl))
    out, at = "", 0
    for a, b, repl in sorted(spans):
        out += re.escape(sample[at:a]) + repl
        at = b
    out += re.escape(sample[at:])
    return re.sub(r"(\\\s|\\\n|\s)+", r"\\s+", out)


def samples_in(text):
    """[(line, section, sample text, producer, regex)] of the SAMPLES found in text."""
    found = []
    for where, producer, masks in SAMPLES:
        m = re.search(where, text, re.S)
        if not m:
            found.append((None, None, where, producer, None))
            continue
        line = text.count("\n", 0, m.start(1)) + 1
        headings = re.findall(r"^## (.*)$", text[:m.start(1)], re.M)
        sample = re.sub(r"\s+", " ", m.group(1))
        found.append((line, headings[-1].strip() if headings else "", sample, producer, sample_regex(sample, masks)))
    return found


def inline_commands(text):
    """[(line, section, command)] of the `curl ...` spans in the prose: commands a reader pastes."""
    found = []
    for m in re.finditer(r"(?<!`)`(curl [^`]+)`(?!`)", text):
        headings = re.findall(r"^## (.*)$", text[:m.start()], re.M)
        found.append((text.count("\n", 0, m.start()) + 1, headings[-1].strip() if headings else "",
                      re.sub(r"\s+", " ", m.group(1))))
    return found


def run_inline(reader, inline, section):
    for line, sec, cmd in inline:
        if sec != section:
            continue
        reason = skip_reason(cmd)
        if reason:
            reader.skipped.append("%s:%d `%s`: %s" % (reader.name, line, cmd, reason))
            continue
        reader.ran.append(cmd)
        reader.log_ran(line, cmd + " (in the prose)")
        here = Block("sh", line, [(line, cmd)], sec, "", "")
        reader.run_command(here, line, cmd, None)


def check_samples(reader, samples, section):
    for line, sec, sample, producer, regex in samples:
        if sec != section:
            continue
        reader.log_ran(line, "the sample %s, compared" % (sample[:60]))
        actual = producer(reader)
        if not isinstance(actual, str) or not re.search(regex, re.sub(r"\s+", " ", actual)):
            reader.failures.append("%s:%d: the README shows %r; wixr gives %r" % (reader.name, line, sample, actual))


def walk(text, name="README.md", verbose=False):
    """Runs every block of a Markdown text; returns (failures, skipped, reader)."""
    blocks = read_blocks(text, name)
    reader = Reader(name)
    reader.verbose = verbose
    try:
        # A reader saves the named scripts before running the commands that use them.
        for b in blocks:
            if b.kind == "lua" and b.lines and not skip_reason(b.lines[0][1]):
                m = re.match(r"^--\s*([\w./-]+\.lua)\b", b.lines[0][1])
                if m:
                    reader.save(b, m.group(1))
        samples = samples_in(text) if name == "README.md" else []
        inline = inline_commands(text)
        for line, _, where, _, regex in samples:
            if regex is None:
                reader.failures.append("%s: no text matches the sample pattern %r of SAMPLES: update the "
                                       "test with the README" % (name, where))
        section = None
        for b in blocks:
            if b.section != section:
                if section is not None:
                    check_samples(reader, samples, section)
                    run_inline(reader, inline, section)
                reader.stop_services(b)
                section = b.section
            first = b.lines[0][1] if b.lines else ""
            if b.kind != "sh" and b.kind != "" and skip_reason(first):
                reader.skipped.append("%s:%d: %s" % (name, b.line, skip_reason(first)))
                continue
            if b.kind in ("sh", "bash", "shell"):
                reader.run_sh(b)
            elif b.kind == "lua":
                reader.run_lua(b)
            elif b.kind in ("yaml", "yml"):
                reader.run_yaml(b)
            elif b.kind in ("", "text", "console"):
                reader.run_plain(b)
            else:
                reader.fail(b, b.line, "a ```%s block: this test does not know how to run it (teach it, or add "
                                       "it to SKIP with a reason)" % b.kind)
        check_samples(reader, samples, section)
        run_inline(reader, inline, section)
        reader.stop_services(None)
        # Samples and commands under sections without blocks.
        for sec in sorted({x[1] for x in samples + inline if x[1] is not None} - {b.section for b in blocks}):
            check_samples(reader, samples, sec)
            run_inline(reader, inline, sec)
    finally:
        reader.kill_services()
    return reader.failures, reader.skipped, reader


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

@test
def test_readme_examples_run_as_pasted():
    with open(README_PATH[0]) as f:
        text = f.read()
    blocks = read_blocks(text)
    check(any(b.kind == "sh" for b in blocks) and any(b.kind == "lua" for b in blocks),
          "README.md has sh and lua examples: %r" % [(b.line, b.kind) for b in blocks])
    failures, skipped, reader = walk(text, verbose=True)
    for s in skipped:
        print("     skipped %s" % s, flush=True)
    check(not failures, "%d README example(s) failed:\n  %s" % (len(failures), "\n  ".join(failures)))
    check(len(reader.ran) >= 8, "the README's commands ran: %r" % reader.ran)


@test
def test_a_broken_example_is_reported_at_its_line():
    text = "\n".join([
        "# t", "", "## Hooks", "",
        "```sh",
        "build/wixr check --config config/wixr.yaml",
        "build/wixr fire --bacth config/examples/batch.ndjson",
        "```", "",
        "```lua",
        "-- lua/policies/broken_test.lua",
        'test("one", function() eq(1, 2) end)',
        "```", "",
        "```",
        "$ wixr fire --bacth events.ndjson",
        "wixr fire: no such option",
        "```", "",
        "## Emulator", "",
        "```sh",
        "build/wixr sandbox serve",
        "```", "",
        "```sh",
        "curl http://127.0.0.1:8470/resellers/v1/packages/0f0f0f0f-1e1e-4d2d-8c3c-4b4b4b4b4b4b \\",
        "  -H 'Authorization: k' -H 'wix-account-id: 33333333-4444-4555-8666-777777777777'   # 200 {\"package\": …}",
        "```", "",
        "```toml",
        "a = 1",
        "```", ""])
    failures, _, reader = walk(text, "T.md")
    joined = "\n".join(failures)
    for where, what in (("T.md:5 (line 7)", "exited 2"), ("T.md:10", "wixr test lua/policies/broken_test.lua"),
                        ("T.md:15 (line 16)", "the README shows"), ("T.md:26 (line 27)", "answered 404 (expected 200)"),
                        ("T.md:31", "```toml block")):
        check(any(f.startswith(where + ":") and what in f for f in failures),
              "a failure at %s saying %r: %s" % (where, what, joined))
    eq(len(failures), 5, "failures: %s" % joined)


@test
def test_the_demo_sample_shape_is_checked():
    text = "\n".join([
        "## Start", "",
        "```sh",
        "scripts/demo",
        "```", "",
        "What `scripts/demo` prints:", "",
        "```",
        "Events of batch.ndjson, through the policies (on the embedded emulator):",
        "",
        "  ord-1001  order.created   route_order.lua   {\"model\":\"DIFM\"}",
        "```", ""])
    failures, _, _ = walk(text, "T.md")
    check(len(failures) == 1 and failures[0].startswith("T.md:9 (line 12): `scripts/demo` printed"),
          "one failure at the sample's differing line: %s" % failures)


@test
def test_yaml_and_unnamed_lua_blocks_are_checked():
    text = "\n".join([
        "## Configuration", "",
        "```yaml",                                                   # 3: complete, valid
        "hooks:",
        "  order.created:",
        "    - script: ../lua/policies/route_order.lua",
        "```", "",
        "```yaml",                                                   # 9: a fragment, valid
        "runtime:",
        "  limits:",
        "    wall_ms: 5000",
        "```", "",
        "```yaml",                                                   # 15: a script that is not there
        "hooks:",
        "  order.created:",
        "    - script: ../lua/policies/nope.lua",
        "```", "",
        "```lua",                                                    # 21: an unnamed handler, valid
        'local wix = require "wix"',
        "return function(event, ctx) return { ok = true } end",
        "```", "",
        "```lua",                                                    # 26: does not compile
        "return function(event, ctx) return { end",
        "```", "",
        "```lua",                                                    # 30: named, but nothing runs it
        "-- unused.lua",
        "return function() end",
        "```", ""])
    failures, _, _ = walk(text, "T.md")
    joined = "\n".join(failures)
    for where, what in (("T.md:15", "nope.lua"), ("T.md:26", "does not load as a hook"),
                        ("T.md:30", "no README command runs unused.lua")):
        check(any(f.startswith(where + ":") and what in f for f in failures),
              "a failure at %s saying %r: %s" % (where, what, joined))
    eq(len(failures), 3, "failures: %s" % joined)


README_PATH = [README]


def main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--wixr", required=True, help="path to the wixr binary")
    ap.add_argument("--catalog", required=True, help="path to config/catalog.yaml")
    ap.add_argument("-k", dest="only", default=None, help="run only tests whose name contains this")
    ap.add_argument("--readme", default=README, help="the Markdown file to run (default: the repository's README.md)")
    args = ap.parse_args()
    ARGS.wixr = os.path.abspath(args.wixr)
    ARGS.catalog = os.path.abspath(args.catalog)
    README_PATH[0] = os.path.abspath(args.readme)
    return run_tests(TESTS, args.only)


if __name__ == "__main__":
    sys.exit(main())

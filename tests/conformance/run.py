"""Conformance run: openai-python 3.3.1's own test suite, through rechat.

`make conformance` runs this file with the project venv's python, from the
repository root. It owns everything the run needs and builds it from python3,
node/npm and the repository alone, cached under `.cache/conformance/`:

- `openai-3.3.1/`  the openai sdist (from `pip download`), whose `tests/` is the suite;
- `venv/`          a separate venv with `openai[aiohttp]==3.3.1` and the suite's test deps;
- `steady/`        `@stdy/cli` from npm: Steady, the mock server the SDK itself tests against;
- `sessions/`      what the last `record` pass recorded (the `replay` pass serves it);
- `<pass>.log`     full pytest output of each pass, plus `steady.log`, `rechat-<pass>.log`.

Steady serves the OpenAPI description that lives outside the repository, in
`../shared/conformance/openai-v3.3.1.openapi.yml` (never copied into the project).

Passes, each a pytest run of `tests/api_resources`:

- `direct`  the suite against Steady (the baseline);
- `record`  the suite against `rechat record <steady>`, at `/v1`;
- `replay`  Steady stopped, the suite against `rechat replay <sessions of record>`
            (only with `--replay` or `--pass replay`).

The run fails (exit 1) if a pass that ran has a failure or an error, if rechat
does not stop within 10 s of SIGTERM, or if `record`/`replay` pass fewer tests than
`direct`. Every server binds to 127.0.0.1 and every subprocess has a time limit;
Steady and rechat are always stopped on the way out.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "conformance"
SPEC = REPO.parent / "shared" / "conformance" / "openai-v3.3.1.openapi.yml"

OPENAI_VERSION = "3.3.1"
SUITE = CACHE / f"openai-{OPENAI_VERSION}"
VENV = CACHE / "venv"
STEADY_DIR = CACHE / "steady"
STEADY_PACKAGE = "@stdy/cli@0.22.1"
SESSIONS = CACHE / "sessions"

# The suite's test dependencies, pinned to versions that run it cleanly
# (the direct pass: 6,247 passed, 24 skipped). The suite vendors its own
# respx fork (tests/respx2) and needs nothing else.
SUITE_REQUIREMENTS = [
    f"openai[aiohttp]=={OPENAI_VERSION}",
    "httpx2==2.16.2",
    "httpcore2==2.16.2",
    "aiohttp==3.14.5",
    "pydantic==2.14.3",
    "pytest==9.0.3",
    "pytest-asyncio==1.4.0",
    "pytest-xdist==3.8.0",
    "inline-snapshot==0.31.1",
    "rich==14.2.0",
]

STEADY_FLAGS = [
    "--validator-query-array-format=brackets",
    "--validator-form-array-format=brackets",
    "--validator-query-object-format=brackets",
    "--validator-form-object-format=brackets",
]

PASSES = ("direct", "record", "replay")
SETUP_TIMEOUT = 15 * 60  # seconds, for each pip/npm step
PASS_TIMEOUT = 20 * 60  # seconds, for each pytest run
READY_TIMEOUT = 30  # seconds for a server to answer its health URL
STOP_TIMEOUT = 10  # seconds for rechat to exit after SIGTERM


class ConformanceError(Exception):
    """A setup step or a server failed; the message says which."""


@dataclass
class PassResult:
    name: str
    target: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    exit_code: int | None = None
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def count(self, key: str) -> int:
        return self.counts.get(key, 0)


def log(message: str) -> None:
    print(f"[conformance] {message}", flush=True)


# ---------------------------------------------------------------- processes


def run_bounded(cmd: list[str], timeout: float, output: Path, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> int:
    """Run cmd to completion with its output in `output`; kill its whole group on timeout."""
    with open(output, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise ConformanceError(f"{cmd[0]} timed out after {timeout:.0f} s (output: {output})")
        finally:
            kill_group(proc)  # also reaps leftovers (e.g. xdist workers) if we are interrupted


def run_setup_step(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    output = CACHE / "setup.log"
    code = run_bounded(cmd, SETUP_TIMEOUT, output, cwd=cwd)
    if code != 0:
        tail = output.read_text(errors="replace")[-3000:]
        raise ConformanceError(f"{what} failed (exit {code}):\n{tail}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group a child leads (its own session); harmless if already gone."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def stop_server(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> float | None:
    """SIGTERM a server; return how long it took to exit, or None if it had to be killed."""
    if proc.poll() is not None:
        kill_group(proc)
        return 0.0
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
        elapsed = time.monotonic() - started
    except subprocess.TimeoutExpired:
        elapsed = None
    kill_group(proc)
    return elapsed


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_ready(proc: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:]
            raise ConformanceError(f"server exited ({proc.returncode}) before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise ConformanceError(f"{url} did not answer 200 within {READY_TIMEOUT} s (log: {log_path})")


def start_server(cmd: list[str], health_url: str, log_path: Path) -> subprocess.Popen:
    """Start a server in its own process group, its output in log_path; wait for health_url."""
    env = dict(os.environ, COLUMNS="200")  # wide logs: rich wraps at 80 columns without a tty
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_ready(proc, health_url, log_path)
    except BaseException:
        kill_group(proc)
        raise
    return proc


# -------------------------------------------------------------------- setup


def ensure_suite() -> None:
    """Download the openai sdist and extract it to SUITE (its tests/ is the suite)."""
    if (SUITE / "tests" / "api_resources").is_dir():
        return
    download = CACHE / "download"
    sdist = download / f"openai-{OPENAI_VERSION}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the openai {OPENAI_VERSION} sdist")
        run_setup_step([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "-d", str(download), f"openai=={OPENAI_VERSION}"], "pip download")
    log(f"extracting {sdist.name}")
    staging = Path(tempfile.mkdtemp(dir=CACHE, prefix="extract-"))
    try:
        with tarfile.open(sdist) as archive:
            archive.extractall(staging, filter="data")
        shutil.rmtree(SUITE, ignore_errors=True)
        (staging / SUITE.name).rename(SUITE)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def ensure_venv() -> None:
    """Create VENV with SUITE_REQUIREMENTS; a stamp file records what it holds."""
    stamp = VENV / "conformance-requirements.txt"
    wanted = "\n".join(SUITE_REQUIREMENTS) + "\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return
    log(f"creating {VENV.relative_to(REPO)} with openai {OPENAI_VERSION} and the suite's test deps")
    shutil.rmtree(VENV, ignore_errors=True)
    run_setup_step([sys.executable, "-m", "venv", str(VENV)], "python -m venv")
    run_setup_step([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", *SUITE_REQUIREMENTS],
                   "pip install (suite deps)")
    stamp.write_text(wanted)


def steady_binary() -> Path:
    """The native binary that @stdy/cli ships inside its platform package (or its node wrapper)."""
    native = sorted(glob.glob(str(STEADY_DIR / "node_modules" / "@stdy" / "cli-*" / "bin" / "steady")))
    if native:
        return Path(native[0])
    return STEADY_DIR / "node_modules" / ".bin" / "steady"


def ensure_steady() -> None:
    stamp = STEADY_DIR / "installed.txt"
    if stamp.is_file() and stamp.read_text() == STEADY_PACKAGE and steady_binary().exists():
        return
    if shutil.which("npm") is None:
        raise ConformanceError("npm is not on PATH: it is needed to install Steady")
    log(f"installing {STEADY_PACKAGE} from npm")
    STEADY_DIR.mkdir(parents=True, exist_ok=True)
    run_setup_step(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(STEADY_DIR),
                    STEADY_PACKAGE], "npm install")
    if not steady_binary().exists():
        raise ConformanceError(f"npm installed {STEADY_PACKAGE} but no steady binary is in {STEADY_DIR}")
    stamp.write_text(STEADY_PACKAGE)


def setup() -> None:
    if not SPEC.is_file():
        raise ConformanceError(f"the OpenAPI file is missing: {SPEC}")
    CACHE.mkdir(parents=True, exist_ok=True)
    ensure_suite()
    ensure_venv()
    ensure_steady()


# ------------------------------------------------------------------ servers


def start_steady() -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(steady_binary()), "--host", "127.0.0.1", "-p", str(port), "-q", *STEADY_FLAGS, str(SPEC)]
    base = f"http://127.0.0.1:{port}"
    proc = start_server(cmd, f"{base}/_x-steady/health", CACHE / "steady.log")
    log(f"Steady is up at {base}")
    return proc, base


def rechat_command() -> Path:
    """rechat from the venv that runs this file: the checkout under test."""
    path = Path(sys.executable).parent / "rechat"
    if not path.exists():
        raise ConformanceError(f"{path} does not exist: install the project (`pip install -e .`)")
    return path


def start_rechat(mode_args: list[str], pass_name: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [str(rechat_command()), *mode_args, "--port", str(port), "--quiet",
           "--dump-dir", str(CACHE)]
    base = f"http://127.0.0.1:{port}"
    log(f"starting: {' '.join(cmd)}")
    proc = start_server(cmd, f"{base}/healthz", CACHE / f"rechat-{pass_name}.log")
    return proc, base


# -------------------------------------------------------------------- pytest


SUMMARY_LINE = re.compile(r"^=+ (.+) in [\d.]+s\b.*=+$")
SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def parse_summary(output: str) -> dict[str, int] | None:
    """Counts from pytest's closing line, e.g. '== 1 failed, 6246 passed, 24 skipped in 31.02s =='.

    None if there is no such line; {} for '== no tests ran in 1.2s =='.
    """
    for line in reversed(output.splitlines()):
        match = SUMMARY_LINE.match(line.strip())
        if match:
            counts = {}
            for number, word in SUMMARY_COUNT.findall(match.group(1)):
                counts["errors" if word.startswith("error") else word] = int(number)
            return counts
    return None


def pytest_command(args: argparse.Namespace) -> list[str]:
    cmd = [str(VENV / "bin" / "python"), "-m", "pytest", *args.tests, "-o", "addopts=--tb=short", "-rfE"]
    if args.workers > 0:
        cmd += ["-n", str(args.workers)]
    else:
        cmd += ["-p", "no:xdist"]
    if args.k:
        cmd += ["-k", args.k]
    return cmd


def run_suite(result: PassResult, base_url: str, args: argparse.Namespace) -> None:
    result.target = base_url
    env = dict(os.environ, TEST_API_BASE_URL=base_url, NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", COLUMNS="200")  # 200: reasons on FAILED lines
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "PYTEST_ADDOPTS"):
        env.pop(name, None)
    output = CACHE / f"{result.name}.log"
    log(f"pass {result.name}: pytest against {base_url} (full output: {output.relative_to(REPO)})")
    started = time.monotonic()
    try:
        result.exit_code = run_bounded(pytest_command(args), PASS_TIMEOUT, output, cwd=SUITE, env=env)
    except ConformanceError as error:  # the pass timed out: report what it printed so far
        result.problems.append(str(error))
    finally:
        result.seconds = time.monotonic() - started
    counts = parse_summary(output.read_text(errors="replace"))
    result.counts = counts or {}
    if counts is None:
        result.problems.append(f"no pytest summary (exit {result.exit_code}), see {output}")
    elif result.count("passed") + result.count("failed") + result.count("errors") == 0:
        result.problems.append("no test ran (check -k and the test paths)")
    if result.count("failed") or result.count("errors"):
        result.problems.append(f"{result.count('failed')} failed, {result.count('errors')} errors")


def show_failures(result: PassResult, limit: int = 25) -> None:
    """Print the first FAILED/ERROR lines and the first traceback of a pass."""
    path = CACHE / f"{result.name}.log"
    if not path.is_file():
        return
    lines = path.read_text(errors="replace").splitlines()
    short = [line for line in lines if line.startswith(("FAILED ", "ERROR "))]
    print(f"\n--- {result.name}: first failures ({len(short)} in all; full output in {path}) ---")
    for line in short[:limit]:
        print(line[:300])
    headers = [i for i, line in enumerate(lines) if re.match(r"^=+ (FAILURES|ERRORS) =+$", line)]
    if headers:
        print(f"\n--- {result.name}: first traceback ---")
        for line in lines[headers[0] + 1:headers[0] + 60]:
            if line.startswith("----") and "Captured" in line:
                break
            print(line)


# ------------------------------------------------------------------- passes


def direct_pass(steady_url: str, args: argparse.Namespace) -> PassResult:
    result = PassResult("direct")
    run_suite(result, steady_url, args)
    return result


def record_pass(steady_url: str, args: argparse.Namespace) -> PassResult:
    result = PassResult("record")
    shutil.rmtree(SESSIONS, ignore_errors=True)
    SESSIONS.mkdir(parents=True)
    rechat, base = start_rechat(["record", steady_url, "--host", "127.0.0.1", "--sessions", str(SESSIONS)],
                                "record")
    try:
        run_suite(result, f"{base}/v1", args)
    finally:
        check_stop(result, rechat)
    note_rechat_errors(result)
    files = sum(1 for path in SESSIONS.rglob("*") if path.is_file())
    result.notes.append(f"{files} files recorded in {SESSIONS.relative_to(REPO)}")
    return result


def replay_pass(args: argparse.Namespace) -> PassResult:
    result = PassResult("replay")
    if not SESSIONS.is_dir():
        raise ConformanceError(f"nothing to replay: {SESSIONS} does not exist (run the record pass first)")
    rechat, base = start_rechat(["replay", str(SESSIONS)], "replay")
    try:
        run_suite(result, f"{base}/v1", args)
    finally:
        check_stop(result, rechat)
    note_rechat_errors(result)
    return result


def note_rechat_errors(result: PassResult) -> None:
    """With --quiet rechat prints only errors: count them, since the suite cannot see them."""
    path = CACHE / f"rechat-{result.name}.log"
    lines = path.read_text(errors="replace").splitlines()
    errors = sum(1 for line in lines if " ERROR " in line or line.startswith("[error]"))
    if errors:
        result.notes.append(f"rechat logged {errors} errors (see {path.relative_to(REPO)})")


def check_stop(result: PassResult, rechat: subprocess.Popen) -> None:
    already_gone = rechat.poll() is not None
    elapsed = stop_server(rechat)
    if already_gone:
        result.problems.append(f"rechat had exited ({rechat.returncode}) before the suite ended")
    elif elapsed is None:
        result.problems.append(f"rechat did not exit within {STOP_TIMEOUT} s of SIGTERM (killed)")
    else:
        result.notes.append(f"rechat stopped {elapsed:.1f} s after SIGTERM (exit {rechat.returncode})")


# ------------------------------------------------------------------- report


def print_table(results: list[PassResult]) -> None:
    header = f"{'pass':<8} {'passed':>7} {'failed':>7} {'errors':>7} {'skipped':>8} {'time':>8}  target"
    print("\n" + header)
    print("-" * len(header))
    for r in results:
        print(f"{r.name:<8} {r.count('passed'):>7} {r.count('failed'):>7} {r.count('errors'):>7} "
              f"{r.count('skipped'):>8} {r.seconds:>7.1f}s  {r.target}")
    for r in results:
        for note in r.notes:
            print(f"  {r.name}: {note}")
        for problem in r.problems:
            print(f"  {r.name}: PROBLEM: {problem}")


def verdict(results: list[PassResult]) -> list[str]:
    """Reasons the run fails; empty if it succeeds."""
    reasons = [f"{r.name}: {p}" for r in results for p in r.problems]
    direct = next((r for r in results if r.name == "direct"), None)
    for r in results:
        if direct is not None and r is not direct and r.count("passed") < direct.count("passed"):
            reasons.append(f"{r.name}: {r.count('passed')} passed, fewer than direct's {direct.count('passed')}")
    return reasons


def closing_line(results: list[PassResult]) -> str:
    """'N passed, M failed' for the record pass (or the last pass run, if record did not run)."""
    chosen = next((r for r in results if r.name == "record"), results[-1])
    failed = chosen.count("failed") + chosen.count("errors")
    return f"{chosen.count('passed')} passed, {failed} failed"


# --------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pass", dest="passes", action="append", choices=PASSES,
                        help="run only this pass (repeatable); default: direct and record")
    parser.add_argument("--replay", action="store_true", help="also run the replay pass")
    parser.add_argument("--skip-direct", action="store_true", help="leave out the direct baseline")
    parser.add_argument("-k", metavar="EXPR", help="passed to pytest -k, in every pass")
    parser.add_argument("-n", "--workers", type=int, default=2,
                        help="pytest-xdist workers (default 2); 0 runs in one process")
    parser.add_argument("--setup-only", action="store_true", help="prepare the cache and stop")
    parser.add_argument("tests", nargs="*", default=["tests/api_resources"],
                        help="test paths inside the sdist (default: tests/api_resources)")
    args = parser.parse_args(argv)
    passes = args.passes or ["direct", "record"] + (["replay"] if args.replay else [])
    if args.skip_direct:
        passes = [p for p in passes if p != "direct"]
    args.passes = [p for p in PASSES if p in passes]  # always in the order direct, record, replay
    return args


def guarded(name: str, run, *run_args) -> PassResult:
    """Run one pass; a server that fails to start or stop becomes that pass's problem."""
    try:
        return run(*run_args)
    except ConformanceError as error:
        return PassResult(name, problems=[str(error)])


def run_passes(args: argparse.Namespace) -> list[PassResult]:
    results: list[PassResult] = []
    steady = None
    try:
        if "direct" in args.passes or "record" in args.passes:
            steady, steady_url = start_steady()
            if "direct" in args.passes:
                results.append(guarded("direct", direct_pass, steady_url, args))
            if "record" in args.passes:
                results.append(guarded("record", record_pass, steady_url, args))
        if steady is not None:
            stop_server(steady)  # replay must not reach upstream
            steady = None
        if "replay" in args.passes:
            results.append(guarded("replay", replay_pass, args))
    finally:
        if steady is not None:
            stop_server(steady)
    return results


def main(argv: list[str]) -> int:
    # CI and `timeout` stop us with SIGTERM: turn it into SystemExit so the finally blocks run.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    args = parse_args(argv)
    try:
        started = time.monotonic()
        setup()
        log(f"setup ready in {time.monotonic() - started:.1f} s ({CACHE.relative_to(REPO)})")
        if args.setup_only:
            return 0
        if not args.passes:
            log("no pass selected")
            return 2
        results = run_passes(args)
    except ConformanceError as error:
        log(f"ERROR: {error}")
        return 1
    print_table(results)
    for r in results:
        if r.count("failed") or r.count("errors"):
            show_failures(r)
    reasons = verdict(results)
    print()
    for reason in reasons:
        log(f"FAIL: {reason}")
    print(closing_line(results))
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

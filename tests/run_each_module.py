"""Run every test module alone (`pytest path/to/test_x.py`, one process each) and report which pass.

Why: a module that passes only after another one ran (a fixture it relies on being warm, a server another
module restarted, a file another wrote) fails here. The suite itself runs all modules in one process, where
such a dependency hides.

    .venv/bin/python tests/run_each_module.py                 # every module, one after another
    .venv/bin/python tests/run_each_module.py -k reliability  # modules whose path contains a word
    .venv/bin/python tests/run_each_module.py -x tests/demo   # all but these
    .venv/bin/python tests/run_each_module.py -- -m "not slow" -x   # arguments after -- go to each pytest

Prints one line per module (result, seconds, pytest's summary) and a table at the end; writes the results
as JSON with --json. Exits 1 when any module failed alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SUMMARY = re.compile(r"^=+ (.* in [0-9.]+s.*) =+$", re.M)


def find_modules(contains: list[str], excluding: list[str]) -> list[Path]:
    found = sorted(TESTS.rglob("test_*.py"))
    return [p for p in found if (not contains or any(word in str(p.relative_to(ROOT)) for word in contains))
            and not any(word in str(p.relative_to(ROOT)) for word in excluding)]


def run(module: Path, pytest_args: list[str], timeout_s: float) -> dict:
    env = {**os.environ, "PYTHONSAFEPATH": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module.relative_to(ROOT)),
               *pytest_args]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        code, output = -1, f"timed out after {timeout_s:.0f} s\n{(error.stdout or b'')[-3000:]!r}"
    summary = SUMMARY.findall(output)
    # 0: passed; 5: nothing collected (every test deselected by the arguments given) is not a failure
    return {"module": str(module.relative_to(ROOT)), "code": code, "ok": code in (0, 5),
            "seconds": round(time.monotonic() - started, 1),
            "summary": summary[-1] if summary else (output.strip().splitlines() or [""])[-1][:200],
            "tail": "" if code in (0, 5) else output[-4000:]}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", "--contains", action="append", default=[],
                        help="only modules whose path contains this (repeatable)")
    parser.add_argument("-x", "--exclude", action="append", default=[],
                        help="leave out modules whose path contains this (repeatable)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds one module may take")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)
    results = []
    started = time.monotonic()
    modules = find_modules(args.contains, args.exclude)
    for k, module in enumerate(modules, 1):
        result = run(module, pytest_args, args.timeout)
        results.append(result)
        print(f"[{k}/{len(modules)}] {'ok  ' if result['ok'] else 'FAIL'} {result['seconds']:7.1f} s  "
              f"{result['module']}: {result['summary']}", flush=True)
        if not result["ok"]:
            print(result["tail"], flush=True)
    failed = [r for r in results if not r["ok"]]
    print(f"\n{len(results) - len(failed)} of {len(results)} modules pass alone "
          f"({time.monotonic() - started:.0f} s in all)")
    for result in failed:
        print(f"  FAILED alone: {result['module']} (exit {result['code']})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

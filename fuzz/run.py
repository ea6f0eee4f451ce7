#!/usr/bin/env python3
"""Build the instrumented core if needed, then fuzz each target for a fixed time.

    python3 fuzz/run.py [--seconds N] [TARGET ...] [-- LIBFUZZER_ARGS ...]

Targets: decode (fuzz/fuzz_decode.py), update (fuzz/fuzz_update.py), pump
(fuzz/fuzz_pump.py); default all, one after the other. Each runs under
libFuzzer (atheris) with ASan preloaded, reading the committed seeds from
fuzz/corpus/TARGET/ and writing new inputs to build/fuzz/corpus/TARGET/ (never
into the repo). A crash, sanitizer report, unexpected exception or failed check
stops that target and leaves the input in build/fuzz/artifacts/TARGET/; the run
then exits non-zero. Full logs go to build/fuzz/logs/TARGET.log; the summary
shows the executions per target.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import build

FUZZ = Path(__file__).resolve().parent
TARGETS = {
    # name: (harness, max input length)
    "decode": ("fuzz_decode.py", 1024),
    "update": ("fuzz_update.py", 4096),
    "pump": ("fuzz_pump.py", 4096),
}
SHM = Path("/dev/shm")


def shm_entries() -> set[str]:
    try:
        return {entry.name for entry in SHM.iterdir() if "fuzz" in entry.name}
    except FileNotFoundError:
        return set()


def stats_of(log: str) -> dict[str, str]:
    stats = dict(re.findall(r"^stat::(\w+):\s*(\S+)", log, re.MULTILINE))
    progress = re.findall(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", log, re.MULTILINE)
    if progress:
        stats.setdefault("number_of_executed_units", progress[-1][0])
        stats["cov"], stats["ft"], stats["corpus"] = progress[-1][1:]
    return stats


def run_target(name: str, seconds: int, extra: list[str], env: dict[str, str]) -> tuple[bool, dict[str, str]]:
    harness, max_len = TARGETS[name]
    new_corpus = build.OUT / "corpus" / name
    artifacts = build.OUT / "artifacts" / name
    logs = build.OUT / "logs"
    for folder in (new_corpus, artifacts, logs):
        folder.mkdir(parents=True, exist_ok=True)
    seeds = FUZZ / "corpus" / name
    command = [
        str(build.venv_python()),
        str(FUZZ / harness),
        f"-max_total_time={seconds}",
        f"-max_len={max_len}",
        "-timeout=30",
        "-rss_limit_mb=4096",
        "-print_final_stats=1",
        f"-artifact_prefix={artifacts}/",
        *extra,
        str(new_corpus),
        str(seeds),
    ]
    print(
        f"[fuzz] {name}: {seconds}s, seeds {seeds.relative_to(build.ROOT)} "
        f"({sum(1 for _ in seeds.iterdir())} files)",
        flush=True,
    )
    shm_before = shm_entries()
    started = time.monotonic()
    log_path = logs / f"{name}.log"
    with open(log_path, "w") as log_file:
        result = subprocess.run(
            command, env=env, stdout=log_file, stderr=subprocess.STDOUT, cwd=build.OUT, timeout=seconds + 600
        )
    elapsed = time.monotonic() - started
    log = log_path.read_text(errors="replace")
    stats = stats_of(log)
    stats["seconds"] = f"{elapsed:.0f}"
    left = shm_entries() - shm_before
    ok = result.returncode == 0 and "number_of_executed_units" in stats and not left
    if not ok:
        lines = log.splitlines()
        print("\n".join(lines[-120:]))
        if left:
            print(f"[fuzz] {name}: shared memory left behind: {sorted(left)}")
        print(
            f"[fuzz] {name}: FAILED (exit {result.returncode}); full log {log_path}; inputs in {artifacts}",
            flush=True,
        )
    return ok, stats


def main() -> int:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", "60")))
    parser.add_argument(
        "targets", nargs="*", metavar="TARGET", help=f"one of {', '.join(TARGETS)} (default: all)"
    )
    args = parser.parse_args(argv)
    unknown = [name for name in args.targets if name not in TARGETS]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; choose from {', '.join(TARGETS)}")
    preload = build.ensure_built()
    env = build.run_env(preload)
    results = []
    for name in args.targets or list(TARGETS):
        ok, stats = run_target(name, args.seconds, extra, env)
        results.append((name, ok, stats))
    print("[fuzz] summary")
    columns = [
        ("executions", "number_of_executed_units", 11),
        ("exec/s", "average_exec_per_sec", 7),
        ("cov", "cov", 6),
        ("ft", "ft", 6),
        ("corpus", "corpus", 6),
        ("secs", "seconds", 5),
    ]
    print(f"  {'target':8} {'result':7} " + " ".join(f"{title:>{width}}" for title, _, width in columns))
    for name, ok, stats in results:
        values = " ".join(f"{stats.get(key, '?'):>{width}}" for _, key, width in columns)
        print(f"  {name:8} {'ok' if ok else 'FAILED':7} {values}")
    total = sum(int(stats.get("number_of_executed_units", 0)) for _, _, stats in results)
    failed = [name for name, ok, _ in results if not ok]
    print(
        f"[fuzz] fuzz executions: {total} in total; "
        + (f"FAILED: {', '.join(failed)}" if failed else "no findings")
    )
    print(f"fuzz: {len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

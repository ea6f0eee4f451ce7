#!/usr/bin/env python3
"""Build the fuzzing copy of the compiled core, instrumented for ASan and libFuzzer.

Everything goes under build/fuzz/ and the normal in-place build is never
touched:

    build/fuzz/venv/                 a virtualenv with atheris (pinned below) and
                                     the dependencies pyproject.toml lists
    build/fuzz/pkg/runtime/          src/runtime/*.py symlinked, plus
    build/fuzz/pkg/runtime/_core<EXT_SUFFIX>
                                     csrc/*.c compiled by clang with
                                     -fsanitize=address,fuzzer-no-link (and
                                     trapping UBSan), -g -O1
    build/fuzz/selftest/             a deliberate heap overflow, compiled with
                                     the same flags: proves reports fire

The harnesses run with build/fuzz/pkg first on sys.path and with atheris's
asan_with_fuzzer.so preloaded (ASan and libFuzzer in one runtime, so the
extension's coverage counters reach the fuzzer): "native extension fuzzing"
in atheris's documentation. fuzz/run.py does that; this script only builds
(and is idempotent: it recompiles when a source, the flags or the compiler
changed).

Usage: python3 fuzz/build.py [--force] [--no-selftest] [--print-env]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "fuzz"
VENV = OUT / "venv"
PKG = OUT / "pkg"
ATHERIS = "atheris==3.0.0"


def project_dependencies() -> list[str]:
    """The package's own dependencies, read from pyproject.toml (so the fuzz venv never lags it)."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        return list(tomllib.load(file)["project"]["dependencies"])


PACKAGES = [ATHERIS, *project_dependencies()]
"""What the fuzz venv holds: atheris, and everything the runtime package imports."""
CC = os.environ.get("FUZZ_CC", "clang")
CFLAGS = [
    "-fsanitize=address,fuzzer-no-link",
    # UB (shifts, signed overflow, misaligned or out-of-bounds array indexes...)
    # traps; libFuzzer reports the SIGILL with a stack trace. No extra runtime.
    "-fsanitize=undefined",
    "-fsanitize-trap=undefined",
    "-fno-sanitize-recover=all",
    "-g",
    "-O1",
    "-fno-omit-frame-pointer",
    "-fPIC",
    "-std=gnu11",
    "-D_GNU_SOURCE=1",
    "-Wall",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
    "-Wno-cast-function-type",
]
SELFTEST_C = r"""
#include <stdlib.h>
/* A heap overflow by one byte: ASan must report it when `index` is 8. */
int rt_fuzz_selftest(int index)
{
    volatile char *p = malloc(8);
    p[index] = 1;
    int value = p[0];
    free((void *)p);
    return value;
}
"""


def log(message: str) -> None:
    print(f"[fuzz/build] {message}", flush=True)


def venv_python() -> Path:
    return VENV / "bin" / "python"


def ensure_venv() -> None:
    """A virtualenv with atheris and the package's dependencies, on the extension's interpreter."""
    stamp = VENV / ".atheris-stamp"
    if stamp.exists() and stamp.read_text() == f"{' '.join(PACKAGES)} {sys.version}":
        return
    if not venv_python().exists():
        log(f"creating {VENV.relative_to(ROOT)}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log(f"installing {', '.join(PACKAGES)}")
    subprocess.run(
        [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *PACKAGES],
        check=True,
    )
    stamp.write_text(f"{' '.join(PACKAGES)} {sys.version}")


def preload_library() -> Path:
    """atheris's ASan + libFuzzer runtime, to LD_PRELOAD."""
    out = subprocess.run(
        [str(venv_python()), "-c", "import atheris; print(atheris.path())"],
        check=True,
        capture_output=True,
        text=True,
    )
    library = Path(out.stdout.strip()) / "asan_with_fuzzer.so"
    if not library.exists():
        sys.exit(f"[fuzz/build] {library} is missing: this atheris build has no sanitizer runtime")
    return library


def compiler_version() -> str:
    if shutil.which(CC) is None:
        sys.exit(
            f"[fuzz/build] {CC} not found: install clang and its runtimes "
            "(apt-get install -y clang libclang-rt-14-dev)"
        )
    return subprocess.run([CC, "--version"], check=True, capture_output=True, text=True).stdout


def link_python_sources() -> None:
    """build/fuzz/pkg/runtime: symlinks to src/runtime/*.py (always current) and the instrumented core."""
    target = PKG / "runtime"
    target.mkdir(parents=True, exist_ok=True)
    wanted = {path.name for path in (ROOT / "src" / "runtime").glob("*.py")} | {"catalog.yaml"}
    for entry in target.iterdir():
        if entry.is_symlink() and entry.name not in wanted:
            entry.unlink()
    for name in sorted(wanted):
        link = target / name
        source = ROOT / "src" / "runtime" / name
        if link.is_symlink() and link.resolve() == source:
            continue
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(source)


def build_core(force: bool) -> Path:
    sources = sorted((ROOT / "csrc").glob("*.c"))
    headers = sorted((ROOT / "csrc").glob("*.h"))
    include = sysconfig.get_paths()["include"]
    output = PKG / "runtime" / f"_core{sysconfig.get_config_var('EXT_SUFFIX')}"
    digest = hashlib.sha256()
    for path in [*sources, *headers]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    digest.update(repr((CC, CFLAGS, include, compiler_version())).encode())
    stamp = output.with_name(output.name + ".stamp")
    if not force and output.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest():
        log(f"{output.relative_to(ROOT)} is up to date")
        return output
    objects = OUT / "obj"
    objects.mkdir(parents=True, exist_ok=True)
    compiled = []
    for source in sources:
        obj = objects / (source.stem + ".o")
        subprocess.run([CC, *CFLAGS, f"-I{include}", "-c", str(source), "-o", str(obj)], check=True)
        compiled.append(str(obj))
    # Undefined sanitizer/coverage symbols are left for the preloaded runtime to resolve.
    subprocess.run(
        [CC, "-shared", "-fsanitize=address,fuzzer-no-link", *compiled, "-o", str(output)],
        check=True,
    )
    check_instrumented(output)
    stamp.write_text(digest.hexdigest())
    log(f"built {output.relative_to(ROOT)} ({len(sources)} sources, {' '.join(CFLAGS[:2])})")
    return output


def check_instrumented(library: Path) -> None:
    """The object must call into ASan and register libFuzzer coverage counters."""
    symbols = subprocess.run(["nm", "-D", "--undefined-only", str(library)], capture_output=True, text=True)
    names = symbols.stdout
    needed = ["__asan_report_load", "__asan_init", "__sanitizer_cov_8bit_counters_init"]
    missing = [name for name in needed if name not in names]
    if missing:
        sys.exit(f"[fuzz/build] {library.name} is not instrumented: no {', '.join(missing)}")
    reports = sum(1 for line in names.splitlines() if "__asan_report_" in line)
    log(f"instrumentation check: {reports} ASan report hooks, libFuzzer counters registered")


def run_env(preload: Path) -> dict[str, str]:
    """The environment the harnesses run in (fuzz/run.py uses the same)."""
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=str(preload),
        # Python "leaks" at exit; allocations go through malloc so ASan sees
        # every object (pymalloc arenas would hide overflows inside them).
        ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_abort=1:symbolize=1",
        PYTHONMALLOC="malloc",
        PYTHONPATH=str(PKG),
        PYTHONDONTWRITEBYTECODE="1",
    )
    return env


def selftest(preload: Path) -> None:
    """Compile a deliberate overflow with the same flags; ASan must report it."""
    folder = OUT / "selftest"
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "overflow.c"
    source.write_text(SELFTEST_C)
    library = folder / "overflow.so"
    subprocess.run([CC, *CFLAGS, "-shared", str(source), "-o", str(library)], check=True)
    probe = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(library)!r})\n"
        "assert lib.rt_fuzz_selftest(0) == 1\n"
        "print('in bounds ok', flush=True)\n"
        "lib.rt_fuzz_selftest(int(sys.argv[1]))\n"
        "print('overflow NOT detected', flush=True)\n"
    )
    env = run_env(preload)
    result = subprocess.run(
        [str(venv_python()), "-c", probe, "8"], env=env, capture_output=True, text=True, timeout=120
    )
    if (
        "in bounds ok" not in result.stdout
        or "heap-buffer-overflow" not in result.stderr
        or result.returncode == 0
    ):
        sys.stderr.write(result.stdout + result.stderr)
        sys.exit("[fuzz/build] ASan self-test failed: a deliberate overflow was not reported")
    # And the instrumented core imports from build/fuzz with the runtime loaded.
    probe = (
        "import ctypes, runtime._core as core, runtime.buffer\n"
        "assert '/build/fuzz/pkg/' in core.__file__, core.__file__\n"
        "assert hasattr(ctypes.CDLL(None), '__asan_init')\n"
        "print(core.__file__)\n"
    )
    result = subprocess.run(
        [str(venv_python()), "-c", probe], env=env, capture_output=True, text=True, timeout=120, cwd=OUT
    )
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        sys.exit("[fuzz/build] the instrumented core does not import")
    log("ASan self-test: deliberate heap overflow reported; instrumented core imports")


def ensure_built(force: bool = False, run_selftest: bool = True) -> Path:
    """Build whatever is missing or stale; return the runtime library to preload."""
    OUT.mkdir(parents=True, exist_ok=True)
    compiler_version()
    ensure_venv()
    preload = preload_library()
    link_python_sources()
    build_core(force)
    if run_selftest:
        selftest(preload)
    return preload


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--force", action="store_true", help="recompile even when up to date")
    parser.add_argument("--no-selftest", action="store_true", help="skip the ASan self-test")
    parser.add_argument("--print-env", action="store_true", help="print the run environment as shell exports")
    args = parser.parse_args()
    preload = ensure_built(args.force, not args.no_selftest)
    if args.print_env:
        env = run_env(preload)
        for key in ("LD_PRELOAD", "ASAN_OPTIONS", "PYTHONMALLOC", "PYTHONPATH"):
            print(f"export {key}={env[key]}")


if __name__ == "__main__":
    main()

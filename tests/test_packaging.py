"""The sdist and the wheel hold what they should.

Both are built once per run, offline (``python -m build --no-isolation``: the
build backend comes from this environment, see the ``test`` extra), into a
temporary directory; the wheel is built from the sdist, as ``pip install`` of an
sdist would. The wheel is the package alone: the Python modules, the compiled
core, its type stub, ``py.typed`` and the device catalog, and no C sources. The
sdist carries what its tests need, so that ``make test`` runs from it: csrc/,
tests/ (conftest.py and e2e.py included), bench/, fuzz/, examples/, docs/, the
Makefile and the README.
"""

from __future__ import annotations

import email.parser
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
SETUPTOOLS_NEEDED = (77,)
"""The oldest setuptools that reads this pyproject.toml (an SPDX ``license``, ``license-files``)."""

SDIST_TREES = ("csrc", "tests", "bench", "docs", "fuzz", "examples")
"""Directories the sdist carries whole (less caches and build products)."""
SDIST_FILES = ("Makefile", "README.md", "LICENSE", "pyproject.toml", "setup.py", "MANIFEST.in")
NOT_SHIPPED = re.compile(
    r"(^|/)(__pycache__|\.hypothesis|\.pytest_cache|results)(/|$)|\.(pyc|pyo|so|o|a|log)$"
)
"""Build products and caches: never in the sdist (bench/results/ holds local benchmark runs)."""
NOT_COPIED = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    ".hypothesis",
    "*.so",
)
"""What the build starts without: VCS data, environments, build products and caches."""
SETUPTOOLS_WARNINGS = re.compile(r"SetuptoolsDeprecationWarning|SetuptoolsWarning|^warning: ", flags=re.I)
"""Deprecations of the configuration, and MANIFEST.in lines that match nothing."""
ENVIRONMENT_WARNINGS = re.compile(r"byte-compiling is disabled")
"""Warnings that come from the environment (``PYTHONDONTWRITEBYTECODE``), not from this project."""


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


def why_no_build() -> str | None:
    """Why the distributions cannot be built here, offline; None when they can."""
    if importlib.util.find_spec("build") is None:
        return "the 'build' package is not installed (pip install -e '.[test]')"
    try:
        setuptools = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return "setuptools is not installed (pip install -e '.[test]')"
    if version_tuple(setuptools) < SETUPTOOLS_NEEDED:
        return f"setuptools {setuptools} is too old to build this project (pip install -e '.[test]')"
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler"
    return None


def repository_files(tree: str) -> set[str]:
    """The files under ``tree`` that the sdist should carry, as posix paths from the root."""
    base = ROOT / tree
    if not base.is_dir():
        return set()
    found = set()
    for path in base.rglob("*"):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_file() and not NOT_SHIPPED.search(relative):
            found.add(relative)
    return found


class Distributions:
    def __init__(self, sdist: Path, wheel: Path, log: str) -> None:
        self.sdist = sdist
        self.wheel = wheel
        self.log = log
        with tarfile.open(sdist) as archive:
            names = [member.name for member in archive.getmembers() if member.isfile()]
        top = {PurePosixPath(name).parts[0] for name in names}
        assert len(top) == 1, f"the sdist has more than one top directory: {sorted(top)}"
        self.sdist_top = top.pop()
        self.sdist_files = {str(PurePosixPath(*PurePosixPath(name).parts[1:])) for name in names}
        with zipfile.ZipFile(wheel) as archive:
            self.wheel_files = set(archive.namelist())
            metadata_name = next(name for name in self.wheel_files if name.endswith(".dist-info/METADATA"))
            self.metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Distributions:
    reason = why_no_build()
    if reason:
        pytest.skip(reason)
    # From a copy: building writes build/ and an .egg-info into the source tree, and an .egg-info in
    # src/ would be a second "runtime" distribution on the path of an editable install.
    source = tmp_path_factory.mktemp("source") / "runtime"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*NOT_COPIED))
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    log = result.stdout + result.stderr
    if result.returncode != 0:
        pytest.fail(f"python -m build failed (exit {result.returncode}):\n{log[-6000:]}", pytrace=False)
    (sdist,) = out.glob("*.tar.gz")
    (wheel,) = out.glob("*.whl")
    return Distributions(sdist, wheel, log)


# ---- the wheel ----------------------------------------------------------------------------------


def test_the_wheel_holds_the_package_and_no_c_sources(dists: Distributions) -> None:
    files = dists.wheel_files
    assert not [name for name in files if name.endswith((".c", ".h"))], "C sources in the wheel"
    assert not [name for name in files if name.startswith(("csrc/", "tests/", "src/"))]
    for name in ("runtime/_core.pyi", "runtime/py.typed", "runtime/catalog.yaml"):
        assert name in files
    assert [name for name in files if re.fullmatch(r"runtime/_core\.cpython-.*\.so", name)], (
        "no compiled core"
    )
    top = {name.split("/")[0] for name in files}
    assert top == {"runtime", f"{dists.wheel.name.split('-')[0]}-{dists.wheel.name.split('-')[1]}.dist-info"}


def test_the_wheel_holds_every_module_of_the_package(dists: Distributions) -> None:
    """A subpackage without ``__init__.py`` would be left out: every module of src/runtime must ship."""
    source = ROOT / "src"
    modules = {
        path.relative_to(source).as_posix()
        for path in (source / "runtime").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert modules, "no modules found under src/runtime"
    missing = sorted(modules - dists.wheel_files)
    assert not missing, f"modules missing from the wheel: {missing}"


def test_the_wheel_metadata(dists: Distributions) -> None:
    metadata = dists.metadata
    assert metadata["Name"] == "runtime"
    assert metadata["License-Expression"] == "MIT"
    assert "LICENSE" in metadata.get_all("License-File", [])
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["Author"] or metadata["Author-email"]
    assert metadata["Keywords"]
    classifiers = set(metadata.get_all("Classifier", []))
    for classifier in (
        "Operating System :: POSIX :: Linux",
        "Programming Language :: C",
        "Programming Language :: Python :: 3.11",
    ):
        assert classifier in classifiers
    assert not [c for c in classifiers if c.startswith("License ::")], "PEP 639: the license is an expression"
    licenses = [name for name in dists.wheel_files if name.endswith(".dist-info/licenses/LICENSE")]
    assert licenses, "LICENSE is not in the wheel"


def test_the_wheel_has_the_console_script(dists: Distributions) -> None:
    with zipfile.ZipFile(dists.wheel) as archive:
        name = next(n for n in dists.wheel_files if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(name).decode()
    assert re.search(r"^runtime\s*=\s*runtime\.tools\.cli:main$", entry_points, flags=re.M)


# ---- the sdist ----------------------------------------------------------------------------------


def test_the_sdist_holds_what_its_tests_need(dists: Distributions) -> None:
    files = dists.sdist_files
    for name in SDIST_FILES:
        assert name in files, f"{name} is not in the sdist"
    for name in (
        "tests/conftest.py",
        "tests/e2e.py",
        "csrc/core.h",
        "src/runtime/_core.pyi",
        "src/runtime/py.typed",
    ):
        assert name in files, f"{name} is not in the sdist"
    for tree in SDIST_TREES:
        missing = sorted(repository_files(tree) - files)
        assert not missing, f"files of {tree}/ missing from the sdist: {missing}"


def test_the_sdist_holds_no_build_products(dists: Distributions) -> None:
    shipped = sorted(name for name in dists.sdist_files if NOT_SHIPPED.search(name))
    assert not shipped, f"build products or caches in the sdist: {shipped}"
    assert not [name for name in dists.sdist_files if name.startswith((".venv/", "build/", ".git/"))]


def test_the_tests_collect_from_the_sdist(dists: Distributions, tmp_path: Path) -> None:
    """Every test module imports from an unpacked sdist (conftest.py and e2e.py are there)."""
    with tarfile.open(dists.sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    unpacked = tmp_path / dists.sdist_top
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=unpacked,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    last = output.splitlines()[-1] if output else ""
    assert not re.search(r"\berrors?\b", last, flags=re.I), output[-4000:]


def test_the_build_gives_no_setuptools_warnings(dists: Distributions) -> None:
    warnings = {
        line.strip()
        for line in dists.log.splitlines()
        if SETUPTOOLS_WARNINGS.search(line.strip()) and not ENVIRONMENT_WARNINGS.search(line)
    }
    if not repository_files("examples"):  # being added: until then its MANIFEST.in line matches nothing
        warnings.discard("warning: no files found matching '*.py' under directory 'examples'")
    assert not warnings, "the build warned:\n" + "\n".join(sorted(warnings))

"""Full or hostile shared memory never kills a process, and is never adopted.

* Files in /dev/shm that are not this user's own, owner-only, regular files
  (another user's planted segment, a symlink, a FIFO, a world-readable file)
  are refused with a ``DeviceBufferError`` naming the owner and mode. The
  second user is ``nobody``: the test runs a real process as that user where
  it can (root), and skips otherwise.
* ``BufferStore.unlink_all()`` matches its namespace exactly, never opens a
  FIFO, and skips what it may not remove.
* A full /dev/shm is an exception at open, never a SIGBUS later: checked in a
  private mount namespace whose /dev/shm is a tiny tmpfs (skipped where
  ``unshare -m`` is not permitted), for the library and for the bridge.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runtime.buffer import SHM_DIR, Buffer, BufferStore, DeviceBufferError, Parameter

# slow: other users' processes, a private mount namespace
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

Plain = Buffer.make_type("safety", [Parameter("x", ctypes.c_int32, 0, writeable=True)])
PLAIN_SOURCE = """
import ctypes
from runtime.buffer import Buffer, Parameter
Plain = Buffer.make_type("safety", [Parameter("x", ctypes.c_int32, 0, writeable=True)])
"""
ROOT = Path(__file__).resolve().parent.parent


def as_nobody(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` as the unprivileged user ``nobody`` (a real second user)."""
    return subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd="/",
        env={**os.environ, **(env or {})},
    )


def nobody_can_run_python() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    try:
        return as_nobody("import runtime.buffer").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_nobody = pytest.mark.skipif(
    not nobody_can_run_python(), reason="needs root and setpriv to act as nobody"
)


@pytest.fixture
def segment(shm_name: Callable[[str], str]) -> Iterator[str]:
    """A fresh segment name in the session namespace; whatever lies there is removed afterwards."""
    name = shm_name()
    try:
        yield name
    finally:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, name))


# ---- files that are not ours --------------------------------------------------------------------


@needs_nobody
def test_another_users_planted_segment_with_a_valid_header_is_refused(segment: str) -> None:
    planted = as_nobody(
        PLAIN_SOURCE + "b = Plain.attach(__import__('sys').argv[1]); b.set('x', 666)", segment
    )
    assert planted.returncode == 0, planted.stderr
    assert os.stat(os.path.join(SHM_DIR, segment)).st_uid != os.geteuid()
    for create in (True, False):
        with pytest.raises(DeviceBufferError, match="not a regular file owned by this user") as caught:
            Plain.attach(segment, create=create)
        context = caught.value.context
        assert context["owner_uid"] == 65534 and context["mode"] == "0600" and context["name"] == segment


@needs_nobody
def test_another_users_empty_file_is_refused_at_once_not_waited_for(segment: str) -> None:
    planted = as_nobody(f"open({os.path.join(SHM_DIR, segment)!r}, 'w').close()")
    assert planted.returncode == 0, planted.stderr
    with pytest.raises(DeviceBufferError, match="owned by this user") as caught:
        Plain.attach(segment)  # a device would otherwise be blocked forever
    assert caught.value.context["owner_uid"] == 65534


def test_a_world_readable_file_of_ours_is_refused(segment: str) -> None:
    with Plain.open(segment):
        pass
    os.chmod(os.path.join(SHM_DIR, segment), 0o644)
    with pytest.raises(DeviceBufferError, match="owner-only") as caught:
        Plain.attach(segment, create=False)
    assert caught.value.context["mode"] == "0644"
    assert caught.value.context["owner_uid"] == os.geteuid()


def test_a_symlink_is_refused_not_followed(segment: str, shm_name: Callable[[str], str]) -> None:
    target = shm_name("target")
    with Plain.open(target) as real:
        real.set("x", 5)
        os.symlink(os.path.join(SHM_DIR, target), os.path.join(SHM_DIR, segment))
        with pytest.raises(DeviceBufferError, match="owned by this user") as caught:
            Plain.attach(segment)
        assert caught.value.context["kind"] == "symlink"
        assert real.get("x") == 5


def test_a_fifo_is_refused_without_blocking(segment: str) -> None:
    os.mkfifo(os.path.join(SHM_DIR, segment), 0o600)
    for create in (True, False):
        with pytest.raises(DeviceBufferError) as caught:
            Plain.attach(segment, create=create)
        assert caught.value.context["kind"] == "FIFO"


# ---- unlink_all ---------------------------------------------------------------------------------


def test_unlink_all_matches_the_namespace_exactly_and_never_opens_a_fifo(
    shm_name: Callable[[str], str],
) -> None:
    base = shm_name("ns")
    fifo = os.path.join(SHM_DIR, f"{base}-pipe")
    os.mkfifo(fifo, 0o600)
    try:
        with BufferStore.use_namespace(base):
            mine = Plain.attach(f"{base}-mine")
            mine.close()
        with BufferStore.use_namespace(f"{base}-other"):
            other = Plain.attach(f"{base}-other-theirs")  # "N-other" starts with "N-"
            other.close()
        with BufferStore.use_namespace(base):
            assert BufferStore({}).unlink_all() == [f"{base}-mine"]  # returns: the FIFO was not opened
        assert os.path.exists(os.path.join(SHM_DIR, f"{base}-other-theirs"))
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
        with BufferStore.use_namespace(f"{base}-other"):
            assert BufferStore({}).unlink_all() == [f"{base}-other-theirs"]
    finally:
        os.unlink(fifo)


@needs_nobody
def test_unlink_all_skips_what_it_may_not_remove_with_a_warning(shm_name: Callable[[str], str]) -> None:
    base = shm_name("skip")
    with BufferStore.use_namespace(base):
        Plain.attach(f"{base}-roots").close()  # root's: nobody may not remove it from sticky /dev/shm
    # ... but may read it, so it looks like one of nobody's own to clean up.
    os.chmod(os.path.join(SHM_DIR, f"{base}-roots"), 0o644)
    code = PLAIN_SOURCE + textwrap.dedent(
        f"""
        import logging
        from runtime.buffer import BufferStore
        logging.basicConfig(level=logging.WARNING)
        Plain.attach({f"{base}-nobodys"!r}).close()
        print(BufferStore({{}}).unlink_all())
        """
    )
    try:
        result = as_nobody(code, env={"RUNTIME_BUFFER_NAMESPACE": base})
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"['{base}-nobodys']"
        assert f"cannot remove segment {base}-roots" in result.stderr and "skipped" in result.stderr
        assert os.path.exists(os.path.join(SHM_DIR, f"{base}-roots"))
    finally:
        with BufferStore.use_namespace(base):
            BufferStore({}).unlink_all()


# ---- half-made segments -------------------------------------------------------------------------


def test_a_segment_its_creator_never_finished_is_made_again(
    segment: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.buffer

    monkeypatch.setattr(runtime.buffer, "SETUP_TIMEOUT", 0.05)
    path = os.path.join(SHM_DIR, segment)
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)  # a creator killed before sizing it
    os.close(fd)
    with pytest.raises(DeviceBufferError, match="never initialized"):
        Plain.attach(segment, create=False)
    with caplog.at_level(logging.WARNING, logger="runtime.buffer"):
        with Plain.open(segment) as buffer:
            buffer.set("x", 3)
            assert buffer.get("x") == 3
    assert "never finished it" in caplog.text


# ---- a full /dev/shm, in a private mount namespace ------------------------------------------------


def in_tiny_shm(size: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Python ``code`` in a private mount namespace whose /dev/shm is a tmpfs of ``size``."""
    script = f'mount -t tmpfs -o size={size},mode=1777 tmpfs /dev/shm && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def can_unshare() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        return in_tiny_shm("64k", "pass", timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


needs_unshare = pytest.mark.skipif(
    not can_unshare(), reason="unshare -m (a private mount namespace) not permitted"
)

FILL_UNTIL_FULL = textwrap.dedent(
    """
    import ctypes, os
    from runtime.buffer import Buffer, DeviceBufferError, Parameter
    Blob = Buffer.make_type("blob", [Parameter("data", ctypes.c_uint8 * 2000, 0)])
    Field = Buffer.make_type("field", [Parameter("data", ctypes.c_uint8 * 16000, 0)])
    opened = []
    try:
        for index in range(1000):
            opened.append(Blob.attach(f"rt-blob-{index}"))
            opened[-1].set("data", [index % 256] * 2000)
        raise SystemExit("never full")
    except DeviceBufferError as exc:
        print("refused:", exc.message, exc.context["name"])
    names = sorted(os.listdir("/dev/shm"))
    print("segments:", len(names), "opened:", len(opened))
    assert f"rt-blob-{len(opened)}" not in names  # the failed one was removed, not left half made
    for buffer in opened:  # every buffer opened is fully usable: no SIGBUS
        buffer.set("data", [7] * 2000)
        assert list(buffer.get("data"))[:3] == [7, 7, 7]
    for buffer in opened[:2]:
        buffer.close()
        Buffer.unlink(buffer.name)
    try:
        Field.attach("rt-field")  # needs 9 pages, 2 are free
    except DeviceBufferError as exc:
        print("field refused:", exc.message)
    assert "rt-field" not in os.listdir("/dev/shm")
    print("done")
    """
)


@needs_unshare
def test_a_full_dev_shm_raises_at_open_never_sigbus() -> None:
    result = in_tiny_shm("64k", FILL_UNTIL_FULL)
    assert result.returncode == 0, result.stderr  # -7 would be SIGBUS
    lines = result.stdout.splitlines()
    assert lines[0].startswith("refused: no room for the buffer in /dev/shm (ENOSPC")
    segments, opened = lines[1].split()[1], lines[1].split()[3]
    assert segments == opened and int(opened) >= 4
    assert lines[2].startswith("field refused: no room")
    assert lines[-1] == "done"


BRIDGE_ON_FULL_SHM = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from e2e import CATALOG, POT, make_uid
    from runtime.buffer import BufferStore, DeviceBufferError

    def log(path):
        with open(path, errors="replace") as file:
            return file.read()

    filler = "/dev/shm/filler"
    with open(filler, "wb") as file:  # leave room for one buffer (one page) only
        file.write(b"x" * 4096)
    uids = [make_uid(POT), make_uid(POT)]
    devices = [f"potentiometer:{uid:#x}" for uid in uids]
    emulator = subprocess.Popen([sys.executable, "-m", "runtime.tools.emulate", *devices, "--link", "links"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    for _ in uids:
        emulator.stdout.readline()
    bridge = subprocess.Popen([sys.executable, "-m", "runtime.tools.bridge", "--glob", "links/*"],
                              stderr=open("bridge.log", "wb"))
    try:
        store = BufferStore(CATALOG)
        def valid():
            found = []
            for uid in uids:
                try:
                    found.append(store.get_or_open(uid, create=False).valid)
                except DeviceBufferError:
                    found.append(False)
            return found
        deadline = time.monotonic() + 20
        while sum(valid()) < 1 or "no room" not in log("bridge.log"):
            assert time.monotonic() < deadline, (valid(), log("bridge.log"))
            time.sleep(0.05)
        assert sum(valid()) == 1 and bridge.poll() is None
        served = store.get_or_open(uids[valid().index(True)], create=False)
        before = served.last_update
        time.sleep(0.5)
        assert served.valid and served.last_update > before  # the other device is served all along
        os.unlink(filler)  # room again: the bridge retries the second device
        deadline = time.monotonic() + 20
        while valid() != [True, True]:
            assert time.monotonic() < deadline, (valid(), log("bridge.log"))
            time.sleep(0.05)
        print("ok")
    finally:
        bridge.kill()
        emulator.kill()
        bridge.wait()
        emulator.wait()
    """
)


@needs_unshare
def test_the_bridge_keeps_serving_on_a_full_dev_shm_and_retries(tmp_path: Path) -> None:
    tests = str(ROOT / "tests")
    code = f"import os, sys; os.chdir({str(tmp_path)!r}); sys.path.insert(0, {tests!r})\n"
    code += BRIDGE_ON_FULL_SHM
    result = in_tiny_shm("8k", code)
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "bridge.log").read_text()
    assert result.stdout.strip() == "ok"

"""RuntimeBaseException and the exceptions built on it keep their context as data."""

import errno
import pickle

import pytest

from runtime.exception import RuntimeBaseException
from runtime.messaging import ErrorCode, MessageError
from runtime.sync import SyncError


def test_message_and_context() -> None:
    exc = RuntimeBaseException("no such parameter", param="speed", device=3)
    assert exc.message == "no such parameter"
    assert exc.context == {"param": "speed", "device": 3}
    assert isinstance(exc, Exception)


def test_str_appends_context() -> None:
    assert str(RuntimeBaseException("plain")) == "plain"
    exc = RuntimeBaseException("no such parameter", param="speed", device=3)
    assert str(exc) == "no such parameter (param='speed', device=3)"


def test_repr_shows_message_and_context() -> None:
    assert repr(RuntimeBaseException("plain")) == "RuntimeBaseException('plain')"
    exc = RuntimeBaseException("no such parameter", param="speed")
    assert repr(exc) == "RuntimeBaseException('no such parameter', param='speed')"


def test_repr_uses_the_subclass_name() -> None:
    class CustomError(RuntimeBaseException):
        pass

    assert repr(CustomError("boom", code=1)) == "CustomError('boom', code=1)"


def test_message_is_positional_only() -> None:
    # 'message' may therefore also be a context key.
    exc = RuntimeBaseException("outer", message="inner")
    assert exc.message == "outer"
    assert exc.context == {"message": "inner"}


def test_raise_and_catch_as_base() -> None:
    with pytest.raises(RuntimeBaseException) as info:
        raise SyncError("cannot acquire", errno.ETIMEDOUT, name="m")
    assert info.value.context == {"errno": errno.ETIMEDOUT, "name": "m"}


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeBaseException("plain"),
        RuntimeBaseException("with context", param="speed", values=[1, 2]),
        SyncError("cannot acquire mutex", errno.EBUSY, name="lock"),
        MessageError("bad frame", error_code=ErrorCode.BAD_CHECKSUM),
    ],
    ids=["plain", "context", "sync", "message"],
)
def test_pickle_round_trip(exc: RuntimeBaseException) -> None:
    # Exceptions cross process boundaries (multiprocessing) with their context.
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert copy.message == exc.message
    assert copy.context == exc.context
    assert str(copy) == str(exc)
    assert repr(copy) == repr(exc)


def test_sync_error_errno() -> None:
    exc = SyncError("cannot acquire mutex", errno.ETIMEDOUT)
    assert exc.errno == errno.ETIMEDOUT
    assert exc.errno_name == "ETIMEDOUT"
    assert exc.context == {"errno": errno.ETIMEDOUT}
    assert isinstance(exc, RuntimeBaseException)
    assert pickle.loads(pickle.dumps(exc)).errno == errno.ETIMEDOUT


def test_sync_error_unknown_errno_name() -> None:
    assert SyncError("odd", 99999).errno_name == "99999"


def test_message_error_code() -> None:
    exc = MessageError("bad checksum", error_code=ErrorCode.BAD_CHECKSUM)
    assert exc.error_code is ErrorCode.BAD_CHECKSUM
    # A plain int in the context is turned into the enum member.
    assert MessageError("x", error_code=0xFD).error_code is ErrorCode.UNEXPECTED_DELIMITER
    # No code at all: GENERIC_ERROR.
    assert MessageError("x").error_code is ErrorCode.GENERIC_ERROR

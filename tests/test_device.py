"""runtime.device.Device: the student-facing handle of a device's buffer."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from runtime import BufferStore, Device, DeviceBufferError, load_catalog

MOTOR = 10 << 72 | 0x0A << 64 | 0x5EED


@pytest.fixture
def store() -> Iterator[BufferStore]:
    with BufferStore(load_catalog()) as store:
        try:
            yield store
        finally:
            store.unlink_all()


def test_a_device_reads_and_writes_but_cannot_overwrite_the_devices_values(store: BufferStore) -> None:
    bridge_side = store.get_or_open(MOTOR)
    motor = store.device(MOTOR)
    assert isinstance(motor, Device)
    assert (motor.type_name, motor.uid, motor.name) == ("yogi-bear", MOTOR, bridge_side.name)
    assert not motor.valid  # the bridge does not serve it yet
    with pytest.raises(DeviceBufferError, match="not valid"):
        motor.get("enc_pos")
    bridge_side.serve()
    bridge_side.set("enc_pos", 1200.0)
    assert motor.valid and motor.get("enc_pos") == 1200.0
    assert motor.snapshot()["enc_pos"] == 1200.0
    assert not hasattr(motor, "set") and not hasattr(motor, "get_write") and not hasattr(motor, "update")
    assert "duty_cycle" in motor.params and motor.params["duty_cycle"].writeable


def test_pending_writes_are_seen_without_being_consumed(store: BufferStore) -> None:
    bridge_side = store.get_or_open(MOTOR)
    bridge_side.serve()
    motor = store.device(MOTOR)
    assert motor.pending_writes() == {}
    motor.write("duty_cycle", 0.5)
    assert motor.pending_writes() == {"duty_cycle": 0.5}
    assert motor.pending_writes() == {"duty_cycle": 0.5}  # looking twice changes nothing
    assert bridge_side.get_write() == {"duty_cycle": 0.5}  # the bridge still gets the command
    assert motor.pending_writes() == {}
    with pytest.raises(DeviceBufferError, match="finite"):
        motor.write("duty_cycle", math.nan)


def test_a_device_handle_closes_and_says_what_it_is(store: BufferStore) -> None:
    store.get_or_open(MOTOR).serve()
    with store.device(MOTOR) as motor:
        assert repr(motor) == f"<Device yogi-bear {motor.name!r} valid>"
        assert motor.last_update == 0.0
    assert repr(motor) == f"<Device yogi-bear {motor.name!r} closed>"
    with pytest.raises(DeviceBufferError, match="closed"):
        motor.get("enc_pos")
    pad = store.device(("gamepad", 2))
    assert pad.uid == 2 and pad.last_update is None and pad.valid

"""Errors a student can act on: names suggested, keys explained, catalog errors apart, one clamp warning."""

from __future__ import annotations

import ctypes
import math
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtime.catalog
from runtime import BufferStore, DeviceBufferError, Parameter, load_catalog
from runtime.buffer import Buffer, CatalogError
from runtime.exception import RuntimeBaseException, closest, did_you_mean
from runtime.tools import _common

MOTOR = 10 << 72 | 0x0A << 64 | 0xBEEF


@pytest.fixture
def store() -> Iterator[BufferStore]:
    with BufferStore(load_catalog(), shared=False) as store:
        yield store


def test_a_mistyped_parameter_name_gets_the_closest_names(store: BufferStore) -> None:
    motor = store.get_or_open(MOTOR)
    motor.serve()
    for call in (
        lambda: motor.write("duty_cyle", 0.5),
        lambda: motor.get("duty_cyle"),
        lambda: motor.set("duty_cyle", 0.5),
        lambda: motor.read(["duty_cyle"]),
    ):
        with pytest.raises(DeviceBufferError) as caught:
            call()
        assert caught.value.message == "no such parameter (did you mean 'duty_cycle'?)"
        assert caught.value.context["param"] == "duty_cyle"
    with pytest.raises(DeviceBufferError) as caught:
        motor.get("zzzz")
    assert caught.value.message == "no such parameter"  # nothing close: no guess


def test_unknown_keys_say_what_is_known_closest_first(store: BufferStore) -> None:
    with pytest.raises(KeyError) as caught:
        store.get_or_open(("yogi-bar", 1))
    text = str(caught.value)
    assert "no device type 'yogi-bar'" in text and "(did you mean 'yogi-bear'?)" in text
    assert text.index("known types: yogi-bear") > 0  # the closest first
    bad_uid = 999 << 72 | 1
    with pytest.raises(KeyError) as caught:
        store.get_or_open(bad_uid)
    text = str(caught.value)
    assert f"UID {bad_uid:#x} has device_id 999" in text and "yogi-bear (10)" in text
    with pytest.raises(KeyError, match="88-bit"):
        store.get_or_open(1 << 88)
    assert isinstance(caught.value, KeyError)  # the store is still a Mapping


def test_catalog_problems_raise_catalog_error_a_kind_of_device_buffer_error(tmp_path: Path) -> None:
    assert issubclass(CatalogError, DeviceBufferError) and issubclass(CatalogError, RuntimeBaseException)
    broken = tmp_path / "broken.yaml"
    broken.write_text("motor:\n  device_id: 3\n  parmas: []\n")
    with pytest.raises(CatalogError) as caught:
        runtime.catalog.load(broken)
    assert "(did you mean 'params'?)" in caught.value.message
    with pytest.raises(CatalogError, match="unknown key"):
        BufferStore.make_catalog({"motor": {"device_id": 3, "colour": "red"}})
    with pytest.raises(CatalogError, match="unknown parameter type"):
        Parameter.parse_ctype("int33")
    with pytest.raises(CatalogError, match="duplicate parameter name"):
        Buffer.make_type("twice", [Parameter("x", ctypes.c_int8, 0), Parameter("x", ctypes.c_int8, 1)])
    store = BufferStore(load_catalog(), shared=False)
    with pytest.raises(DeviceBufferError) as not_catalog:
        store.get_or_open(MOTOR).get("enc_pos")  # a buffer problem (not served): not a catalog one
    assert not isinstance(not_catalog.value, CatalogError)
    store.close()


def test_one_clamp_warning_class_and_wording_everywhere(store: BufferStore) -> None:
    param = Parameter("duty_cycle", ctypes.c_float, 0, lower=-1, upper=1)
    with pytest.warns(RuntimeWarning) as by_clamp:
        assert param.clamp(1.5) == 1
    motor = store.get_or_open(MOTOR)
    motor.serve()
    with pytest.warns(RuntimeWarning) as by_write:
        motor.write("duty_cycle", 1.5)
    expected = "parameter duty_cycle: 1.5 is out of bounds [{0}, {1}]; clamped to {1}"
    assert str(by_clamp[0].message) == expected.format(-1, 1)
    assert str(by_write[0].message) == expected.format(-1.0, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert param.clamp(0.5) == 0.5
    assert math.isclose(motor.pending_writes()["duty_cycle"], 1.0)


def test_one_did_you_mean_helper_for_the_library_and_the_tools() -> None:
    assert _common.suggest is did_you_mean
    assert runtime.catalog._suggest("parmas", ("params", "device_id")) == did_you_mean("parmas", ["params"])
    assert closest("yogi-bar", ["koala-bear", "yogi-bear", "yogi-bears"]) == ["yogi-bear", "yogi-bears"]
    assert closest(3, ["a"]) == [] and did_you_mean("zzz", ["gamepad"]) == ""

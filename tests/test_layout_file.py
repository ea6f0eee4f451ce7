"""docs/foxglove-layout.json: the Foxglove layout for ``runtime demo --seed 0 --foxglove``.

Every topic it names is one the demo serves (its default devices, with the
UIDs that seed gives, and the student code's log), every field one the
catalog gives that device type (readable: a value the topic carries); every
panel of the layout has its configuration. Opened as Foxglove would: plain JSON.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from runtime import catalog
from runtime.mcap import LOG_TOPIC, topic_of
from runtime.testing.demo import DEFAULT_DEVICES
from runtime.tools.demo import _choose_devices

ROOT = Path(__file__).resolve().parent.parent
LAYOUT = ROOT / "docs" / "foxglove-layout.json"
SEED = 0
"""The demo's ``--seed`` the layout is made for (README says so)."""
PATH = re.compile(r"^(/runtime/[a-z][a-z0-9-]*/0x[0-9a-f]+)(?:\.values\.([a-z_][a-z0-9_]*))?$")


def demo_topics() -> dict[str, str]:
    """The demo's topics with ``--seed 0``, to the device type each carries."""
    types = catalog.load()
    devices = _choose_devices(argparse.Namespace(types=[], seed=SEED), types)
    assert [device.type_name for device in devices] == list(DEFAULT_DEVICES)
    return {topic_of(device.type_name, device.uid): device.type_name for device in devices}


def panels(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    return panels(node["first"]) + panels(node["second"])


def message_paths(config: dict[str, Any]) -> list[str]:
    found = []
    for panel in config.values():
        found += [path["value"] for path in panel.get("paths", [])]
        found += [panel[key] for key in ("topicPath", "topicToRender") if key in panel]
    return found


def test_the_layout_names_only_topics_and_fields_of_the_demo() -> None:
    layout = json.loads(LAYOUT.read_text())
    config = layout["configById"]
    assert sorted(panels(layout["layout"])) == sorted(config)  # every panel shown has its configuration
    topics = demo_topics()
    types = catalog.load()
    plotted = set()
    paths = message_paths(config)
    assert paths
    for path in paths:
        if path == LOG_TOPIC:
            continue
        match = PATH.match(path)
        assert match, f"not a buffer topic or field of one: {path}"
        topic, field = match.groups()
        assert topic in topics, f"{path}: no such topic in 'runtime demo --seed {SEED}'"
        type_name = topics[topic]
        if field is not None:
            param = types[type_name].params.get(field)
            assert param is not None and param.readable, f"{path}: {type_name} has no readable {field}"
            plotted.add(type_name)
    assert plotted == set(DEFAULT_DEVICES)  # every device of the demo is in a plot
    assert LOG_TOPIC in paths
    assert any(name.startswith("Parameters!") for name in config)  # the writeable parameters, to set


def test_the_readme_points_to_the_layout() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/foxglove-layout.json" in readme and f"--seed {SEED}" in readme

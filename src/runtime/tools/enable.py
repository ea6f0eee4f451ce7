"""``runtime enable``: let the robot's actuators move again after ``runtime disable``.

The work is :meth:`BufferStore.enable() <runtime.store.BufferStore.enable>`:
the robot's state says enabled, and the marks of ``runtime disable`` come off
the buffers. Nothing moves by itself: every actuator keeps its safe value until
a process writes a new command.
"""

from __future__ import annotations

import argparse

from ._common import add_catalog_option, add_namespace_option, devices_text, switch_robot

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

DESCRIPTION = """\
Enable the robot again after 'runtime disable'.

Writes of actuators (a motor's duty_cycle, a servo) are accepted again. Nothing
moves by itself: every actuator keeps its safe value until a process (student
code, 'runtime buffers write') sends a new command.
"""

EPILOG = """\
examples:
  $ runtime enable
  $ runtime buffers list            # says: robot: enabled

The namespace is $RUNTIME_BUFFER_NAMESPACE (default "rt") unless --namespace
is given.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime enable``."""
    add_namespace_option(parser)
    add_catalog_option(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``runtime enable``."""
    namespace, was_enabled, marked = switch_robot(args, enable=True)
    already = "; it already was" if was_enabled else f"; {devices_text(len(marked))} released"
    print(f"robot enabled (namespace {namespace}{already}): nothing moves until a new command")
    return 0

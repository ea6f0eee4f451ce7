"""``runtime disable``: stop every actuator of the robot, and keep them stopped until ``runtime enable``.

The emergency stop of the command line. The work is
:meth:`BufferStore.disable() <runtime.store.BufferStore.disable>`: the
robot's state (in shared memory, ``<namespace>-robot-state``) says disabled,
every Smart Device buffer with actuators is marked so, and the bridge sends
those devices DEV_DISABLE and their safe values. Writes of actuators are
refused from then on, by any process; a device that connects later, or a
restarted bridge, finds the state and stays stopped.
"""

from __future__ import annotations

import argparse

from ._common import add_catalog_option, add_namespace_option, devices_text, switch_robot

__all__ = ["DESCRIPTION", "EPILOG", "add_arguments", "main"]

DESCRIPTION = """\
Disable the robot: every actuator stops and stays stopped until 'runtime enable'.

Every Smart Device of the namespace that has actuators (parameters with a safe
value in the catalog: a motor's duty_cycle, a servo) gets DEV_DISABLE and its
safe values from the bridge, and writes of those parameters are refused, by
every process, until the robot is enabled again. Configuration parameters
(PID gains, thresholds) keep their values. The state lives in shared memory:
devices that connect later, and a restarted bridge, find the robot disabled.
"""

EPILOG = """\
examples:
  $ runtime disable                 # stop everything now
  $ runtime buffers list            # says: robot: DISABLED (runtime enable to enable)
  $ runtime enable                  # let them move again (nothing moves until a new command)

The namespace is $RUNTIME_BUFFER_NAMESPACE (default "rt") unless --namespace
is given.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``runtime disable``."""
    add_namespace_option(parser)
    add_catalog_option(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``runtime disable``."""
    namespace, was_enabled, marked = switch_robot(args, enable=False)
    already = "" if was_enabled else "; it already was"
    stopped = f"{devices_text(len(marked))} stopped" if marked else "no devices to stop now"
    print(
        f"robot disabled (namespace {namespace}{already}): {stopped}; "
        "writes of actuators are refused until 'runtime enable'"
    )
    return 0

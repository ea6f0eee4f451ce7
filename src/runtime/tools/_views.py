"""How the commands show reports of buffers (:mod:`runtime.report`) with ``rich``.

:func:`list_table` is the one table of buffers of the tools (``runtime
buffers list`` and ``watch``, and ``runtime demo``'s live view), and
:func:`buffers_view` lays it out with the values for the terminal's width (an
80-column one gets the values under the table, whole ``name=value`` pairs);
:func:`namespace_view` puts it in a namespace's context (which namespaces have
buffers when this one has none, whether its robot is enabled) and
:func:`show_renderable` is the detailed view of one buffer (``runtime buffers
show``); :func:`demo_table` and :func:`print_demo_summary` show a running
demo (:class:`runtime.testing.demo.Demo`) and its summary. rich is imported
when a view is made, not with this module.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ..report import BufferReport, inspect_buffer, robot_line
from ..store import BufferStore
from ._common import empty_namespace_line, format_value, param_table

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table

    from ..testing.demo import Demo

__all__ = [
    "buffers_view",
    "demo_table",
    "list_table",
    "namespace_view",
    "pack_pairs",
    "param_notes",
    "print_demo_summary",
    "show_renderable",
]


def _age_text(report: BufferReport, now: float) -> str:
    age = report.age(now)
    if age is None:
        return "never" if report.smart and report.valid else "-"
    return f"{age:.1f} s" if age < 100 else f"{age:.0f} s"


def _state_string(report: BufferReport) -> str:
    return report.state() if report.error is None else f"error: {report.error}"


def _state_text(report: BufferReport) -> Any:
    from rich.text import Text

    state = report.state()
    style = {"valid": "green", "invalid": "yellow", "error": "red", "waiting": "dim"}[state]
    return Text(_state_string(report), style=style)


def _value_pairs(report: BufferReport, limit: int = 6) -> list[str]:
    """The ``name=value`` pairs of a report's values (at most ``limit``, then ``... (+N)``); ``-``: none."""
    if report.values is None:
        return ["-"]
    items = [f"{name}={format_value(value)}" for name, value in report.values.items()]
    return items[:limit] + ([f"... (+{len(items) - limit})"] if len(items) > limit else [])


def pack_pairs(pairs: Sequence[str], width: int, *, label: str = "", indent: int = 0) -> list[str]:
    """Lines of at most ``width`` characters holding ``pairs`` separated by ``, ``, never split inside one.

    The first line starts with ``label``, the next ones with ``indent`` spaces.
    A pair longer than a line has a line of its own (and is cut only there).

    >>> pack_pairs(["a=1", "bb=2.5", "c=true"], 12)
    ['a=1, bb=2.5,', 'c=true']
    """
    lines: list[str] = []
    line = label
    for index, pair in enumerate(pairs):
        text = pair + ("," if index < len(pairs) - 1 else "")
        gap = " " if index and line.strip() else ""
        if line.strip() and len(line) + len(gap) + len(text) > width:  # on the next line
            lines.append(line.rstrip())
            line, gap = " " * indent, ""
        line += gap + text
    lines.append(line)
    return lines


class _Pairs:
    """``name=value`` pairs folded to the width they are given, whole pairs to a line (a rich renderable)."""

    def __init__(self, pairs: Sequence[str], *, label: str = "", indent: int = 0) -> None:
        self.pairs = list(pairs)
        self.label = label
        self.indent = indent

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        widest = max([len(self.label), *(self.indent + len(pair) + 1 for pair in self.pairs)])
        whole = len(self.label) + sum(len(pair) + 2 for pair in self.pairs)
        return Measurement(min(widest, options.max_width), min(max(whole, widest), options.max_width))

    def __rich_console__(self, console: Any, options: Any) -> Any:
        from rich.text import Text

        for line in pack_pairs(self.pairs, options.max_width, label=self.label, indent=self.indent):
            yield Text(line, no_wrap=True, overflow="fold")


def _key_text(report: BufferReport, column: str) -> str:
    """The text of a key column (``type`` or ``uid``) of a report's row."""
    return report.type_name if column == "type" else f"{report.uid:#x}"


def list_table(
    reports: Sequence[BufferReport],
    *,
    values: bool = False,
    title: str | None = None,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> Table:
    """The table of buffers: one row per buffer with type, uid, state, last update (age).

    Args:
        values: Add a column with a short summary of the values.
        title: A line above the table.
        extra: More columns (name: one cell per report), after the last update
            (``runtime demo`` adds the bridge's message counters).
    """
    from rich import box
    from rich.table import Table

    now = time.time()
    extra = extra or {}
    table = Table(title=title, title_justify="left", box=box.SIMPLE, pad_edge=False)
    # Keys must stay whole (they are copied into 'show'): only the values column may fold.
    widths = {name: max([len(name), *(len(_key_text(r, name)) for r in reports)]) for name in ("type", "uid")}
    table.add_column("type", no_wrap=True, min_width=widths["type"])
    table.add_column("uid", no_wrap=True, min_width=widths["uid"])
    # A state is never cut: its column is at least as wide as its longest word.
    state_width = max([5, *(len(word) for report in reports for word in _state_string(report).split())])
    table.add_column("state", min_width=state_width, overflow="fold")
    table.add_column("last update", justify="right", no_wrap=True)
    for name in extra:
        table.add_column(name, justify="right", no_wrap=True)
    if values:
        table.add_column("values")
    for index, report in enumerate(reports):
        row: list[Any] = [report.type_name, f"{report.uid:#x}", _state_text(report), _age_text(report, now)]
        row += [cells[index] for cells in extra.values()]
        if values:
            row.append(_Pairs(_value_pairs(report)))
        table.add_row(*row)
    if not reports:
        table.add_row("(none)", *[""] * (len(table.columns) - 1))
    return table


VALUES_MIN_WIDTH = 40
"""The narrowest values column of the wide layout; on a narrower terminal values go under the table."""


class _BuffersView:
    """The table of buffers with their values, laid out for the width it is given (a rich renderable).

    Wide (the values column gets :data:`VALUES_MIN_WIDTH` or more): :func:`list_table`
    with values. Narrow (an 80-column terminal): the table without values, then
    each buffer's values under it, whole ``name=value`` pairs to a line.
    """

    def __init__(
        self, reports: Sequence[BufferReport], *, title: str | None, extra: Mapping[str, Sequence[str]] | None
    ) -> None:
        self.reports = list(reports)
        self.title = title
        self.extra = extra

    def wide(self, console: Any, options: Any) -> bool:
        """Whether the values fit in a column of the table."""
        from rich.measure import Measurement

        keys = list_table(self.reports, title=self.title, extra=self.extra)
        widest = Measurement.get(console, options, keys).maximum
        return bool(widest + 2 + VALUES_MIN_WIDTH <= options.max_width)

    def __rich_console__(self, console: Any, options: Any) -> Any:
        if self.wide(console, options) or not self.reports:
            yield list_table(self.reports, values=True, title=self.title, extra=self.extra)
            return
        yield list_table(self.reports, title=self.title, extra=self.extra)
        names = [report.type_name for report in self.reports]
        for report in self.reports:
            label = report.type_name
            if names.count(label) > 1:  # which one: the end of its uid
                label += f" ..{report.uid & 0xFFFF:04x}"
            yield _Pairs(_value_pairs(report), label=f"{label}: ", indent=4)


def buffers_view(
    reports: Sequence[BufferReport],
    *,
    title: str | None = None,
    extra: Mapping[str, Sequence[str]] | None = None,
) -> RenderableType:
    """The table of buffers with their values, for a live view: :func:`list_table` on a wide terminal;
    on a narrow one (80 columns) the values under the table, never split inside a ``name=value`` pair."""
    return _BuffersView(reports, title=title, extra=extra)


def namespace_view(
    reports: Sequence[BufferReport],
    *,
    values: bool = False,
    wrap: bool = True,
    robot: bool | None | Literal["omit"] = "omit",
    who: bool = False,
) -> RenderableType:
    """The table of the namespace's buffers; when it has none, and a line saying which namespaces do.

    Args:
        wrap: Fold that line to the console's width (on a terminal); else it
            stays one line (print it with ``crop=False``).
        robot: Whether the namespace's robot is enabled (None: unknown), for
            a ``robot: ...`` line under the table; ``"omit"``: no such line.
        who: Add who serves each buffer and who commands its actuators (``runtime buffers list``).
    """
    from rich.console import Group
    from rich.text import Text

    title = f"buffers in namespace {BufferStore.namespace()!r}"
    if values:  # a live view: when it was taken
        title += f" ({time.strftime('%H:%M:%S')})"
    extra = _who_columns(reports) if who else None
    table: RenderableType
    if values:  # a live view, laid out for the terminal's width
        table = buffers_view(reports, title=title, extra=extra)
    else:
        table = listed = list_table(reports, title=title, extra=extra)
        for column in listed.columns[4:] if who else ():  # who may fold: the keys stay whole
            column.no_wrap, column.overflow, column.justify = False, "fold", "left"
    parts: list[RenderableType] = [table]
    if not reports:
        parts.append(Text(empty_namespace_line(), no_wrap=not wrap, overflow="fold" if wrap else "ignore"))
    if robot != "omit":
        parts.append(_robot_text(robot))
    return parts[0] if len(parts) == 1 else Group(*parts)


def _who_columns(reports: Sequence[BufferReport]) -> dict[str, list[str]]:
    """``served by`` (``1234 runtime bridge``) and, when someone commands, ``commands`` (``pid: params``)."""

    def served(report: BufferReport) -> str:
        pid = report.producer_pid
        return (
            "-"
            if report.valid is None
            else "nobody"
            if pid is None
            else f"{pid} {report.programs.get(pid, '')}"
        )

    def commands(report: BufferReport) -> str:
        by_pid: dict[int, list[str]] = {}
        for name, pid in (report.commanders or {}).items():
            by_pid.setdefault(pid, []).append(name)
        return "; ".join(f"{pid}: {', '.join(names)}" for pid, names in by_pid.items()) or "-"

    columns = {"served by": [served(report).strip() for report in reports]}
    if any(report.commanders for report in reports):
        columns["commands"] = [commands(report) for report in reports]
    return columns


def _robot_text(enabled: bool | None) -> Any:
    from rich.text import Text

    return Text(robot_line(enabled), style="green" if enabled else "bold red")


def _commands_text(report: BufferReport) -> str | None:
    """``duty_cycle by pid 1234, ...``: who commands the buffer's actuators (None: it has none)."""
    if report.commanders is None:
        return None
    if not report.commanders:
        return "none (every actuator at its safe value)"
    return ", ".join(f"{name} by {report.program(pid)}" for name, pid in report.commanders.items())


def show_renderable(report: BufferReport, *, robot: bool | None | Literal["omit"] = "omit") -> RenderableType:
    """The ``show`` view: a summary of the buffer and a table of its parameters.

    Args:
        robot: As for :func:`namespace_view`: a ``robot: ...`` line, unless ``"omit"``.
    """
    from rich.console import Group
    from rich.text import Text

    now = time.time()
    lines = [
        Text(f"{report.key}  (segment {report.segment})"),
        Text.assemble("state: ", _state_text(report)),
    ]
    if robot != "omit":
        lines.append(_robot_text(robot))
    if report.valid is not None:
        lines.append(Text(f"served by: {report.program(report.producer_pid)}"))
    commands = _commands_text(report)
    if commands is not None:
        lines.append(Text(f"commands: {commands}"))
    if report.smart:
        ago = " ago" if report.age(now) is not None else ""
        lines.append(Text(f"last update: {_age_text(report, now)}{ago}"))
        if report.subscription and report.interval:
            subscribed = ", ".join(report.subscription)
            lines.append(Text(f"subscription: {subscribed} every {round(report.interval * 1000)} ms"))
        elif report.subscription is not None:
            lines.append(Text("subscription: none"))

    def value(param: Mapping[str, Any]) -> str:
        if not param["readable"]:
            return "(write-only)"
        return "(unavailable)" if report.values is None else format_value(param["value"])

    table = param_table(report.params, [value(param) for param in report.params])
    return Group(*lines, table, *param_notes(report.params))


def param_notes(params: Sequence[Mapping[str, Any]]) -> list[Any]:
    """``  v_batt (V): voltage of the whole battery``: a line per parameter with a unit or description."""
    from rich.text import Text

    notes = []
    for param in params:
        unit, description = param.get("unit"), param.get("description")
        if unit or description:
            name = f"{param['name']} ({unit})" if unit else param["name"]
            notes.append(Text(f"  {name}: {description or ''}".rstrip(": "), overflow="fold"))
    return notes


def demo_table(demo: Demo, duration: float | None = None) -> RenderableType:
    """``runtime demo``'s live table: the buffers command's table, plus the bridge's counters."""
    stats = demo.stats_by_uid()
    elapsed = time.monotonic() - demo.started
    limit = f" of {duration:g}" if duration else ""
    with BufferStore(demo.catalog) as store:
        reports = [inspect_buffer(store, device.type_name, device.uid) for device in demo.devices]
    names = ("messages_in", "messages_out", "errors")
    counters = []
    for device in demo.devices:
        entry = stats.get(device.uid, {})
        counters.append("/".join(str(entry.get(name, "-")) for name in names))
    return buffers_view(
        reports,
        extra={"in/out/err": counters},  # the bridge's message counters
        title=f"runtime demo: namespace {demo.namespace}, {elapsed:.0f}{limit} s (Ctrl-C to stop)",
    )


def print_demo_summary(summary: Mapping[str, Any], width: int | None = None) -> None:
    """Print a :meth:`~runtime.testing.demo.Demo.summary` as lines: per device, then the student code.

    Args:
        width: Fold the last values to this many columns, whole ``name=value``
            pairs to a line (None: the terminal's width on a terminal, else one line each).
    """
    if width is None and sys.stdout.isatty():
        width = shutil.get_terminal_size().columns
    print(
        f"runtime demo summary ({summary['seconds']:g} s, namespace {summary['namespace']}), from the bridge:"
    )
    for device in summary["devices"]:
        if not device["seen"]:
            print(f"{device['type']} {device['uid']}: never seen by the bridge")
            continue
        print(
            f"{device['type']} {device['uid']}: messages in {device['messages_in']}, "
            f"out {device['messages_out']}, errors {device['errors']}"
        )
        pairs = [f"{name}={format_value(value)}" for name, value in device["last_values"].items()] or ["-"]
        lines = pack_pairs(pairs, width or sys.maxsize, label="    last values: ", indent=8)
        print("\n".join(lines))
    student = summary["student_code"]
    if isinstance(student, dict):
        print(
            f"student code: {student.get('modes', 0)} modes, {student.get('cycles', 0)} main calls, "
            f"{student.get('overruns', 0)} overruns, {student.get('errors', 0)} errors, "
            f"{student.get('hung', 0)} hung"
        )

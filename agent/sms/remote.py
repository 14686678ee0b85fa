"""What SMS holds for a task (GET consistency-result), read leniently: bad items are shown.

The SDK types `result_list` as a list of strings, each a JSON object; older answers carry the
objects themselves. Either way every item that cannot be read as documented becomes a line in
`problems` that quotes it, instead of an exception or a silent gap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..model import COUNT_FIELDS, ConsistencyEntry


@dataclass(frozen=True)
class RemoteResult:
    """One item of GET consistency-result's `result_list`."""

    finished_time: int | None
    check_result: str | None
    entries: tuple[ConsistencyEntry, ...]
    raw: str | None = None  # a string item that was not a JSON object: shown as is
    problems: tuple[str, ...] = ()  # what could not be read as documented, quoting it


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return repr(text[:200] + ("..." if len(text) > 200 else ""))


def _whole(value: Any) -> int | None:
    """A count or time as SMS should send it: a whole number (an integral float passes)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _entries(value: Any) -> tuple[list[ConsistencyEntry], list[str]]:
    if isinstance(value, str):  # seen in the wild: the list itself sent as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            return [], [f"consistency_result is a string, not a list: {_quote(value)}"]
    if value is None:
        return [], []
    if not isinstance(value, list):
        return [], [f"consistency_result is not a list: {_quote(value)}"]
    entries: list[ConsistencyEntry] = []
    problems: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("dir_check"), str):
            problems.append(f"consistency_result[{index}] has no dir_check: {_quote(item)}")
            continue
        counts = {name: _whole(item.get(name)) for name in COUNT_FIELDS}
        bad = [f"{name} is {item.get(name)!r}" for name, n in counts.items() if n is None]
        if bad:
            problems.append(
                f"{item['dir_check']}: not whole numbers ({', '.join(bad)}): {_quote(item)}"
            )
            continue
        entries.append(ConsistencyEntry(dir_check=item["dir_check"], **counts))  # type: ignore[arg-type]
    return entries, problems


def _item(item: dict[str, Any]) -> RemoteResult:
    entries, problems = _entries(item.get("consistency_result"))
    finished = item.get("finished_time")
    finished_time = _whole(finished)
    if finished is not None and finished_time is None:
        problems.append(f"finished_time is not a whole number: {_quote(finished)}")
    check = item.get("check_result")
    return RemoteResult(
        finished_time=finished_time,
        check_result=None if check is None else str(check),
        entries=tuple(entries),
        problems=tuple(problems),
    )


def parse_result_list(data: Any) -> list[RemoteResult]:
    """`result_list` is documented both as objects and as strings: accept both."""
    items = data.get("result_list") if isinstance(data, dict) else None
    if items is not None and not isinstance(items, list):
        return [
            RemoteResult(None, None, (), problems=(f"result_list is not a list: {_quote(items)}",))
        ]
    out = []
    for item in items or []:
        if isinstance(item, str):
            try:
                decoded = json.loads(item)
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                out.append(RemoteResult(None, None, (), raw=item))
                continue
            item = decoded
        if isinstance(item, dict):
            out.append(_item(item))
        else:
            problem = f"an item of result_list is neither an object nor a string: {_quote(item)}"
            out.append(RemoteResult(None, None, (), problems=(problem,)))
    return out

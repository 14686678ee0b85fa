"""The model: the API's limits and field names, defined once, and the entry a result becomes."""

from __future__ import annotations

from dataclasses import fields

import pytest

from agent.errors import ValidationError
from agent.model import (
    COUNT_FIELDS,
    ENTRY_FIELDS,
    MAX_COUNT,
    ConsistencyEntry,
    DirCounts,
    DirResult,
    dir_check_problem,
    task_id_problem,
    validate_entry,
)

from .sms_helpers import entry


def test_the_five_field_names_are_the_entry_and_its_api_form() -> None:
    assert ENTRY_FIELDS == (
        "dir_check", "num_total_files", "num_different_files", "num_target_miss_files",
        "num_target_more_files")  # fmt: skip
    assert ENTRY_FIELDS[1:] == COUNT_FIELDS
    assert (
        tuple(entry().to_api()) == ENTRY_FIELDS == tuple(f.name for f in fields(ConsistencyEntry))
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry("/" + "a" * 1024), "1025 characters"),
        (entry(total=-1), "num_total_files is -1"),
        (entry(total=1_000_001), "num_total_files is 1000001"),
        (entry(num_target_more_files=True), "num_target_more_files is True"),
        (entry(num_different_files=1.5), "num_different_files is 1.5"),  # type: ignore[arg-type]
    ],
)
def test_validate_entry(bad: ConsistencyEntry, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_entry(bad)


@pytest.mark.parametrize("good", [entry("/" + "a" * 1023, total=MAX_COUNT), entry("/d", total=0)])
def test_validate_entry_accepts_limits(good: ConsistencyEntry) -> None:
    assert validate_entry(good) is None  # raises nothing


def test_limits_of_task_id_and_dir_check() -> None:
    assert task_id_problem("x" * 36) is None and task_id_problem("T") is None
    assert task_id_problem("") == "must be 1 to 36 characters, not 0"
    assert task_id_problem("x" * 37) == "must be 1 to 36 characters, not 37"
    assert dir_check_problem("/" + "a" * 1023) is None
    assert dir_check_problem("/" + "a" * 1024) == "is 1025 characters; SMS accepts at most 1024"


def test_a_result_becomes_an_entry_with_counts_clamped() -> None:
    counts = DirCounts(total=2_000_000, different=3, missing=1_000_001, more=1_000_000)
    result = DirResult("/srv", "/mnt/t/srv", counts, 1.0)
    assert result.entry() == ConsistencyEntry("/srv", 1_000_000, 3, 1_000_000, 1_000_000)
    assert result.clamped_fields() == ["num_total_files", "num_target_miss_files"]
    assert result.uploadable and not counts.consistent
    assert not DirResult("/srv", "/t", DirCounts(), 0.0, error="unreachable").uploadable

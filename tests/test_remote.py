"""Reading what SMS holds for a task (GET consistency-result): both documented shapes, and a
clear line for every item that cannot be read as documented."""

from __future__ import annotations

import json

import pytest

from agent.sms.remote import parse_result_list

from .sms_helpers import entry


def test_parse_result_list_accepts_objects_and_strings() -> None:
    obj = {
        "finished_time": 1700000000000,
        "check_result": "success",
        "consistency_result": [entry("/var", 5).to_api()],
    }
    as_objects = parse_result_list({"task_id": "T", "result_list": [obj]})
    as_strings = parse_result_list({"task_id": "T", "result_list": [json.dumps(obj)]})
    assert as_objects == as_strings
    assert as_objects[0].entries == (entry("/var", 5),)
    assert as_objects[0].finished_time == 1700000000000
    plain = parse_result_list({"result_list": ["all good"]})
    assert plain[0].raw == "all good" and plain[0].entries == ()
    assert parse_result_list({}) == []


@pytest.mark.parametrize(
    ("item", "problem"),
    [
        (
            {"consistency_result": [{**entry().to_api(), "num_total_files": "n/a"}]},
            "num_total_files is 'n/a'",
        ),
        (
            {"consistency_result": [{**entry().to_api(), "num_different_files": 1.5}]},
            "num_different_files is 1.5",
        ),
        (
            {"consistency_result": "not json"},
            "consistency_result is a string, not a list: 'not json'",
        ),
        ({"consistency_result": {"dir_check": "/var"}}, "consistency_result is not a list"),
        (
            {"consistency_result": [{"num_total_files": 1}]},
            "consistency_result[1] has no dir_check",
        ),
        ({"finished_time": "yesterday"}, "finished_time is not a whole number: 'yesterday'"),
        ({"finished_time": float("inf")}, "finished_time is not a whole number"),
    ],
)
def test_parse_result_list_shows_what_it_cannot_read(item: dict[str, object], problem: str) -> None:
    good = entry("/ok", 2).to_api()
    if isinstance(item.get("consistency_result"), list):
        item["consistency_result"] = [good, *item["consistency_result"]]  # type: ignore[misc]
    (parsed,) = parse_result_list({"result_list": [item]})
    assert any(problem in p for p in parsed.problems), parsed.problems
    if isinstance(item.get("consistency_result"), list):
        assert parsed.entries == (entry("/ok", 2),)  # the good entry beside it is kept


def test_parse_result_list_decodes_a_consistency_result_sent_as_a_json_string() -> None:
    item = {"finished_time": 1e22, "consistency_result": json.dumps([entry("/var", 4).to_api()])}
    (parsed,) = parse_result_list({"result_list": [json.dumps(item)]})
    assert parsed.entries == (entry("/var", 4),) and parsed.problems == ()
    assert parsed.finished_time == 10**22

"""The delivery service end to end: batching, every status, backoff, restarts and SIGKILL."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import AuthError, UploadError, ValidationError
from agent.model import DirCounts, DirResult
from agent.sms import delivery
from agent.sms.emulator import Emulator
from agent.sms.outbox import Outbox

from .sms_helpers import TOKEN, entry, kill_once_posting, make_config, results


def pending_of(state: Path) -> list[float]:
    with Outbox(state) as box:
        return [p.next_try for p in box.pending()]


# --- batching (pure) ---


@pytest.mark.parametrize(
    ("n", "sizes"),
    [(0, []), (1, [1]), (29, [29]), (30, [30]), (31, [30, 1]), (65, [30, 30, 5]), (90, [30] * 3)],
)
def test_batches_sizes(n: int, sizes: list[int]) -> None:
    entries = [entry(f"/d{i}") for i in range(n)]
    chunks = delivery.batches(entries)
    assert [len(c) for c in chunks] == sizes
    assert [e for c in chunks for e in c] == entries


def test_batches_never_repeat_a_directory() -> None:
    entries = [entry("/a", 1), entry("/b", 1), entry("/a", 2)] + [
        entry(f"/d{i}") for i in range(40)
    ]
    chunks = delivery.batches(entries)
    assert [len(c) for c in chunks] == [30, 12]
    assert chunks[0][0] == entry("/a", 2)  # the latest result, in the first place
    for chunk in chunks:
        dirs = [e.dir_check for e in chunk]
        assert len(dirs) == len(set(dirs))


# --- enqueue ---


def test_65_directories_post_30_30_5(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url)
    assert delivery.enqueue(config, results(65)).queued == 65
    report = delivery.flush(config)
    assert (report.delivered, report.requests, report.pending) == (65, 3, 0)
    assert [len(batch) for batch in emu.received] == [30, 30, 5]
    for batch in emu.received:
        assert len({e["dir_check"] for e in batch}) == len(batch)
    assert len(emu.results("T")) == 65
    assert delivery.flush(config).requests == 0  # nothing left: no empty POST
    status = delivery.status(config)
    assert {r.state for r in status.last_results} == {"delivered"}
    assert status.counts.pending == 0


def test_without_endpoint_nothing_is_queued(tmp_path: Path) -> None:
    config = make_config(tmp_path, None)
    report = delivery.enqueue(config, results(2))
    assert report.queued == 0 and "endpoint is not configured" in (report.reason or "")
    status = delivery.status(config)
    assert status.counts.pending == 0
    assert [r.state for r in status.last_results] == ["not-uploaded"] * 2


def test_unverified_directory_is_not_posted(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url)
    failed = DirResult("/broken", "/t/broken", DirCounts(), 0.0, error="target unreachable")
    report = delivery.enqueue(config, [*results(1), failed])
    assert report.queued == 1 and report.not_uploaded == ("/broken",)
    delivery.flush(config)
    assert [e["dir_check"] for e in emu.received[0]] == ["/d000"]
    states = {r.dir_check: r.state for r in delivery.status(config).last_results}
    assert states == {"/d000": "delivered", "/broken": "error"}


def test_enqueue_rejects_values_outside_limits(tmp_path: Path) -> None:
    config = make_config(tmp_path, "http://127.0.0.1:9")
    too_long = DirResult("/" + "a" * 1024, "/t", DirCounts(), 0.0)
    with pytest.raises(ValidationError, match="1025 characters"):
        delivery.enqueue(config, [too_long])
    huge = DirResult("/big", "/t", DirCounts(total=5_000_000, different=2_000_000), 0.0)
    assert delivery.enqueue(config, [huge]).queued == 1  # counts are clamped, not rejected
    with Outbox(tmp_path) as box:
        assert box.pending()[0].entry.num_total_files == 1_000_000


# --- each status ---


@pytest.mark.parametrize("status", [400, 404])
def test_permanent_errors_go_to_dead_letters_logged_once(
    emu: Emulator, tmp_path: Path, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, emu.url)
    delivery.enqueue(config, results(3))
    emu.fail_next(1, status=status, error_code="SMS.0205")
    with caplog.at_level(logging.INFO, logger="agent"):
        report = delivery.flush(config)
    assert (report.dead, report.pending, report.delivered) == (3, 0, 0)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "SMS.0205" in errors[0].getMessage()
    counts = delivery.status(config).counts
    assert counts.dead == 3 and "SMS.0205" in (counts.last_dead_error or "")
    assert delivery.flush(config).requests == 0


def test_403_is_logged_with_details_and_retried_slowly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Emulator(task_ids=["T"], token="another-token") as emu:
        config = make_config(tmp_path, emu.url, upload={"backoff_max": 300})
        delivery.enqueue(config, results(2))
        before = time.time()
        with caplog.at_level(logging.WARNING, logger="agent"):
            report = delivery.flush(config)
        assert report.pending == 2 and report.dead == 0
        assert all(t >= before + 300 for t in pending_of(tmp_path))
        text = caplog.text
        assert "403" in text and "SMS.9004" in text and "error_param: X-Auth-Token" in text
        assert delivery.flush(config).requests == 0  # waits; a restart does not stampede
        assert len(emu.requests) == 1


def test_401_static_token_stays_pending_and_file_is_reread(
    emu: Emulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("expired-token\n")
    config = make_config(
        tmp_path / "s", emu.url, auth={"token": None, "token_file": str(token_file)}
    )
    delivery.enqueue(config, results(2))
    emu.fail_next(1, status=401)
    with caplog.at_level(logging.WARNING, logger="agent"):
        report = delivery.flush(config)
    assert report.pending == 2 and "expired or invalid" in report.errors[0]
    assert "APIGW.0301" in caplog.text and str(token_file) in caplog.text
    assert len(emu.requests) == 1  # not retried in a loop
    token_file.write_text(TOKEN + "\n")  # the operator puts a fresh token
    assert delivery.flush(config, force=True).delivered == 2
    assert emu.requests[-1].headers["X-Auth-Token"] == TOKEN


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
def test_transient_errors_back_off(emu: Emulator, tmp_path: Path, status: int) -> None:
    config = make_config(tmp_path, emu.url, upload={"backoff_max": 60})
    delivery.enqueue(config, results(40))
    emu.fail_next(1, status=status)
    before = time.time()
    report = delivery.flush(config)
    assert report.pending == 40 and report.requests == 1  # the second batch waits too
    assert all(before <= t <= time.time() + 1 for t in pending_of(tmp_path))  # base 1 s


def test_retry_after_is_honoured(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url, upload={"backoff_max": 5})
    delivery.enqueue(config, results(1))
    emu.fail_next(1, status=503, retry_after=30)
    before = time.time()
    delivery.flush(config)
    assert pending_of(tmp_path)[0] >= before + 30


def test_redirect_is_not_followed_and_keeps_results(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url)
    delivery.enqueue(config, results(1))
    emu.fail_next(1, status=301)
    report = delivery.flush(config)
    assert report.pending == 1 and "redirect" in report.errors[0]
    assert len(emu.requests) == 1


def test_server_failing_20_times_then_recovering(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url, upload={"backoff_max": 0.02})
    delivery.enqueue(config, results(65))
    emu.fail_next(20, status=503)
    report = delivery.flush(config, deadline=time.time() + 20, rand=lambda: 1.0)
    assert report.delivered == 65 and report.pending == 0
    assert report.requests == 23 and len(report.errors) == 20
    assert len(emu.results("T")) == 65
    times = [s.at for s in emu.requests]
    gaps = [b - a for a, b in zip(times[:20], times[1:21])]
    assert min(gaps) >= 0.015  # a backoff between every two tries, never a tight loop


def test_flush_stops_promptly_on_stop_event(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url, upload={"backoff_max": 30})
    delivery.enqueue(config, results(1))
    emu.fail_next(100, status=503, retry_after=20)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    started = time.time()
    report = delivery.flush(config, stop_event=stop, deadline=time.time() + 60)
    assert time.time() - started < 3
    assert report.pending == 1


def test_old_entries_expire_to_dead_letters(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url, upload={"max_age": "7d"})
    delivery.enqueue(config, results(2))
    report = delivery.flush(config, clock=lambda: time.time() + 8 * 86400)
    assert report.dead == 2 and report.pending == 0
    assert emu.requests == []
    assert delivery.status(config).counts.last_dead_error.startswith("expired")  # type: ignore[union-attr]


# --- crash safety and secrets, in real processes ---

RUNNER = textwrap.dedent(
    """
    import logging, sys, time
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    from agent.sms import delivery
    from sms_helpers import make_config, results
    import json
    args = json.loads(sys.argv[1])
    config = make_config(**args["config"])
    if args.get("enqueue"):
        print(delivery.enqueue(config, results(args["enqueue"])), flush=True)
    report = delivery.flush(config, force=True)
    print(report, flush=True)
    print(delivery.status(config), flush=True)
    if args.get("remote"):
        try:
            print(delivery.remote_status(config))
        except Exception:
            import traceback; traceback.print_exc()
    """
)


def run_agent(config: dict, **args: object) -> subprocess.Popen[str]:
    import json

    payload = json.dumps({"config": config, **args}, default=str)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, payload],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkill_during_upload_then_restart_delivers_everything(
    emu: Emulator, tmp_path: Path
) -> None:
    emu.stall_next(1)  # the first POST hangs until the process dies
    state = tmp_path / "state"
    proc = run_agent(
        {"state_dir": state, "url": emu.url, "upload": {"read_timeout": 30}}, enqueue=65
    )
    kill_once_posting(emu, proc, timeout=15)
    proc.communicate(timeout=10)
    assert emu.received == []  # nothing acknowledged before the kill
    report = delivery.flush(make_config(state, emu.url), deadline=time.time() + 10)
    assert report.pending == 0
    assert len(emu.results("T")) == 65


def test_no_secret_in_any_output(tmp_path: Path) -> None:
    password, sk = "Iam-PASSWORD-77x", "SK-secret-99y"
    (tmp_path / "pw").write_text(password)
    (tmp_path / "sk").write_text(sk)
    with Emulator(
        task_ids=["T"], token=TOKEN, iam_users={"bob": password}, ak="AK9", sk="SK-other"
    ) as emu:
        iam = {"endpoint": emu.url, "domain": "d", "user": "bob", "password_file": tmp_path / "pw"}
        scenarios = [
            ({"auth": {"token": TOKEN}}, lambda: emu.fail_next(1, status=401)),
            ({"auth": {"token": TOKEN}}, lambda: emu.fail_next(1, status=403)),
            ({"auth": {"token": "WRONG-" + TOKEN}}, lambda: None),
            ({"auth": {"token": None, "iam": iam}}, emu.expire_tokens),
            ({"auth": {"token": None, "ak": "AK9", "sk_file": tmp_path / "sk"}}, lambda: None),
        ]
        outputs = []
        for index, (extra, fault) in enumerate(scenarios):
            fault()
            state = tmp_path / f"state{index}"
            proc = run_agent({"state_dir": state, "url": emu.url, **extra}, enqueue=3, remote=True)
            out, err = proc.communicate(timeout=30)
            outputs += [out, err, (state / "agent.db").read_bytes().decode("utf-8", "replace")]
            if index == 3:  # a second IAM run after expiry: renewal happens
                emu.expire_tokens()
                proc = run_agent({"state_dir": state, "url": emu.url, **extra}, enqueue=1)
                outputs += list(proc.communicate(timeout=30))
        issued = list(emu._state.iam_tokens)
    assert emu.logins >= 2 and issued
    text = "\n".join(outputs)
    if os.environ.get("SHOW_OUTPUT"):
        print(text)
    assert "delivered" in text and "APIGW.0301" in text  # the runs did something
    for secret in [TOKEN, password, sk, *issued]:
        assert secret not in text


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (UploadError("x"), "retry"),
        (UploadError("x", status=503), "retry"),
        (UploadError("x", status=400), "permanent"),
        (UploadError("x", status=404), "permanent"),
        (UploadError("x", status=403), "slow"),
        (AuthError("no token configured"), "slow"),
        (AuthError("IAM refused", status=400), "slow"),
        (AuthError("IAM down", status=503), "retry"),
        (ValidationError("token too long"), "slow"),
    ],
)
def test_classify_never_drops_results_over_credentials(
    exc: UploadError | ValidationError, expected: str
) -> None:
    assert delivery.classify(exc).value == expected


def test_missing_token_keeps_results_and_waits(emu: Emulator, tmp_path: Path) -> None:
    config = make_config(tmp_path, emu.url, auth={"token": None}, upload={"backoff_max": 120})
    delivery.enqueue(config, results(1))
    before = time.time()
    report = delivery.flush(config)
    assert report.pending == 1 and "no SMS token configured" in report.errors[0]
    assert pending_of(tmp_path)[0] >= before + 120
    assert emu.requests == []


@given(st.lists(st.tuples(st.sampled_from([f"/d{i}" for i in range(70)]), st.integers(0, 9))))
def test_batches_properties(pairs: list[tuple[str, int]]) -> None:
    items = [entry(d, total) for d, total in pairs]
    chunks = delivery.batches(items)
    flat = [e for chunk in chunks for e in chunk]
    assert all(1 <= len(chunk) <= 30 for chunk in chunks)
    assert len(flat) == len({e.dir_check for e in flat})  # each directory once, in one POST
    latest = {e.dir_check: e for e in items}
    assert {e.dir_check: e for e in flat} == latest  # the newest result of each

"""The textfile-collector file: parsed with prometheus_client's own parser, checked against
real verifications of real trees and a real outbox."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent import __version__
from agent.config import parse_config
from agent.errors import ConfigError, StateError
from agent.model import DirCounts, DirResult
from agent.service.metrics import Delivery, MetricsWriter, dir_label
from agent.sms import delivery
from agent.sms.emulator import Emulator
from agent.verify.runner import run_verification

from .conftest import smsagent_command, write_tree
from .sms_helpers import make_config


def parse(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}, via the official parser."""
    text = path.read_bytes().decode("utf-8")  # must be valid UTF-8, whatever the names
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def demo_pair(tmp_path: Path, name: str | bytes = "data") -> tuple[bytes, bytes]:
    """One identical, one different, two missing at the target, one extra at the target."""
    src = os.path.join(os.fsencode(tmp_path), b"src", os.fsencode(name))
    tgt = os.path.join(os.fsencode(tmp_path), b"tgt", os.fsencode(name))
    write_tree(src, {"same": "same", "changed": "old", "gone1": "1", "sub/gone2": "2"})
    write_tree(tgt, {"same": "same", "changed": "new", "extra": "e"})
    return src, tgt


def test_a_known_run_is_what_the_file_says(tmp_path: Path) -> None:
    src, tgt = demo_pair(tmp_path)
    config = make_config(
        tmp_path / "state", None,
        directories=[{"path": os.fsdecode(src), "target": os.fsdecode(tgt)}],
    )  # fmt: skip
    [result] = run_verification(config, config.directories)
    delivery.enqueue(make_config(tmp_path / "state", "http://127.0.0.1:9"), [result])
    textfile = tmp_path / "node" / "smsagent.prom"
    textfile.parent.mkdir()
    clock = iter([1000.0, 2000.0]).__next__
    writer = MetricsWriter(textfile, config.state_dir, clock=clock)
    writer.update([result])

    samples = parse(textfile)
    d = os.fsdecode(src)
    assert value(samples, "smsagent_directory_source_files", dir=d) == 4
    assert value(samples, "smsagent_directory_different_files", dir=d) == 1
    assert value(samples, "smsagent_directory_missing_files", dir=d) == 2
    assert value(samples, "smsagent_directory_extra_files", dir=d) == 1
    assert value(samples, "smsagent_directory_error_files", dir=d) == 0
    assert value(samples, "smsagent_directory_consistent", dir=d) == 0
    assert value(samples, "smsagent_directory_last_verification_failed", dir=d) == 0
    assert value(samples, "smsagent_directory_last_success_timestamp_seconds", dir=d) == 1000
    assert value(samples, "smsagent_directory_last_success_duration_seconds", dir=d) == (
        pytest.approx(result.elapsed)
    )
    # "changed" and "same" have equal sizes and are hashed: 3 + 4 bytes on each side.
    assert result.counts.bytes_hashed > 0
    hashed = value(samples, "smsagent_directory_hashed_bytes_total", dir=d)
    assert hashed == result.counts.bytes_hashed
    assert value(samples, "smsagent_directory_mode_info", dir=d, mode="content") == 1
    assert value(samples, "smsagent_build_info", version=__version__) == 1
    assert value(samples, "smsagent_outbox_pending_results") == 1
    assert value(samples, "smsagent_outbox_dead_letter_results") == 0
    queued_at = value(samples, "smsagent_outbox_oldest_pending_timestamp_seconds")
    assert abs(queued_at - os.stat(config.state_dir / "agent.db").st_mtime) < 60
    assert not any(name.startswith("smsagent_last_delivery") for name, _ in samples)
    # node_exporter runs as another user: the file must be readable by all.
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    assert [p.name for p in textfile.parent.iterdir()] == ["smsagent.prom"]  # no temp left

    # A second run adds to the byte counter; a delivery is recorded with its result.
    writer.update([result], Delivery(requests=1, delivered=1, ok=True))
    samples = parse(textfile)
    assert value(samples, "smsagent_directory_hashed_bytes_total", dir=d) == 2 * hashed
    assert value(samples, "smsagent_directory_last_success_timestamp_seconds", dir=d) == 2000
    assert value(samples, "smsagent_last_delivery_timestamp_seconds") == 2000
    assert value(samples, "smsagent_last_delivery_success") == 1
    assert value(samples, "smsagent_delivered_results_total") == 1


def test_a_failed_run_keeps_the_last_good_counts(tmp_path: Path) -> None:
    textfile = tmp_path / "m.prom"
    writer = MetricsWriter(textfile, tmp_path / "state", clock=lambda: 50.0)
    good = DirResult("/srv", "/mnt/srv", DirCounts(total=7, identical=7, bytes_hashed=10), 1.5)
    writer.update([good])
    failed = DirResult("/srv", "/mnt/srv", DirCounts(), 0.1, error="ssh://h: cannot connect")
    # A new writer, as a restarted service: the figures come from the state directory.
    MetricsWriter(textfile, tmp_path / "state", clock=lambda: 99.0).update([failed])
    samples = parse(textfile)
    assert value(samples, "smsagent_directory_last_verification_failed", dir="/srv") == 1
    assert value(samples, "smsagent_directory_source_files", dir="/srv") == 7
    assert value(samples, "smsagent_directory_consistent", dir="/srv") == 1
    assert value(samples, "smsagent_directory_last_success_timestamp_seconds", dir="/srv") == 50
    assert value(samples, "smsagent_directory_last_success_duration_seconds", dir="/srv") == 1.5


def test_the_mode_label_follows_the_last_run(tmp_path: Path) -> None:
    src, tgt = demo_pair(tmp_path)
    config = make_config(
        tmp_path / "state", None, mode="quick",
        directories=[{"path": os.fsdecode(src), "target": os.fsdecode(tgt)}],
    )  # fmt: skip
    [result] = run_verification(config, config.directories)
    assert result.mode == "quick"
    textfile = tmp_path / "m.prom"
    MetricsWriter(textfile, config.state_dir).update([result])
    samples = parse(textfile)
    d = os.fsdecode(src)
    assert value(samples, "smsagent_directory_mode_info", dir=d, mode="quick") == 1
    assert ("smsagent_directory_mode_info", (("dir", d), ("mode", "content"))) not in samples
    assert value(samples, "smsagent_directory_hashed_bytes_total", dir=d) == 0  # nothing read


def test_keep_drops_directories_no_longer_configured(tmp_path: Path) -> None:
    textfile = tmp_path / "m.prom"
    writer = MetricsWriter(textfile, tmp_path / "state")
    writer.update([DirResult(p, "/t" + p, DirCounts(total=1), 0.1) for p in ("/a", "/b")])
    writer.update(keep=["/b"])
    dirs = {dict(labels).get("dir") for _, labels in parse(textfile)}
    assert dirs == {None, "/b"}


@pytest.mark.parametrize(
    "name",
    [b'quo"te', b"back\\slash", b"new\nline", b"latin1-\xff\xfe", "ümlaut-日本".encode()],
)
def test_hostile_directory_names_stay_parseable_and_distinct(tmp_path: Path, name: bytes) -> None:
    src, tgt = demo_pair(tmp_path, name)
    config = make_config(
        tmp_path / "state", None,
        directories=[{"path": os.fsdecode(src), "target": os.fsdecode(tgt)}],
    )  # fmt: skip
    [result] = run_verification(config, config.directories)
    assert result.error is None
    textfile = tmp_path / "m.prom"
    MetricsWriter(textfile, config.state_dir).update([result])
    samples = parse(textfile)
    label = dir_label(result.dir_check)
    # The label is the directory as the table and JSON show it: valid UTF-8 kept as is,
    # a backslash doubled, a newline as \n and a byte that is not UTF-8 as \xHH.
    expected = {
        b'quo"te': 'quo"te', b"back\\slash": "back\\\\slash", b"new\nline": "new\\nline",
        b"latin1-\xff\xfe": "latin1-\\xff\\xfe", "ümlaut-日本".encode(): "ümlaut-日本",
    }[name]  # fmt: skip
    assert label.endswith("/" + expected)
    assert value(samples, "smsagent_directory_missing_files", dir=label) == 2


def test_an_unwritable_textfile_is_a_state_error_naming_it(tmp_path: Path) -> None:
    textfile = tmp_path / "no-such-dir" / "smsagent.prom"
    writer = MetricsWriter(textfile, tmp_path / "state")
    with pytest.raises(StateError, match=r"metrics.textfile .*no-such-dir/smsagent.prom"):
        writer.update([DirResult("/a", "/t/a", DirCounts(total=1), 0.1)])


def cli_config(tmp_path: Path, endpoint: str, token: str, textfile: Path) -> Path:
    src, tgt = demo_pair(tmp_path)
    (tmp_path / "token").write_text(token + "\n")
    (tmp_path / "token").chmod(0o600)
    config = tmp_path / "agent.yaml"
    config.write_text(
        json.dumps({
            "endpoint": endpoint, "task_id": "T", "state_dir": str(tmp_path / "state"),
            "auth": {"token_file": str(tmp_path / "token")},
            "directories": [{"path": os.fsdecode(src), "target": os.fsdecode(tgt)}],
            "upload": {"connect_timeout": 1, "read_timeout": 10, "backoff_max": "1s"},
            "metrics": {"textfile": str(textfile)},
        })
    )  # fmt: skip
    return config


def test_verify_and_flush_write_the_file(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    textfile = tmp_path / "m.prom"
    with Emulator(task_ids=["T"], token="RIGHT") as emu:
        config = cli_config(tmp_path, emu.url, "WRONG", textfile)
        before = time.time()
        done = run_cli("verify", "--config", str(config), "--json")
        assert done.returncode == 3, done.stderr  # the token is refused: queued
        doc = json.loads(done.stdout)["directories"][0]
        samples = parse(textfile)
        d = doc["dir_check"]
        assert (
            value(samples, "smsagent_directory_source_files", dir=d) == doc["num_total_files"] == 4
        )
        assert value(samples, "smsagent_directory_different_files", dir=d) == 1
        assert value(samples, "smsagent_directory_missing_files", dir=d) == 2
        assert value(samples, "smsagent_directory_extra_files", dir=d) == 1
        assert value(samples, "smsagent_directory_hashed_bytes_total", dir=d) == doc["bytes_hashed"]
        assert value(samples, "smsagent_directory_last_success_duration_seconds", dir=d) == (
            pytest.approx(doc["elapsed_seconds"], abs=0.001)
        )
        assert value(samples, "smsagent_outbox_pending_results") == 1
        assert value(samples, "smsagent_last_delivery_success") == 0
        assert value(samples, "smsagent_last_delivery_timestamp_seconds") >= before
        assert value(samples, "smsagent_delivered_results_total") == 0

        (tmp_path / "token").write_text("RIGHT\n")  # the operator fixes the token
        done = run_cli("flush", "--config", str(config))
        assert done.returncode == 0, done.stderr
        samples = parse(textfile)
        assert value(samples, "smsagent_outbox_pending_results") == 0
        assert value(samples, "smsagent_last_delivery_success") == 1
        assert value(samples, "smsagent_delivered_results_total") == 1
        assert value(samples, "smsagent_directory_different_files", dir=d) == 1  # still known
        assert len(emu.received) == 1


def test_an_unwritable_textfile_warns_and_verify_goes_on(
    tmp_path: Path, run_cli: Callable[..., Any]
) -> None:
    textfile = tmp_path / "missing-dir" / "m.prom"
    config = cli_config(tmp_path, "http://127.0.0.1:9", "T", textfile)
    done = run_cli("verify", "--config", str(config), "--no-upload")
    assert done.returncode == 1  # the differences, not the metrics
    assert f"smsagent: warning: metrics not written: metrics.textfile {textfile}: No such file" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr


def test_the_service_writes_the_file_at_start_and_after_each_cycle(tmp_path: Path) -> None:
    textfile = tmp_path / "m.prom"
    with Emulator(task_ids=["T"], token="RIGHT") as emu:
        config = cli_config(tmp_path, emu.url, "RIGHT", textfile)
        settings = json.loads(config.read_text())
        settings["schedule"] = {"interval": "1h", "jitter": 0}
        config.write_text(json.dumps(settings))
        agent = subprocess.Popen(
            [*smsagent_command(), "run", "--config", str(config)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            samples: dict = {}
            while time.monotonic() < deadline:
                if textfile.exists():
                    samples = parse(textfile)
                    if ("smsagent_delivered_results_total", ()) in samples:
                        break
                time.sleep(0.1)
            d = settings["directories"][0]["path"]
            assert value(samples, "smsagent_directory_missing_files", dir=d) == 2
            assert value(samples, "smsagent_delivered_results_total") == 1
            assert value(samples, "smsagent_last_delivery_success") == 1
            assert value(samples, "smsagent_outbox_pending_results") == 0
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=15)
        assert agent.returncode == 0, err.decode(errors="replace")
        assert b"metrics not written" not in err


def test_the_key_is_a_path_taken_from_the_config_folder() -> None:
    config = parse_config({"metrics": {"textfile": "m.prom"}}, base="/etc/smsagent")
    assert config.metrics.textfile == Path("/etc/smsagent/m.prom")
    assert parse_config({}).metrics.textfile is None
    with pytest.raises(ConfigError, match=r"metrics.textfile: must be a string"):
        parse_config({"metrics": {"textfile": ["a"]}})
    with pytest.raises(ConfigError, match=r"metrics.textfle.*did you mean"):
        parse_config({"metrics": {"textfle": "m.prom"}})

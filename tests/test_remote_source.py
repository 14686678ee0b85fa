"""A source reached over SSH, against the real loopback sshd: either side, or both, may be
remote, and the answers are those of an all-local run."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from agent.sms.emulator import Emulator

from .conftest import smsagent_command, write_tree
from .sshd import Sshd, keygen, sshd_server  # noqa: F401 - the `sshd` fixture
from .test_daemon import Agent, results_for, wait_for
from .test_ssh import (
    COUNT_KEYS,
    EXPECTED,
    RUN_TIMEOUT,
    build_scenario,
    counts,
    python_wrapper,
    run_verify,
)


@pytest.fixture(name="scenario")
def scenario_trees(tmp_path: Path) -> tuple[Path, Path]:
    """test_ssh's tree of every counting rule, as source and target."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_scenario(src, dst)
    return src, dst


@pytest.fixture(name="emulator")
def sms_emulator() -> Iterator[Emulator]:
    with Emulator(token="TOKEN") as emu:
        yield emu


def machine(sshd: Sshd) -> str:
    return f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"


def oldest_pyenv_python() -> str | None:
    """The oldest Python 3.6+ that pyenv built on this machine, if any."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = []
    for python in glob.glob(f"{root}/versions/3.*/bin/python3"):
        match = re.search(r"/versions/3\.(\d+)\.(\d+)/", python)
        if match and int(match.group(1)) >= 6:
            found.append(((int(match.group(1)), int(match.group(2))), python))
    return min(found)[1] if found else None


@pytest.mark.parametrize("remote", ["source", "target", "both"])
def test_either_side_or_both_remote_give_the_all_local_counts_and_report(
    sshd: Sshd, scenario: tuple[Path, Path], tmp_path: Path, remote: str
) -> None:
    src, dst = scenario
    local_report, remote_report = tmp_path / "local.report", tmp_path / "remote.report"
    local, local_doc, _ = run_verify(
        tmp_path, [{"path": str(src), "target": str(dst)}], None,
        "--no-cache", "--report", str(local_report),
    )  # fmt: skip
    directory = {"path": str(src), "target": str(dst)}
    if remote in ("source", "both"):
        directory["source"] = sshd.url(src)
    if remote in ("target", "both"):
        directory["target"] = sshd.url(dst)
    done, doc, _ = run_verify(
        tmp_path, [directory], sshd.ssh_section(python=sys.executable),
        "--no-cache", "--report", str(remote_report),
    )  # fmt: skip
    assert local.returncode == done.returncode == 1, done.stderr
    assert local_doc is not None and doc is not None
    assert counts(doc) == counts(local_doc)
    assert {k: doc["directories"][0][k] for k in EXPECTED} == EXPECTED
    assert doc["consistency_result"] == local_doc["consistency_result"]
    # dir_check is the directory's path on the source server, never the URL.
    assert doc["consistency_result"][0]["dir_check"] == str(src)
    assert doc["directories"][0]["source"] == directory.get("source", str(src))
    # The same lines, names that are not UTF-8 and symlinks included.
    lines = sorted(remote_report.read_text().splitlines())
    assert lines == sorted(local_report.read_text().splitlines())
    assert f"+ {src}/bad\\xff\\xfe-only-source" in lines
    assert f"* {src}/link-other" in lines and f"= {src}/link-same" in lines
    # Every machine that hashed is named, the remote source as such.
    hashing = doc["hashing"]
    if remote in ("source", "both"):
        assert {"source": machine(sshd), "hash_algorithm": "xxh3-128",
                "hash_via": "python-xxhash"} in hashing  # fmt: skip
    target = machine(sshd) if remote in ("target", "both") else "local"
    assert {"target": target, "hash_algorithm": "xxh3-128", "hash_via": "python-xxhash"} in hashing
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("host", ["oldest python", "no xxh3"])
def test_a_source_on_an_old_or_bare_python_gives_the_local_verdicts(
    sshd: Sshd, scenario: tuple[Path, Path], tmp_path: Path, host: str
) -> None:
    src, dst = scenario
    if host == "oldest python":
        python = oldest_pyenv_python()
        if python is None:
            pytest.skip("no pyenv-built Python 3.6 or later on this machine")
    else:
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        python = python_wrapper(tmp_path, "py-bare", path=str(empty), ctypes=False)
    local, local_doc, _ = run_verify(
        tmp_path, [{"path": str(src), "target": str(dst)}], None, "--no-cache"
    )
    done, doc, _ = run_verify(
        tmp_path, [{"path": str(src), "source": sshd.url(src), "target": str(dst)}],
        sshd.ssh_section(python=python), "--no-cache",
    )  # fmt: skip
    assert done.returncode == local.returncode == 1, done.stderr
    assert doc is not None and local_doc is not None
    # Neither has the xxhash module: the source hashes by another route and reads what it
    # reads in its own way (xxh128sum hashes small files later), never with other verdicts.
    keys = tuple(k for k in COUNT_KEYS if k not in ("files_hashed", "bytes_hashed"))
    assert counts(doc, keys) == counts(local_doc, keys)
    assert doc["consistency_result"] == local_doc["consistency_result"]
    [source] = [h for h in doc["hashing"] if "source" in h]
    assert source["source"] == machine(sshd) and source["hash_via"] != "python-xxhash"
    if host == "no xxh3":
        # The slower side decides: the local target follows the source to BLAKE2b.
        assert source["hash_via"] == "hashlib"
        assert doc["directories"][0]["hash_algorithm"] == "blake2b"
        assert {"target": "local", "hash_algorithm": "blake2b", "hash_via": "hashlib"} in doc[
            "hashing"
        ]
        assert "no xxh3 there" in done.stderr


def test_source_on_the_command_line_is_a_root_like_target(sshd: Sshd, tmp_path: Path) -> None:
    # From the migrated server itself: `--source ssh://root@old-server/ --target /`. Here the
    # target root is a folder, so the two trees differ in one file.
    old = tmp_path / "old"
    data = old / "srv" / "data#1 %41"
    write_tree(data, {"a.txt": "1", b"sub/\xe9": "2", "link": ("link", "a.txt")})
    write_tree(os.fsencode(tmp_path / "new") + os.fsencode(data), {
        "a.txt": "1", b"sub/\xe9": "2", "link": ("link", "a.txt"), "more": "3"})  # fmt: skip
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({"ssh": sshd.ssh_section(python=sys.executable)}))
    done = subprocess.run(
        [*smsagent_command(), "verify", "--config", str(config), "--no-upload", "--json",
         "--state-dir", str(tmp_path / "state"), "--dir", str(data),
         "--source", sshd.url("/"), "--target", str(tmp_path / "new")],
        capture_output=True, text=True, errors="surrogateescape", timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    entry = json.loads(done.stdout)["directories"][0]
    assert entry["error"] is None and entry["dir_check"] == str(data)
    assert (entry["num_total_files"], entry["num_identical_files"]) == (3, 3)
    assert entry["num_target_more_files"] == 1


def test_an_unreachable_source_names_the_side_and_host_and_is_never_posted(
    sshd: Sshd, tmp_path: Path
) -> None:
    wrong_key = tmp_path / "wrong_key"
    keygen(wrong_key)
    src, dst, other = tmp_path / "src", tmp_path / "dst", tmp_path / "other"
    for tree in (src, dst, other):
        write_tree(tree, {"a": "1"})
    directories = [
        {"path": str(src), "source": sshd.url(src), "target": str(dst)},
        {"path": str(src / "x"), "source": sshd.url(src / "x"), "target": str(dst)},
        {"path": str(other), "target": str(other)},  # a local pair still verified
    ]
    ssh = sshd.ssh_section(python=sys.executable, identity_file=str(wrong_key))
    done, doc, _ = run_verify(tmp_path, directories, ssh)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert doc is not None
    failed, again, local = doc["directories"]
    assert failed["error"].startswith(f"source {machine(sshd)}: authentication failed ("), failed
    assert again["error"] == failed["error"]  # not dialled twice in one run
    assert local["error"] is None
    assert [e["dir_check"] for e in doc["consistency_result"]] == [str(other)]


def test_the_daemon_verifies_a_remote_source_on_its_interval_inside_its_window(
    sshd: Sshd, tmp_path: Path, emulator: Emulator
) -> None:
    hour = time.localtime().tm_hour
    window = f"{hour:02d}:00-{(hour + 2) % 24:02d}:00"  # open now
    agent = Agent(tmp_path, emulator.url, ssh=sshd.ssh_section(python=sys.executable),
                  schedule={"interval": "2s", "jitter": 0, "window": window})  # fmt: skip
    agent.settings["directories"] = [
        {"path": str(agent.src), "source": sshd.url(agent.src), "target": str(agent.dst)}
    ]
    (agent.dst / "only-here").write_text("x")
    agent.write_config()
    agent.start()
    try:
        wait_for(lambda: len(results_for(emulator, agent.src)) >= 2, 30, "two intervals")
        code, took = agent.terminate()
    finally:
        agent.kill()
    assert results_for(emulator, agent.src)[0] == {
        "dir_check": str(agent.src),  # the path on the source server, not the URL
        "num_total_files": 2,
        "num_different_files": 0,
        "num_target_miss_files": 0,
        "num_target_more_files": 1,
    }
    assert code == 0 and took < 10, agent.log()
    assert "Traceback" not in agent.log()


def test_watching_a_remote_source_is_refused_with_a_clear_message(
    sshd: Sshd, tmp_path: Path
) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text(yaml.safe_dump({
        "source": sshd.url("/"), "target": "/mnt/new", "directories": ["/srv"],
        "state_dir": str(tmp_path / "state"), "schedule": {"watch": True},
    }))  # fmt: skip
    for command in (["run"], ["config", "check"]):
        done = subprocess.run(
            [*smsagent_command(), *command, "--config", str(config)],
            capture_output=True, text=True, timeout=RUN_TIMEOUT,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [
            f"smsagent: Config error: {config}: schedule.watch: cannot watch the remote source "
            f"{sshd.url('/')}: inotify sees only this machine's files; set schedule.watch: false "
            "(schedule.interval verifies it)"
        ]

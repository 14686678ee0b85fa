"""ssh:// targets against a real sshd on loopback: same answers as a local target, and each
way a session fails ends in one clear line, exit 2, no traceback and no hang."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.verify import helper

from .conftest import smsagent_command, write_tree
from .sshd import Sshd, free_port, keygen, sshd_server  # noqa: F401 - the `sshd` fixture

RUN_TIMEOUT = 60  # a run that takes longer than this has hung

# --- against the real sshd -----------------------------------------------------------------

# Every rule the engine has, in one tree: (source, target) contents per relative path.
SCENARIO: list[tuple[bytes | str, Any, Any]] = [
    ("same.txt", "hello\n", "hello\n"),
    ("empty", "", ""),
    ("same-size.txt", "aaaa", "bbbb"),
    ("other-size.txt", "a", "abc"),
    ("only-source.txt", "x", None),
    ("only-target.txt", None, "x"),
    (b"caf\xe9.txt", "latin-1 name", "latin-1 name"),
    (b"bad\xff\xfe-only-source", "x", None),
    (b"dir\xff/inside.txt", "same", "same"),
    (b"dir\xff/changed.txt", "one", "two"),
    ("new\nline.txt", "1234", "5678"),
    ("with space .txt", "same", "same"),
    (" leading", "same", "same"),
    ("link-same", ("link", "same.txt"), ("link", "same.txt")),
    ("link-other", ("link", "a"), ("link", "b")),
    ("link-vs-file", ("link", "same.txt"), "hello\n"),
    ("file-vs-dir", "x", None),
    ("file-vs-dir/in-target-dir.txt", None, "x"),
    ("dir-vs-file/in-source-dir.txt", "x", None),
    ("dir-vs-file", None, "x"),
    ("deep/a/b/c/only-source-1.txt", "x", None),
    ("deep/a/b/c/only-source-2.txt", "y", None),
    ("extra/x/y/only-target.txt", None, "z"),
    ("nested/ok/1.txt", "1", "1"),
    ("nested/ok/2.txt", "2", "22"),
    ("fifo", ("fifo",), None),
    ("big-same.bin", b"\x01" * 1_500_000, b"\x01" * 1_500_000),  # streamed, not one read
    ("big-last-byte.bin", b"\x02" * 1_500_000, b"\x02" * 1_499_999 + b"\x03"),
]
# Counted by hand from SCENARIO: a source file (or link) is counted once; a type mismatch
# is one different entry; a target-only file, also under a target-only or type-mismatched
# directory, is "more"; the FIFO is skipped.
EXPECTED = {
    "num_total_files": 23,
    "num_identical_files": 9,
    "num_different_files": 9,
    "num_target_miss_files": 5,
    "num_target_more_files": 4,
    "num_error_files": 0,
    "num_skipped_special": 1,
}


def build_scenario(src: Path, dst: Path) -> None:
    src_spec: dict[bytes | str, object] = {}
    dst_spec: dict[bytes | str, object] = {}
    for rel, on_src, on_dst in SCENARIO:
        if on_src is not None:
            src_spec[rel] = on_src
        if on_dst is not None:
            dst_spec[rel] = on_dst
    write_tree(src, src_spec)
    write_tree(dst, dst_spec)


def run_verify(
    tmp_path: Path, directories: list[dict[str, str]], ssh: dict[str, Any] | None, *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any] | None, float]:
    """`smsagent verify --json` as a subprocess; the JSON document (None if there is none)."""
    config: dict[str, Any] = {"directories": directories}
    if ssh is not None:
        config["ssh"] = ssh
    config_file = tmp_path / f"agent-{time.monotonic_ns()}.yaml"
    config_file.write_text(yaml.safe_dump(config))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
    started = time.monotonic()
    done = subprocess.run(
        [*smsagent_command(), "verify", "--config", str(config_file), "--no-upload",
         "--state-dir", str(tmp_path / "state"), "--json", *extra],
        capture_output=True, text=True, errors="surrogateescape", env=environ,
        timeout=RUN_TIMEOUT, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    document = json.loads(done.stdout) if done.stdout.strip() else None
    return done, document, elapsed


COUNT_KEYS = (*EXPECTED, "files_hashed", "bytes_hashed", "error", "error_samples", "dir_check")


def counts(document: dict[str, Any], keys: tuple[str, ...] = COUNT_KEYS) -> list[dict[str, Any]]:
    return [{k: d[k] for k in keys} for d in document["directories"]]


def python_wrapper(folder: Path, name: str, *, path: str | None, ctypes: bool = True) -> str:
    """A python3 for ssh.python that cannot import xxhash (-S: no site-packages), that sees
    only `path` as PATH when given (to hide xxh128sum), and without ctypes when `ctypes` is
    False (as a Python built without libffi), which hides libxxhash from it."""
    script = folder / name
    env = f"PATH={path} " if path is not None else ""
    flags = "-I -S"
    if not ctypes:
        shadow = folder / f"{name}-no-ctypes" / "ctypes"
        shadow.mkdir(parents=True)
        (shadow / "__init__.py").write_text("raise ImportError('no ctypes on this host')\n")
        env += f"PYTHONPATH={shadow.parent} "
        flags = "-S"  # -I would ignore PYTHONPATH
    script.write_text(f'#!/bin/sh\n{env}exec "{sys.executable}" {flags} "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def scenario(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_scenario(src, dst)
    return src, dst


@pytest.mark.parametrize("via", ["python-xxhash", "libxxhash", "xxh128sum", "hashlib"])
def test_ssh_target_gives_the_same_counts_and_report_as_a_local_one(
    sshd: Sshd, scenario: tuple[Path, Path], tmp_path: Path, via: str
) -> None:
    src, dst = scenario
    if via == "python-xxhash":
        python = sys.executable  # the agent's own Python has xxhash
    elif via == "libxxhash":
        if helper.LibXxhash.load() is None:
            pytest.skip("no libxxhash.so.0 (Debian package libxxhash0)")
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        # A bare target: the system python3, no xxhash module, no xxh128sum on PATH.
        python = python_wrapper(tmp_path, "py-bare", path=str(empty))
    elif via == "xxh128sum":
        if shutil.which("xxh128sum") is None:
            pytest.skip("no xxh128sum program (Debian package xxhash)")
        python = python_wrapper(tmp_path, "py-no-xxhash", path=None, ctypes=False)
    else:
        empty = tmp_path / "empty-bin"
        empty.mkdir()
        python = python_wrapper(tmp_path, "py-bare", path=str(empty), ctypes=False)
    algorithm = "blake2b" if via == "hashlib" else "xxh3-128"

    local_report, ssh_report = tmp_path / "local.report", tmp_path / "ssh.report"
    local, local_doc, _ = run_verify(
        tmp_path, [{"path": str(src), "target": str(dst)}], None,
        "--no-cache", "--report", str(local_report),
    )  # fmt: skip
    remote, ssh_doc, _ = run_verify(
        tmp_path, [{"path": str(src), "target": sshd.url(dst)}], sshd.ssh_section(python=python),
        "--no-cache", "--report", str(ssh_report),
    )  # fmt: skip
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert local_doc is not None and ssh_doc is not None
    keys = COUNT_KEYS
    if via == "xxh128sum":
        # One program run per file would be slow, so that target reads no small file during
        # its scan: what each side read differs from a local run, never the verdicts.
        keys = tuple(k for k in COUNT_KEYS if k not in ("files_hashed", "bytes_hashed"))
    assert counts(ssh_doc, keys) == counts(local_doc, keys)
    assert {k: ssh_doc["directories"][0][k] for k in EXPECTED} == EXPECTED
    assert ssh_doc["consistency_result"] == local_doc["consistency_result"]
    # The per-file report is the same set of lines (their order follows reply timing).
    local_lines = sorted(local_report.read_text().splitlines())
    assert sorted(ssh_report.read_text().splitlines()) == local_lines
    assert f"+ {src}/bad\\xff\\xfe-only-source" in local_lines
    assert f"* {src}/new\\nline.txt" in local_lines
    assert f"- {src}/extra/x/y/only-target.txt" in local_lines
    # Which algorithm, and how, is said for the target in the JSON.
    machine = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    assert ssh_doc["hashing"] == [{"target": machine, "hash_algorithm": algorithm, "hash_via": via}]
    assert ssh_doc["directories"][0]["hash_via"] == via
    assert "Traceback" not in remote.stderr


@pytest.mark.parametrize("remote", ["target", "source"])
def test_an_ssh_side_is_not_read_again_on_a_warm_run(
    sshd: Sshd, tmp_path: Path, remote: str
) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    spec = {f"d{i}/f{j}": f"content {i} {j}" * 10 for i in range(3) for j in range(20)}
    write_tree(src, spec)
    write_tree(dst, spec)
    for tree in (src, dst):  # old enough for the cache (the racy window)
        for path in tree.rglob("f*"):
            os.utime(path, (1_600_000_000, 1_600_000_000))
    time.sleep(2.1)  # ctime too
    directory = {"path": str(src), "target": str(dst)}
    directory[remote] = sshd.url(src if remote == "source" else dst)
    ssh = sshd.ssh_section(python=sys.executable)
    runs = [run_verify(tmp_path, [directory], ssh)[1] for _ in range(2)]
    first, second = (doc["directories"][0] for doc in runs if doc is not None)
    assert first["num_identical_files"] == second["num_identical_files"] == 60
    assert first["files_hashed"] == 120 and first["cache_hits"] == 0
    assert second["files_hashed"] == 0 and second["cache_hits"] == 120
    # The host is part of a row's key: the remote side's rows never mix with this machine's.
    with sqlite3.connect(tmp_path / "state" / "hashcache.db") as db:
        scopes = {scope for (scope,) in db.execute("SELECT DISTINCT scope FROM digest_rows")}
    assert scopes == {f"ssh://{sshd.user}@127.0.0.1:{sshd.port}", "local"}
    # A change on the remote side, size and mtime kept, is seen through its ctime.
    changed = (src if remote == "source" else dst) / "d1" / "f7"
    changed.write_text(changed.read_text().upper())
    os.utime(changed, (1_600_000_000, 1_600_000_000))
    third = run_verify(tmp_path, [directory], ssh)[1]
    assert third is not None
    assert third["directories"][0]["num_different_files"] == 1
    assert third["directories"][0]["files_hashed"] == 1


def test_human_output_says_how_the_target_hashed(
    sshd: Sshd, scenario: tuple[Path, Path], tmp_path: Path
) -> None:
    src, dst = scenario
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    config = tmp_path / "agent.yaml"
    python = python_wrapper(tmp_path, "py-bare", path=str(empty), ctypes=False)
    config.write_text(yaml.safe_dump({
        "directories": [{"path": str(src), "target": sshd.url(dst)}],
        "ssh": sshd.ssh_section(python=python),
    }))  # fmt: skip
    done = subprocess.run(
        [*smsagent_command(), "verify", "--config", str(config), "--no-upload",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    machine = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    assert (
        f"hashing on {machine}: blake2b via hashlib "
        "(fallback: no xxh3 there: no xxhash module, libxxhash or xxh128sum)"
    ) in done.stdout.splitlines()
    assert "both sides hash with blake2b" in done.stderr  # the warning


def test_a_global_ssh_root_maps_each_directory_under_it(sshd: Sshd, tmp_path: Path) -> None:
    # /x/src on the source <-> ROOT/x/src on the target, as for a local root; the source path
    # holds URL syntax and a byte that is not UTF-8, given on the command line.
    src = os.fsencode(tmp_path) + b"/data#1 %41?\xff/src"
    root = tmp_path / "mirror"
    write_tree(src, {"a.txt": "1", b"sub/\xe9": "2"})
    write_tree(os.fsencode(root) + src, {"a.txt": "1", b"sub/\xe9": "2", "more": "3"})
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump({"ssh": sshd.ssh_section(python=sys.executable)}))
    done = subprocess.run(
        [*smsagent_command(), "verify", "--config", str(config_file), "--no-upload",
         "--state-dir", str(tmp_path / "state"), "--json",
         "--dir", os.fsdecode(src), "--target", sshd.url(root)],
        capture_output=True, text=True, errors="surrogateescape", timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    entry = json.loads(done.stdout)["directories"][0]
    assert entry["error"] is None
    counted = (
        entry["num_total_files"],
        entry["num_identical_files"],
        entry["num_target_more_files"],
    )
    assert counted == (2, 2, 1)


def _failure_cases(sshd: Sshd, tmp_path: Path) -> dict[str, tuple[str, dict[str, Any], str]]:
    """name -> (target port, ssh section, expected words in the error)."""
    wrong_key = tmp_path / "wrong_key"
    keygen(wrong_key)
    empty_known = tmp_path / "empty_known_hosts"
    empty_known.write_text("")
    good = sshd.ssh_section(python=sys.executable)
    chatty = tmp_path / "chatty-python"  # as if a login script printed a banner on stdout
    chatty.write_text(f'#!/bin/sh\necho "Welcome to db1"\nexec "{sys.executable}" "$@"\n')
    chatty.chmod(0o755)
    unknown_host = dict(good)
    unknown_host["options"] = [
        f"UserKnownHostsFile={empty_known}",
        "GlobalKnownHostsFile=/dev/null",
        "StrictHostKeyChecking=yes",
    ]
    return {
        "unknown host key": (str(sshd.port), unknown_host, "host key verification failed"),
        "wrong key": (str(sshd.port), dict(good, identity_file=str(wrong_key)),
                      "authentication failed (root@127.0.0.1: Permission denied (publickey))"
                      if sshd.user == "root" else "Permission denied (publickey)"),
        "closed port": (str(free_port()), good, "cannot connect (connect to host 127.0.0.1 port"),
        "no python": (str(sshd.port), dict(good, python="/nonexistent/python3"),
                      "/nonexistent/python3 is not found on the target"),
        "chatty login": (str(sshd.port), dict(good, python=str(chatty)),
                         "unexpected output instead of the helper's first answer: 'Welcome to db1'"),
    }  # fmt: skip


@pytest.mark.parametrize(
    "case", ["unknown host key", "wrong key", "closed port", "no python", "chatty login"]
)
def test_a_session_that_cannot_start_is_one_clear_line_and_exit_2(
    sshd: Sshd, tmp_path: Path, case: str
) -> None:
    port, ssh, words = _failure_cases(sshd, tmp_path)[case]
    src, dst = tmp_path / "src", tmp_path / "dst"
    other_src, other_dst = tmp_path / "src2", tmp_path / "dst2"
    write_tree(src, {"a": "1"})
    write_tree(dst, {"a": "1"})
    write_tree(other_src, {"b": "2"})
    write_tree(other_dst, {"b": "2"})
    url = f"ssh://{sshd.user}@127.0.0.1:{port}{dst}"
    directories = [
        {"path": str(src), "target": url},
        {"path": str(src / "missing-on-purpose"), "target": url + "/x"},  # same machine
        {"path": str(other_src), "target": str(other_dst)},  # a local target still verified
    ]
    done, document, elapsed = run_verify(tmp_path, directories, ssh)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert document is not None
    failed, again, local = document["directories"]
    machine = f"ssh://{sshd.user}@127.0.0.1:{port}"
    assert failed["error"].startswith(f"{machine}: ")
    assert words in failed["error"]
    assert "\n" not in failed["error"]
    assert again["error"] == failed["error"]  # the machine is not dialled twice in one run
    assert local["error"] is None and local["num_identical_files"] == 1
    # Only what was verified would be posted.
    assert document["consistency_result"] == [
        {"dir_check": str(other_src), "num_total_files": 1, "num_different_files": 0,
         "num_target_miss_files": 0, "num_target_more_files": 0}
    ]  # fmt: skip
    assert elapsed < 30


def test_a_port_where_nothing_speaks_ssh_fails_within_the_connect_timeout(
    sshd: Sshd, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    write_tree(src, {"a": "1"})
    with socket.socket() as silent:  # accepts the connection, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(5)
        port = silent.getsockname()[1]
        url = f"ssh://{sshd.user}@127.0.0.1:{port}{tmp_path / 'dst'}"
        ssh = sshd.ssh_section(python=sys.executable, connect_timeout=1)
        done, document, elapsed = run_verify(tmp_path, [{"path": str(src), "target": url}], ssh)
    assert done.returncode == 2
    assert document is not None
    assert "no SSH server answered" in document["directories"][0]["error"]
    assert elapsed < 15


def _remote_helper(sshd: Sshd, deadline: float, before: set[int]) -> int:
    """The pid of the helper the server started for this run (a descendant of the listener
    that was not there `before`: an earlier test may have left a frozen session behind)."""
    while time.monotonic() < deadline:
        for pid in sshd.children():
            if pid in before:
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"smsagent-helper" in f.read():
                        return pid
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("the helper never started on the target")


@pytest.mark.parametrize(
    ("remote", "victim"),
    [("target", "helper"), ("target", "session"), ("target", "frozen"), ("source", "helper")],
)
def test_a_host_lost_mid_run_is_an_error_and_the_other_directories_go_on(
    sshd: Sshd, tmp_path: Path, remote: str, victim: str
) -> None:
    # Enough data, read slowly (limits.read_mb_per_s), that the kill lands mid-run.
    big = {f"d{i}/f{j}": os.urandom(20_000) for i in range(20) for j in range(10)}
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, big)
    write_tree(dst, big)
    other_src, other_dst = tmp_path / "src2", tmp_path / "dst2"
    write_tree(other_src, {"b": "2", "c/d": "3"})
    write_tree(other_dst, {"b": "2", "c/d": "3"})
    lost_directory = {"path": str(src), "target": str(dst)}
    lost_directory[remote] = sshd.url(src if remote == "source" else dst)
    config = {
        "directories": [lost_directory, {"path": str(other_src), "target": str(other_dst)}],
        "ssh": sshd.ssh_section(python=sys.executable),
        "limits": {"read_mb_per_s": 1},
    }
    # ssh.options come first, so they override the agent's keepalive defaults (15 s x 4).
    config["ssh"]["options"] += ["ServerAliveInterval=1", "ServerAliveCountMax=2"]
    expected = {
        "helper": f"the session ended without a word: the helper on the {remote} was killed",
        "session": "connection closed by the target",
        "frozen": "the target stopped answering keepalives",
    }
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(config))
    before = set(sshd.children())
    process = subprocess.Popen(
        [*smsagent_command(), "verify", "--config", str(config_file), "--no-upload",
         "--no-cache", "--state-dir", str(tmp_path / "state"), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        helper = _remote_helper(sshd, time.monotonic() + 20, before)
        time.sleep(0.5)  # let it list and start hashing
        if victim == "helper":
            os.kill(helper, signal.SIGKILL)
        else:
            # The server's process for this connection: killed, the TCP session is torn
            # down; stopped, the host looks frozen and only keepalives can tell.
            session = [pid for pid in sshd.children() if pid not in before]
            os.kill(min(session), signal.SIGKILL if victim == "session" else signal.SIGSTOP)
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 2, err
    assert "Traceback" not in err
    document = json.loads(out)
    lost, local = document["directories"]
    machine = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    # A source is named as such; a target keeps the host alone, as it always has.
    named = f"source {machine}: " if remote == "source" else f"{machine}: "
    assert lost["error"] and lost["error"].startswith(named), lost
    assert expected[victim] in lost["error"]
    assert "\n" not in lost["error"]
    assert local["error"] is None
    assert (local["num_total_files"], local["num_identical_files"]) == (2, 2)
    # The lost directory is kept local: it is not posted as if it were consistent.
    assert [e["dir_check"] for e in document["consistency_result"]] == [str(other_src)]
    assert document["consistent"] is False

"""Tests for benchmarks/bench.py: its name decoding and parsers against real rsync and rclone."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Tuple

import pytest

from .conftest import smsagent_command
from .sshd import Sshd, sshd_server  # noqa: F401 - the `sshd` fixture

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"
_spec = importlib.util.spec_from_file_location("bench", BENCH_PATH)
assert _spec and _spec.loader
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench"] = bench  # dataclasses look their module up by name
_spec.loader.exec_module(bench)

# The script is loaded by path, so mypy cannot see its types here.
Awkward = Tuple[Path, Path, Any]

needs_rsync = pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync not installed")
needs_rclone = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone not installed")


@pytest.mark.parametrize(
    ("printed", "name"),
    [
        (b"plain.txt", b"plain.txt"),
        (b"with space", b"with space"),
        (b"new\\#012line", b"new\nline"),
        (b"bad\\#377\\#376", b"bad\xff\xfe"),
        (b"back\\slash", b"back\\slash"),  # a lone backslash is not escaped
        (b"lit\\#134#012", b"lit\\#012"),  # ...unless a `#ooo` follows it
        (b"short\\#01", b"short\\#01"),
        (b"not\\#089", b"not\\#089"),  # 8 and 9 are not octal
    ],
)
def test_decode_rsync_name(printed: bytes, name: bytes) -> None:
    assert bench.decode_rsync_name(printed) == name


@pytest.mark.parametrize(
    ("printed", "name"),
    [
        ("plain.txt", b"plain.txt"),
        ("new\u240aline", b"new\nline"),
        ("tab\u2409", b"tab\t"),
        ("del\u2421", b"del\x7f"),
        ("real\u201b\u240apicture", "real\u240apicture".encode()),
        ("quote\u201b\u201bx", "quote\u201bx".encode()),
        ("caf\u00e9", "caf\u00e9".encode()),
    ],
)
def test_decode_rclone_name(printed: str, name: bytes) -> None:
    assert bench.decode_rclone_name(printed.encode()) == name


@pytest.mark.parametrize(
    ("printed", "name"),
    [
        (b"plain.txt", b"plain.txt"),
        (b"new\\nline\\t\\r", b"new\nline\t\r"),
        (b"back\\\\slash", b"back\\slash"),
        (b"bad\\xff\\xfe", b"bad\xff\xfe"),
        (b"bell\\x07", b"bell\x07"),
        (b"sep\\u2028", "sep\u2028".encode()),
        ("caf\u00e9".encode(), "caf\u00e9".encode()),
    ],
)
def test_decode_agent_name(printed: bytes, name: bytes) -> None:
    assert bench.decode_agent_name(printed) == name


def test_parse_agent_report_strips_the_directory() -> None:
    lines = [b"= /src/a", b"* /src/sub/b\\nc", b"+ /src/m", b"- /src/x"]
    got = bench.parse_agent_report(lines, "/src")
    assert got == bench.Answer(frozenset({b"sub/b\nc"}), frozenset({b"m"}), frozenset({b"x"}))
    with pytest.raises(bench.BenchError, match="outside /src"):
        bench.parse_agent_report([b"* /other/a"], "/src")
    with pytest.raises(bench.BenchError, match="could not check 1 path"):
        bench.parse_agent_report([b"! /src/a\tPermission denied"], "/src")


def test_decode_rclone_name_keeps_invalid_utf8_bytes() -> None:
    assert bench.decode_rclone_name(b"bad\xff\xfename") == b"bad\xff\xfename"


def test_parse_rsync_kinds() -> None:
    lines = [
        b"*deleting   gone/",
        b"*deleting   gone/f",
        b">fcsT...... grown",
        b">fc.T...... same size",
        b">f+++++++++ new",
        b"cd+++++++++ newdir/",
        b"cLc.T...... link",
        b"cL+++++++++ newlink",
        b".d..t...... sub/",
    ]
    got = bench.parse_rsync(lines)
    assert got == bench.Answer(
        different=frozenset({b"grown", b"same size", b"link"}),
        missing=frozenset({b"new", b"newlink"}),
        extra=frozenset({b"gone/f"}),
    )


def test_parse_rsync_rejects_unknown_lines() -> None:
    with pytest.raises(bench.BenchError, match="does not understand"):
        bench.parse_rsync([b'skipping non-regular file "x"'])


def test_parse_combined_kinds_and_errors() -> None:
    lines = [b"= same", b"* diff", b"+ miss", b"- more"]
    got = bench.parse_rclone(lines)
    assert got == bench.Answer(frozenset({b"diff"}), frozenset({b"miss"}), frozenset({b"more"}))
    with pytest.raises(bench.BenchError, match="could not check 1 path"):
        bench.parse_rclone([b"! broken"])
    with pytest.raises(bench.BenchError, match="does not understand"):
        bench.parse_agent_report([b"? odd"], "/src")


def test_answer_problem_names_what_is_wrong() -> None:
    truth = bench.Truth(3, bench.Answer(frozenset({b"a"}), frozenset({b"b"}), frozenset()))
    assert bench.answer_problem("rsync", truth.answer, truth) is None
    wrong = bench.Answer(frozenset({b"a", b"c"}), frozenset(), frozenset())
    message = bench.answer_problem("rsync", wrong, truth)
    assert message is not None
    assert "different: 2 reported, 1 expected" in message
    assert "'c'" in message
    assert "missing: 0 reported, 1 expected" in message


def test_agent_counts_problem() -> None:
    truth = bench.Truth(5, bench.Answer(frozenset({b"a"}), frozenset(), frozenset({b"x", b"y"})))
    entry = {
        "dir_check": "/src",
        "num_total_files": 5,
        "num_different_files": 1,
        "num_target_miss_files": 0,
        "num_target_more_files": 2,
    }
    good = json.dumps({"consistency_result": [entry]}).encode()
    assert bench.agent_counts_problem(good, truth) is None
    bad = json.dumps({"consistency_result": [{**entry, "num_total_files": 4}]}).encode()
    assert "num_total_files=4 (expected 5)" in str(bench.agent_counts_problem(bad, truth))
    assert "no consistency_result" in str(bench.agent_counts_problem(b"{}", truth))


def test_rotations_put_rclone_first_and_alternate_the_rest() -> None:
    names = ["agent", "rsync", "rclone"]
    tools = [bench.Invocation(n, [], frozenset(), lambda _p: bench.Answer()) for n in names]
    orders = [[i.tool for i in order] for order in bench.rotations(tools, 4)]
    assert orders == [["rclone", "agent", "rsync"], ["rclone", "rsync", "agent"]] * 2
    # Over SSH there is no rclone: the two alternate.
    orders = [[i.tool for i in order] for order in bench.rotations(tools[:2], 2)]
    assert orders == [["agent", "rsync"], ["rsync", "agent"]]


def test_parse_cases() -> None:
    assert bench.parse_cases("1,4") == ("1", "4a", "4b")
    assert bench.parse_cases("5,5L,5R,6") == ("5", "5L", "5R", "6")
    with pytest.raises(Exception, match="no case '7'; the cases are 1, 2, 3, 4, 5, 5L, 5R, 6"):
        bench.parse_cases("7")


def test_the_relay_delays_each_way_and_keeps_every_byte() -> None:
    server = socket.create_server(("127.0.0.1", 0))

    def echo() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 16):
                conn.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    relay = bench.Relay(server.getsockname()[:2], 0.015)
    try:
        with socket.create_connection(("127.0.0.1", relay.port)) as client:
            payload = os.urandom(1 << 20)
            started = time.monotonic()
            client.sendall(b"x")
            assert client.recv(1) == b"x"
            assert time.monotonic() - started >= 0.030  # 15 ms there and 15 ms back
            sender = threading.Thread(target=client.sendall, args=(payload,))
            sender.start()
            got = b""
            while len(got) < len(payload):
                got += client.recv(1 << 16)
            sender.join()
            assert got == payload
    finally:
        relay.close()
        server.close()


# Names both peers print unambiguously. Not here: a name holding rclone's quote `‛`, which
# rclone 1.60 reports as an error (`! `), and symlinks, which rclone skips.
AWKWARD = [
    b"with space.txt",
    b" leading space",
    b"trailing space ",
    b"new\nline",
    b"tab\there",
    b"bad\xff\xfename",
    b"back\\slash",
    b"lit\\#012",
    b"caf\xc3\xa9",
    "picture\u240a".encode(),
    b"a -> b",
]


def _write(path: bytes, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture
def awkward_tree(tmp_path: Path) -> Awkward:
    """src and dst where every awkward name is once different, missing and extra."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for side in (src, dst):
        (side / "sub").mkdir(parents=True)
        _write(os.fsencode(side / "same"), b"same")
    different: set[bytes] = set()
    missing: set[bytes] = set()
    extra: set[bytes] = set()
    for name in AWKWARD:
        rel = b"sub/d-" + name
        _write(os.fsencode(src) + b"/" + rel, b"abc")
        _write(os.fsencode(dst) + b"/" + rel, b"abd" if len(different) % 2 else b"abcd")
        different.add(rel)
        _write(os.fsencode(src) + b"/m-" + name, b"only in src")
        missing.add(b"m-" + name)
        _write(os.fsencode(dst) + b"/sub/x-" + name, b"only in dst")
        extra.add(b"sub/x-" + name)
    return src, dst, bench.Answer(frozenset(different), frozenset(missing), frozenset(extra))


def _run(argv: list[str], env: dict[str, str] | None = None) -> list[bytes]:
    done = subprocess.run(argv, capture_output=True, env={**os.environ, **(env or {})})
    assert done.returncode in (0, 1), done.stderr.decode(errors="replace")
    return done.stdout.splitlines()


@needs_rsync
def test_rsync_parser_on_real_awkward_names(awkward_tree: Awkward) -> None:
    src, dst, want = awkward_tree
    tree = bench.Tree(src, dst, bench.Truth(0, want))
    inv = bench.rsync_invocation(tree, None)
    assert bench.parse_rsync(_run(inv.argv, inv.env)) == want


@needs_rsync
def test_rsync_reports_a_changed_symlink(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    os.symlink("one", src / "link")
    os.symlink("two", dst / "link")
    os.symlink("x", src / "new link")
    inv = bench.rsync_invocation(bench.Tree(src, dst, bench.Truth(0, bench.Answer())), None)
    got = bench.parse_rsync(_run(inv.argv, inv.env))
    assert got == bench.Answer(frozenset({b"link"}), frozenset({b"new link"}), frozenset())


@needs_rclone
def test_rclone_parser_on_real_awkward_names(awkward_tree: Awkward) -> None:
    src, dst, want = awkward_tree
    inv = bench.rclone_invocation(bench.Tree(src, dst, bench.Truth(0, want)))
    assert bench.parse_rclone(_run(inv.argv)) == want


def test_agent_parser_on_real_awkward_names(awkward_tree: Awkward, tmp_path: Path) -> None:
    src, dst, want = awkward_tree
    opts = bench.Options(
        workdir=tmp_path / "work",
        repeat=1,
        scale=1,
        seed=1,
        cases=("1",),
        agent_cmd=smsagent_command()[0],
        workers=None,
        only_peers=False,
        ssh_target="",
        markdown=None,
    )
    (tmp_path / "work" / "runs").mkdir(parents=True)
    inv = bench.agent_invocation(bench.CASES[0], bench.Tree(src, dst, bench.Truth(0, want)), opts)
    _run(inv.argv)
    assert inv.read_answer(tmp_path / "unused") == want


@needs_rclone
def test_rclone_cannot_check_a_name_with_its_quote_character(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    for side in (src, dst):
        side.mkdir()
        (side / "q\u201bx").write_bytes(side.name.encode())
    inv = bench.rclone_invocation(bench.Tree(src, dst, bench.Truth(0, bench.Answer())))
    with pytest.raises(bench.BenchError, match="rclone could not check 1 path"):
        bench.parse_rclone(_run(inv.argv))


@pytest.mark.parametrize("kind", ["small", "big", "tiny", "pair", "onedir"])
def test_generated_trees_are_reproducible_and_plain_ascii(tmp_path: Path, kind: str) -> None:
    logs: list[str] = []
    one = bench.prepare_tree(tmp_path / "a", kind, 0.0005, 7, logs.append)
    two = bench.prepare_tree(tmp_path / "b", kind, 0.0005, 7, logs.append)
    assert one.truth == two.truth
    for name in [*one.truth.answer.different, *one.truth.answer.missing, *one.truth.answer.extra]:
        assert name.isascii() and b" " not in name
    again = bench.prepare_tree(tmp_path / "a", kind, 0.0005, 7, logs.append)
    assert again.truth == one.truth
    assert any("reusing" in line for line in logs)


# An agent stand-in with the real agent's command line, config, report and JSON shapes, so the
# agent's whole path through the script is exercised before the real engine exists.
FAKE_AGENT = r"""
import json, os, sys
args = sys.argv[1:]
config = json.load(open(args[args.index("--config") + 1]))
report = args[args.index("--report") + 1]
d = config["directories"][0]
def files(root):
    out = {}
    for base, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(base, n)
            out[os.path.relpath(p, root)] = open(p, "rb").read()
    return out
src, dst = files(d["path"]), files(d["target"])
lines, counts = [], [0, 0, 0]
for name in sorted(src.keys() | dst.keys()):
    if name not in dst: mark, i = "+", 1
    elif name not in src: mark, i = "-", 2
    elif src[name] != dst[name]: mark, i = "*", 0
    else: mark, i = "=", None
    if i is not None: counts[i] += 1
    lines.append(f"{mark} {d['path']}/{name}\n")
open(report, "w").writelines(lines)
print(json.dumps({"consistency_result": [{"dir_check": d["path"], "num_total_files": len(src),
    "num_different_files": counts[0], "num_target_miss_files": counts[1],
    "num_target_more_files": counts[2]}]}))
sys.exit(1 if any(counts) else 0)
"""

# One that never notices a changed file: the script must refuse its times.
LAZY_AGENT = FAKE_AGENT.replace('mark, i = "*", 0', 'mark, i = "=", None')
assert LAZY_AGENT != FAKE_AGENT


@needs_rsync
@needs_rclone
def test_whole_script_with_a_stand_in_agent(tmp_path: Path) -> None:
    agent = tmp_path / "fake-agent"
    agent.write_text(f"#!{sys.executable}\n{FAKE_AGENT}")
    agent.chmod(0o755)
    markdown = tmp_path / "results.md"
    argv = [
        sys.executable,
        str(BENCH_PATH),
        "--workdir",
        str(tmp_path / "work"),
        "--scale",
        "0.0005",
        "--repeat",
        "1",
        "--cases",
        "1,2,3,4",
        "--agent-cmd",
        str(agent),
        "--markdown",
        str(markdown),
    ]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    text = markdown.read_text()
    for row in ("| 1 |", "| 2 |", "| 3 |", "| 4a |", "| 4b |"):
        assert any(line.startswith(row) and "| agent |" in line for line in text.splitlines())
    assert "ABORTED" not in text
    config = json.loads((tmp_path / "work" / "runs" / "case1-agent.yaml").read_text())
    assert config["directories"][0]["target"].endswith("/trees/small/dst")


@needs_rsync
@needs_rclone
def test_a_wrong_agent_aborts_its_case(tmp_path: Path) -> None:
    agent = tmp_path / "lazy-agent"
    agent.write_text(f"#!{sys.executable}\n{LAZY_AGENT}")
    agent.chmod(0o755)
    argv = [
        sys.executable,
        str(BENCH_PATH),
        "--workdir",
        str(tmp_path / "work"),
        "--scale",
        "0.0005",
        "--repeat",
        "1",
        "--cases",
        "2",
        "--agent-cmd",
        str(agent),
    ]
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 1
    assert "ABORTED" in done.stdout
    assert "agent found different differences" in done.stdout


@needs_rsync
def test_case_6_sums_the_rss_of_every_process(tmp_path: Path) -> None:
    agent = tmp_path / "fake-agent"
    # It lingers, so the 0.1 s samples see it whole, not only the process just spawned.
    agent.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(0.5)\n{FAKE_AGENT}")
    agent.chmod(0o755)
    argv = [sys.executable, str(BENCH_PATH), "--workdir", str(tmp_path / "work"),
            "--scale", "0.0001", "--repeat", "1", "--cases", "6", "--agent-cmd", str(agent)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "| 6 | empty files in ONE directory, 10 missing | 100 files | agent |" in done.stdout
    assert "| rclone |" not in done.stdout
    # The launcher's own RSS is not in the sum; a Python stand-in takes some MB of its own.
    sums = re.search(r"median of the peaks\): agent (\d+) MB, rsync (\d+) MB", done.stdout)
    assert sums and int(sums[1]) > 5, done.stdout
    assert re.search(r"\| 6 \| agent all processes' RSS ≤ 150 MB \| \d+ MB \| pass \|", done.stdout)


@needs_rsync
def test_ssh_cases_on_a_bare_target_and_through_the_relay(sshd: Sshd, tmp_path: Path) -> None:
    # Every ssh the script and the agent run is the wrapper on PATH, which reaches the test's
    # sshd; the host key is checked under an alias, so the relay's port passes too.
    client = tmp_path / "ssh_config"
    client.write_text(
        f"Host 127.0.0.1\n  Port {sshd.port}\n  IdentityFile {sshd.identity}\n"
        f"  IdentitiesOnly yes\n  UserKnownHostsFile {tmp_path / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n  HostKeyAlias benchhost\n"
    )
    key = sshd.known_hosts.read_text().split()[1:3]
    (tmp_path / "known_hosts").write_text(f"benchhost {key[0]} {key[1]}\n")
    wrapper = tmp_path / "bin" / "ssh"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {client} "$@"\n')
    wrapper.chmod(0o755)
    empty = tmp_path / "empty"
    empty.mkdir()
    bare = tmp_path / "bare-python"  # the agent's Python without site-packages or PATH
    bare.write_text(f'#!/bin/sh\nPATH={empty} exec "{sys.executable}" -I -S "$@"\n')
    bare.chmod(0o755)
    argv = [sys.executable, str(BENCH_PATH), "--workdir", str(tmp_path / "work"),
            "--scale", "0.0005", "--repeat", "1", "--cases", "5,5R",
            "--agent-cmd", smsagent_command()[0], "--ssh-python", str(bare),
            "--ssh-port", str(sshd.port)]  # fmt: skip
    env = {**os.environ, "PATH": f"{wrapper.parent}:{os.environ['PATH']}"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ABORTED" not in done.stdout and "skipped" not in done.stdout, done.stdout
    for case in ("5", "5R"):
        assert f"- Case {case}: the target hashed with xxh3-128 via libxxhash" in done.stdout
    assert re.search(
        r"- Case 5R: through a relay on 127.0.0.1:\d+ that holds every chunk 15 ms", done.stdout
    )

"""The helper on real files: what a file that vanishes or changes while read counts as."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from agent import helper
from agent.channel import Channel, bootstrap_command, call


def listed(folder: Path) -> dict[str, list]:
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    return {e[0]: e for e in worker.list_dir(os.fsencode(folder).decode("latin-1"))}


def hash_named(folder: Path, entries: list[list]) -> tuple[list, dict]:
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    digests, errors, _stats, _total = worker.hash_files(
        os.fsencode(folder).decode("latin-1"),
        [e[0] for e in entries], [e[2] for e in entries], [e[3] for e in entries], False,
    )  # fmt: skip
    return digests, errors


def test_vanished_and_changed_files_are_errors(tmp_path: Path) -> None:
    for name in ("gone", "grown", "same"):
        (tmp_path / name).write_text("0123456789")
    entries = listed(tmp_path)
    os.unlink(tmp_path / "gone")
    with open(tmp_path / "grown", "a") as handle:
        handle.write("more")
    digests, errors = hash_named(tmp_path, [entries["gone"], entries["grown"], entries["same"]])
    assert errors == {"0": "vanished before it was read", "1": "changed during verification"}
    assert digests[0] is None and digests[1] is None and digests[2] is not None


def test_file_replaced_by_fifo_does_not_hang(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("data")
    entries = listed(tmp_path)
    os.unlink(tmp_path / "f")
    os.mkfifo(tmp_path / "f")
    _, errors = hash_named(tmp_path, [entries["f"]])
    assert errors == {"0": "is no longer a regular file"}


def test_large_file_streams_to_the_same_digest(tmp_path: Path) -> None:
    import xxhash

    data = os.urandom(3 * helper.CHUNK + 17)
    (tmp_path / "big").write_bytes(data)
    digests, errors = hash_named(tmp_path, [listed(tmp_path)["big"]])
    assert not errors and digests[0] == xxhash.xxh3_128_hexdigest(data)


def test_blake2b_when_asked(tmp_path: Path) -> None:
    import hashlib

    (tmp_path / "x").write_bytes(b"abc")
    worker = helper.Worker()
    reply = worker.hello({"algorithms": ["blake2b"]})
    assert reply["algorithm"] == "blake2b"
    digests, *_ = worker.hash_files(os.fsencode(tmp_path).decode("latin-1"), ["x"], [3],
                                    [listed(tmp_path)["x"][3]], False)  # fmt: skip
    assert digests == [hashlib.blake2b(b"abc", digest_size=16).hexdigest()]


def test_protocol_round_trip_with_binary_names(tmp_path: Path) -> None:
    name = b"n\xff\nx"
    (tmp_path / os.fsdecode(name)).write_bytes(b"payload")
    channel = Channel(bootstrap_command(sys.executable), "test")
    try:
        hello = call(channel, "hello", {"algorithms": ["xxh3-128"]}, timeout=30)
        assert hello["algorithm"] == "xxh3-128" and hello["via"] == "python-xxhash"
        entries = call(channel, "list", os.fsencode(tmp_path).decode("latin-1"), timeout=30)
        assert [e[0].encode("latin-1") for e in entries] == [name]
        assert entries[0][1] == "f" and entries[0][2] == 7
    finally:
        channel.close()
    assert channel.process.returncode == 0


def test_helper_source_runs_on_plain_python_without_the_package(tmp_path: Path) -> None:
    # The helper is sent to target hosts: it must not import anything of `agent`.
    code = Path(helper.__file__).read_text()
    assert "from agent" not in code and "import agent" not in code and "from ." not in code
    done = subprocess.run([sys.executable, "-I", "-c", code], input=b"", capture_output=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr

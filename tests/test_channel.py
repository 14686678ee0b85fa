"""A real helper process behind a Channel: frames both ways, the count of requests it owes,
and one line that says why it stopped."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from agent.errors import TargetError
from agent.verify import channel
from agent.verify.channel import Channel, bootstrap_command, call, explain_exit, wait_for_replies
from agent.verify.compare import Entry, Kind
from agent.verify.wire import DirScan, ScanFailure, entries_of, scans_of


def test_protocol_round_trip_with_binary_names(tmp_path: Path) -> None:
    import xxhash

    name = b"n\xff\nx"
    (tmp_path / os.fsdecode(name)).write_bytes(b"payload")
    channel = Channel(bootstrap_command(sys.executable), "test")
    try:
        hello = call(channel, "hello", {"algorithms": ["xxh3-128"]}, timeout=30)
        assert hello["algorithm"] == "xxh3-128" and hello["via"] == "python-xxhash"
        folder = os.fsencode(tmp_path).decode("latin-1")
        # One request scans a batch of directories; this one names the folder and a
        # directory that does not exist, which fails alone.
        ident = channel.send("scan", [[folder, {"hash": True}], [folder + "/none", {}]],
                             attach=[b"", b""])  # fmt: skip
        replies = []
        while not replies:
            replies = wait_for_replies([channel], 5.0)
        reply = replies[0]
        assert (reply.error, reply.ident) == (None, ident)
        summaries, listing, row, *missing = reply.values
        assert summaries[0]["complete"] is True
        assert summaries[1] == {"error": "No such file or directory", "gone": True}
        assert missing == [b"", b""]
        assert isinstance(listing, bytes) and isinstance(row, bytes)  # the attachments
        entries = json.loads(listing)
        assert [e[0].encode("latin-1") for e in entries] == [name]
        assert entries[0][1:] == ["f", 7, xxhash.xxh3_128_hexdigest(b"payload")]
        # Decoded, as the engine reads it.
        found, failed = scans_of(reply, 2)
        assert isinstance(found, DirScan) and found.complete
        assert failed == ScanFailure("No such file or directory", gone=True)
        [entry] = entries_of(found.listing)
        assert entry == Entry(name.decode("latin-1"), Kind.FILE, 7, entries[0][3])
    finally:
        channel.close()
    assert channel.process.returncode == 0


def test_the_channel_alone_counts_what_it_is_owed(tmp_path: Path) -> None:
    channel = Channel(bootstrap_command(sys.executable), "test")
    try:
        call(channel, "hello", {"algorithms": ["blake2b"]}, timeout=30)
        assert channel.outstanding == 0
        folder = os.fsencode(tmp_path).decode("latin-1")
        idents = {channel.send("stat", folder) for _ in range(3)}
        assert channel.outstanding == 3
        answered = set()
        while len(answered) < 3:
            for reply in wait_for_replies([channel], 5.0):
                answered.add(reply.ident)
        assert answered == idents and channel.outstanding == 0
    finally:
        channel.close()


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("import sys; sys.stderr.write('first\\nboom\\n'); sys.exit(3)", "test: boom"),
        ("import sys; sys.exit(4)", "test: helper exited with status 4"),
        # A login script's greeting where the first frame should be.
        ("import sys, time; sys.stdout.write('Welcome to host\\n' * 9999); sys.stdout.flush(); "
         "time.sleep(30)",
         "test: unexpected output instead of the helper's first answer: 'Welcome to host'"),
    ],
)  # fmt: skip
def test_a_helper_that_stops_is_one_line(script: str, message: str) -> None:
    channel = Channel([sys.executable, "-c", script], "test")
    try:
        with pytest.raises(TargetError) as failure:
            call(channel, "hello", {}, timeout=30)
        assert str(failure.value).startswith(message) and "\n" not in str(failure.value)
    finally:
        channel.close(grace=0.1)


def test_a_local_helper_failure_is_its_last_line() -> None:
    assert explain_exit("a\nboom\n", 1) == "boom"
    assert explain_exit("", 9) == "helper exited with status 9"


def test_a_large_reply_arrives_whole_through_a_widened_pipe(tmp_path: Path) -> None:
    # A listing of a few hundred KiB: with the pipe at 1 MiB it is read in a read or two,
    # not one per 64 KiB (each of which wakes the helper again).
    import fcntl

    limit = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    if limit < channel.PIPE_SIZE:
        pytest.skip(f"pipes here are limited to {limit} bytes")
    for i in range(6000):
        (tmp_path / f"file-with-a-longish-name-{i:05d}").write_bytes(b"")
    helper = Channel(bootstrap_command(sys.executable), "local")
    try:
        assert fcntl.fcntl(helper.out_fd, 1032) == channel.PIPE_SIZE  # F_GETPIPE_SZ
        call(helper, "hello", {"algorithms": ["xxh3-128"]}, timeout=30)
        helper.send("scan", [[str(tmp_path), {}]], attach=[b""])
        replies = []
        while not replies:
            replies = wait_for_replies([helper], 5.0)
        _summaries, listing, _row = replies[0].values
        assert len(json.loads(listing)) == 6000 and len(listing) > 1 << 18
    finally:
        helper.close()

"""The helper on real files: what a file that vanishes or changes while read counts as."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.verify import helper
from agent.verify.channel import Channel, bootstrap_command, call, wait_for_replies

from .conftest import write_tree


def scan(folder: Path, cache: bytes = b"", **options: object) -> dict:
    """The scan's summary, with its listing as "entries" and its cache row (None when it is
    unchanged) as "cache"."""
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    summary, listing, row = worker.scan_dir(os.fsencode(folder).decode("latin-1"), options, cache)
    return {**summary, "entries": listing, "cache": row if summary["new_row"] else None}


def listed(folder: Path) -> dict[str, list]:
    """Entries by name, with no file read: [name, kind, size, None, mtime] for files."""
    return {e[0]: e for e in json.loads(scan(folder)["entries"])}


def hash_named(folder: Path, entries: list[list]) -> tuple[list, dict]:
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    digests, errors, _stats, _total = worker.hash_files(
        os.fsencode(folder).decode("latin-1"),
        [e[0] for e in entries], [e[2] for e in entries], [e[4] for e in entries], False,
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
                                    [listed(tmp_path)["x"][4]], False)  # fmt: skip
    assert digests == [hashlib.blake2b(b"abc", digest_size=16).hexdigest()]


def test_helper_source_runs_on_plain_python_without_the_package(tmp_path: Path) -> None:
    # The helper is sent to target hosts: it must not import anything of `agent`.
    code = Path(helper.__file__).read_text()
    assert "from agent" not in code and "import agent" not in code and "from ." not in code
    done = subprocess.run([sys.executable, "-I", "-c", code], input=b"", capture_output=True,
                          timeout=30)  # fmt: skip
    assert done.returncode == 0, done.stderr


def old_enough(path: Path) -> None:
    """Set mtime well in the past; ctime still moves to now, so wait out the racy window."""
    os.utime(path, (1_000_000_000, 1_000_000_000))


def test_scan_digests_small_files_and_leaves_large_ones_for_later(tmp_path: Path) -> None:
    import xxhash

    (tmp_path / "small").write_bytes(b"s" * 100)
    (tmp_path / "large").write_bytes(b"L" * (helper.SMALL_FILE + 1))
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    os.symlink("small", tmp_path / "link")
    reply = scan(tmp_path, hash=True)
    entries = json.loads(reply["entries"])
    by_name = {e[0]: e for e in entries}
    assert by_name["small"] == ["small", "f", 100, xxhash.xxh3_128_hexdigest(b"s" * 100)]
    large = by_name["large"]
    assert large[:4] == ["large", "f", helper.SMALL_FILE + 1, None]
    assert large[4] == os.stat(tmp_path / "large").st_mtime_ns  # for the later hash request
    assert by_name["empty"] == ["empty", "f", 0, ""]  # never read
    assert by_name["sub"] == ["sub", "d", 0, None]
    assert by_name["link"] == ["link", "l", 0, "small"]
    assert (reply["read"], reply["bytes"], reply["hits"]) == (1, 100, 0)
    assert reply["complete"] is False  # "large" has no digest yet
    assert [e[0] for e in entries] == sorted(by_name)
    # The summary that two equal scans are settled from.
    assert reply["files"] == "empty/large/link/small"
    assert reply["subdirs"] == ["sub"] and reply["specials"] == 0


def test_scan_without_hash_reads_nothing(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"s" * 100)
    reply = scan(tmp_path, hash=False)
    assert json.loads(reply["entries"])[0][3] is None
    assert reply["read"] == 0 and reply["complete"] is False


def test_scan_cache_row_vouches_only_for_an_unchanged_inode(tmp_path: Path) -> None:
    (tmp_path / "kept").write_bytes(b"k" * 10)
    (tmp_path / "changed").write_bytes(b"c" * 10)
    for name in ("kept", "changed"):
        old_enough(tmp_path / name)
    time.sleep(helper.RACY_SECONDS + 0.1)  # so the files' ctime is no longer racy
    first = scan(tmp_path, hash=True, remember=True)
    dev, row = first["dev"], first["cache"]
    assert row is not None and len(helper.row_entries(row)) == 2
    # A row that claims another digest for "kept" shows whether the file was read again.
    entries = helper.row_entries(row)
    kept_ino = os.stat(tmp_path / "kept").st_ino
    from_the_cache = "c0ffee" * 5 + "00"
    entries[kept_ino] = entries[kept_ino][:3] + (from_the_cache,)
    forged = helper.row_from_entries(entries)
    # Same size and mtime, new content: only ctime tells (the `touch -d` case).
    with open(tmp_path / "changed", "r+b") as handle:
        handle.write(b"C")
    old_enough(tmp_path / "changed")
    second = scan(tmp_path, hash=True, remember=True, cache=forged, cache_dev=dev)
    by_name = {e[0]: e for e in json.loads(second["entries"])}
    assert by_name["kept"][3] == from_the_cache
    assert second["hits"] == 1 and second["read"] == 1
    assert by_name["changed"][3] != json.loads(first["entries"])[0][3]
    assert second["complete"] is True
    # The changed file was hashed a moment ago (ctime is now): its digest is not kept yet.
    assert second["cache"] is not None and list(helper.row_entries(second["cache"])) == [kept_ino]
    # A row made on another device is ignored.
    other = scan(tmp_path, hash=True, remember=True, cache=forged, cache_dev=dev + 1)
    assert {e[0]: e for e in json.loads(other["entries"])}["kept"][3] != from_the_cache
    assert other["hits"] == 0
    # With no cache on the agent's side (--no-cache), the row is neither read nor made.
    nocache = scan(tmp_path, hash=True, cache=forged, cache_dev=dev)
    assert nocache["hits"] == 0 and nocache["cache"] is None


def test_scan_marks_other_devices_not_to_enter(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    dev = os.stat(tmp_path).st_dev
    assert listed(tmp_path)["sub"][1] == "d"
    entries = json.loads(scan(tmp_path, same_dev=dev + 1)["entries"])
    assert entries[0][:2] == ["sub", "p"]


def test_cache_rows_pack_and_unpack() -> None:
    digest = "0123456789abcdef" * 2
    entries = {2**63 + 5: (2**40, -1, 1_700_000_000_123_456_789, digest), 7: (0, 1, 2, "f" * 32)}
    row = helper.row_from_entries(entries)
    assert len(row) == 2 * helper.ROW_ITEM
    assert helper.row_entries(row) == entries
    assert helper.unpack_row(row)[(7, 0, 1, 2)] == "f" * 32
    # A digest of another length would shift every later one: it is left out.
    assert helper.row_entries(helper.row_from_entries({**entries, 9: (1, 1, 1, "abc")})) == entries
    assert helper.row_from_entries({}) == b""


def test_scan_with_mostly_empty_files_still_reads_the_others(tmp_path: Path) -> None:
    # Past a few empty files the scan stops opening files before it stats them; the files
    # after the switch must still be read.
    import xxhash

    contents = {f"e{i:02d}": b"" for i in range(30)}
    contents.update({f"f{i:02d}": b"x" * (i + 1) for i in range(10)})
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    found = scan(tmp_path, hash=True, remember=True)
    entries = {e[0]: e for e in json.loads(found["entries"])}
    assert found["complete"] is True and found["read"] == 10
    for name, data in contents.items():
        want = xxhash.xxh3_128_hexdigest(data) if data else ""
        assert entries[name][1:] == ["f", len(data), want], name


needs_libxxhash = pytest.mark.skipif(
    helper.LibXxhash.load() is None, reason="no libxxhash.so.0 (Debian package libxxhash0)"
)


@needs_libxxhash
@pytest.mark.parametrize("size", [0, 1, 3, 16, 17, 128, 129, 240, 241, 1024, 65_537, 300_000])
def test_libxxhash_gives_the_canonical_digest_of_the_xxhash_module(size: int) -> None:
    # Sizes on each side of XXH3's internal boundaries (16, 128 and 240 bytes, its stripes).
    import xxhash

    data = os.urandom(size)
    library = helper.LibXxhash.load()
    assert library is not None
    assert library.digest_bytes(data) == xxhash.xxh3_128_hexdigest(data)
    stream = library.stream()
    stream.update(data[: size // 3])  # bytes, as after a file grew during its first read
    stream.update(memoryview(bytearray(data[size // 3 :])))  # the read buffer
    assert stream.hexdigest() == xxhash.xxh3_128_hexdigest(data)


@needs_libxxhash
def test_the_libxxhash_route_hashes_small_and_streamed_files(tmp_path: Path) -> None:
    import xxhash

    contents = {"small": os.urandom(5000), "big": os.urandom(3 * helper.CHUNK + 17)}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    worker.hasher = helper.Hasher("xxh3-128", 0, "libxxhash")  # as on a host without the module
    folder = os.fsencode(tmp_path).decode("latin-1")
    summary, listing, _row = worker.scan_dir(folder, {"hash": True})
    entries = {e[0]: e for e in json.loads(listing)}
    assert entries["small"][3] == xxhash.xxh3_128_hexdigest(contents["small"])
    assert entries["big"][3] is None and not summary["complete"]
    digests, errors, _stats, total = worker.hash_files(
        folder, ["big"], [len(contents["big"])], [entries["big"][4]], False
    )
    assert not errors and digests == [xxhash.xxh3_128_hexdigest(contents["big"])]
    assert total == len(contents["big"])


def test_routes_are_tried_in_order_of_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    present: set[str] = set()
    monkeypatch.setattr(helper, "route_available", lambda via: via in present or via == "hashlib")
    offered = ["xxh3-128", "blake2b"]
    assert helper.negotiate(offered) == ("blake2b", "hashlib")
    for via in reversed(helper.XXH3_ROUTES):
        present.add(via)
        assert helper.negotiate(offered) == ("xxh3-128", via)
    assert helper.negotiate(["xxh3-128"]) == ("xxh3-128", "python-xxhash")


def _old_pythons() -> list[str]:
    """The oldest interpreters the helper supports, where pyenv has them installed."""
    try:
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return []
    found = sorted(Path(root, "versions").glob("3.[67].*/bin/python")) if root else []
    return [str(p) for p in found]


def ask(channel: Channel, op: str, *args: object) -> list:
    """One request and its whole reply, without the request id."""
    ident = channel.send(op, *[a for a in args if not isinstance(a, bytes)],
                         attach=[a for a in args if isinstance(a, bytes)])  # fmt: skip
    while True:
        for reply in wait_for_replies([channel], 5.0):
            assert reply.ident == ident
            return ["ok", *reply.values] if reply.error is None else ["err", reply.error]


@pytest.mark.parametrize("python", [sys.executable, *_old_pythons()])
def test_a_path_longer_than_path_max_is_scanned_and_hashed(tmp_path: Path, python: str) -> None:
    # Python 3.6 has no os.scandir(fd): the helper lists names there, then lstats them.
    deep = b"/".join([b"n" * 30] * 150)  # 4,650 bytes below tmp_path
    base = os.fsencode(tmp_path)
    fd = os.open(base, os.O_RDONLY)
    for part in deep.split(b"/"):
        os.mkdir(part, dir_fd=fd)
        fd, parent = os.open(part, os.O_RDONLY, dir_fd=fd), fd
        os.close(parent)
    for name, data in ((b"small", b"s"), (b"link", None), (b"big", b"B" * (300 << 10))):
        if data is None:
            os.symlink(b"small", name, dir_fd=fd)
        else:
            handle = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(handle, data)
            os.close(handle)
    os.close(fd)
    folder = (base + b"/" + deep).decode("latin-1")
    channel = Channel(bootstrap_command(python), "test")
    try:
        hello = call(channel, "hello", {"algorithms": ["blake2b"]}, timeout=30)
        assert hello["algorithm"] == "blake2b"
        assert call(channel, "stat", folder, timeout=30)[0] == "d"
        status, summaries, listing, _row = ask(channel, "scan", [[folder, {"hash": True}]], b"")
        assert status == "ok" and "error" not in summaries[0]
        entries = {e[0]: e for e in json.loads(listing)}
        assert entries["link"][1:4] == ["l", 0, "small"]
        assert entries["small"][3] == hashlib.blake2b(b"s", digest_size=16).hexdigest()
        big = entries["big"]
        status, digests, errors, _stats, total = ask(
            channel, "hash", folder, ["big"], [big[2]], [big[4]], False
        )
        assert status == "ok" and errors == {} and total == 300 << 10
        assert digests == [hashlib.blake2b(b"B" * (300 << 10), digest_size=16).hexdigest()]
    finally:
        channel.close()


def test_a_libxxhash_older_than_0_8_is_refused() -> None:
    # 0.7's XXH3 was experimental: its 128-bit digests differ from the module's.
    class OldLibrary:
        def XXH_versionNumber(self) -> int:  # noqa: N802 - the C library's name
            return 703

    with pytest.raises(OSError, match="older than 0.8.0"):
        helper.LibXxhash(OldLibrary())


@pytest.mark.skipif(shutil.which("xxh128sum") is None, reason="no xxh128sum (package xxhash)")
def test_xxh128sum_batches_give_the_digests_of_the_python_module(tmp_path: Path) -> None:
    import xxhash

    count = helper.PROGRAM_BATCH + 5  # more than one batch
    contents = {f"f{i:04}": os.urandom(i * 37) for i in range(count)}
    contents["new\nline \\ name"] = b"odd name"
    write_tree(tmp_path, contents)
    names = sorted(contents)
    st = {n: os.lstat(tmp_path / n) for n in names}
    (tmp_path / names[3]).unlink()  # vanished after the listing
    os.unlink(tmp_path / names[7])
    os.mkfifo(tmp_path / names[7])  # replaced by a FIFO: must not block
    worker = helper.Worker()
    worker.hasher = helper.Hasher("xxh3-128", 0, "xxh128sum")  # as on a host with no other route
    digests, errors, stats, total = worker.hash_files(
        os.fsencode(tmp_path).decode("latin-1"),
        [n.encode().decode("latin-1") for n in names],
        [st[n].st_size for n in names],
        [st[n].st_mtime_ns for n in names],
        True,
    )
    assert errors == {"3": "vanished before it was read", "7": "is no longer a regular file"}
    for i, name in enumerate(names):
        if str(i) not in errors:
            assert digests[i] == xxhash.xxh3_128_hexdigest(contents[name]), name
            assert stats[i][1] == len(contents[name])
    assert total == sum(len(contents[n]) for i, n in enumerate(names) if str(i) not in errors)


def test_a_huge_directory_is_streamed_sorted_in_chunks(tmp_path: Path) -> None:
    # More entries than one run holds: sorted in runs, merged and sent a chunk at a time.
    count = helper.RUN_ENTRIES + helper.CHUNK_ENTRIES // 2
    names = [os.fsencode(f"f{(i * 7919) % count:06d}") for i in range(count)] + [b"caf\xe9"]
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    (tmp_path / "sub").mkdir()
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    summary, listing, _row = worker.scan_dir(os.fsencode(tmp_path).decode("latin-1"), {})
    entries, chunks = json.loads(listing), 1
    while summary["stream"]:
        head, listing = worker.next_chunk(summary["stream"])
        entries += json.loads(listing)
        chunks += 1
        if head["end"]:
            break
    assert chunks >= 2 and len(json.loads(listing)) <= len(entries) // 2
    assert [e[0] for e in entries] == sorted(n.decode("latin-1") for n in names + [b"sub"])
    assert entries[0] == ["caf\xe9", "f", 0, ""] and entries[-1] == ["sub", "d", 0, None]
    assert not worker.streams  # the finished listing is dropped
    # A listing not wanted any more is dropped on request, before its end.
    summary, _listing, _row = worker.scan_dir(os.fsencode(tmp_path).decode("latin-1"), {})
    assert worker.streams
    assert worker.handle(["drop", 9, summary["stream"]]) == ["ok", 9, True]
    assert not worker.streams
    assert worker.handle(["drop", 10, summary["stream"]]) == ["ok", 10, False]


def _settled_files(folder: Path, count: int) -> dict[str, bytes]:
    contents = {f"f{i:05d}": b"%d" % i for i in range(count)}
    for name, data in contents.items():
        (folder / name).write_bytes(data)
        old_enough(folder / name)
    time.sleep(helper.RACY_SECONDS + 0.1)  # so the files' ctime is no longer racy
    return contents


def _forged(row: bytes, order: list[int] | None = None) -> bytes:
    """The row with each digest replaced by one naming the file's inode, so a digest shows
    which entry of the row vouched for it; its files in `order` (inodes) when given."""
    entries = helper.row_entries(row)
    keys = order if order is not None else list(entries)
    return helper.row_from_entries({i: entries[i][:3] + (named(i),) for i in keys})


def named(inode: int) -> str:
    """The forged digest that names an inode."""
    return f"{inode:032x}"


def scan_whole(folder: Path, cache: bytes, **options: object) -> tuple[dict, dict[str, list]]:
    """A scan's summary and its entries by name, every chunk of a streamed listing read."""
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    summary, listing, _row = worker.scan_dir(os.fsencode(folder).decode("latin-1"), options, cache)
    entries = json.loads(listing)
    while summary.get("stream"):
        head, listing = worker.next_chunk(summary["stream"])
        entries += json.loads(listing)
        if head["end"]:
            break
    return summary, {e[0]: e for e in entries}


def test_a_huge_cache_row_is_followed_in_order_not_unpacked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(helper, "RUN_ENTRIES", 40)  # 300 files make a huge directory
    _settled_files(tmp_path, 300)
    first = scan(tmp_path, hash=True, remember=True)
    dev, forged = first["dev"], _forged(first["cache"])
    # Unchanged: every digest comes from the row, from the file's own entry in it.
    warm, entries = scan_whole(tmp_path, forged, hash=True, remember=True, cache_dev=dev)
    assert (warm["hits"], warm["read"]) == (300, 0)
    for name, entry in entries.items():
        assert entry[3] == named(os.stat(tmp_path / name).st_ino), name
    # A few files removed, added and rewritten: the cursor finds its place again.
    for name in ("f00003", "f00150", "f00299"):
        (tmp_path / name).unlink()
    for name in ("g1", "g2"):
        (tmp_path / name).write_bytes(b"new")
    with open(tmp_path / "f00100", "r+b") as handle:
        handle.write(b"X")
    changed, entries = scan_whole(tmp_path, forged, hash=True, remember=True, cache_dev=dev)
    assert (changed["hits"], changed["read"]) == (296, 3)  # f00100, g1 and g2 are read
    assert entries["f00100"][3] != named(os.stat(tmp_path / "f00100").st_ino)


def test_a_huge_cache_row_in_another_order_costs_reads_never_a_wrong_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import xxhash

    monkeypatch.setattr(helper, "RUN_ENTRIES", 40)
    contents = _settled_files(tmp_path, 300)
    first = scan(tmp_path, hash=True, remember=True)
    inodes = list(helper.row_entries(first["cache"]))
    reversed_row = _forged(first["cache"], inodes[::-1])  # as if readdir's order had changed
    reply, entries = scan_whole(
        tmp_path, reversed_row, hash=True, remember=True, cache_dev=first["dev"]
    )
    assert reply["read"] > 0 and reply["hits"] + reply["read"] == 300
    for name, entry in entries.items():
        ino = os.stat(tmp_path / name).st_ino
        assert entry[3] in (named(ino), xxhash.xxh3_128_hexdigest(contents[name])), name


def test_a_warm_scan_of_a_huge_directory_holds_no_object_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tracemalloc

    monkeypatch.setattr(helper, "RUN_ENTRIES", 1000)
    # The merge decodes a piece of each run and the first chunk whole: small ones here.
    monkeypatch.setattr(helper, "RUN_PIECE", 64)
    monkeypatch.setattr(helper, "CHUNK_ENTRIES", 1000)
    count = 20_000
    _settled_files(tmp_path, count)
    first = scan(tmp_path, hash=True, remember=True)
    worker = helper.Worker()
    worker.hello({"algorithms": ["xxh3-128"]})
    options = {"hash": True, "remember": True, "cache_dev": first["dev"]}
    tracemalloc.start()
    try:
        summary, _chunk, _row = worker.scan_dir(
            os.fsencode(tmp_path).decode("latin-1"), options, first["cache"]
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert summary["hits"] == count and summary["new_row"] is False
    # The listing's packed runs and the row to compare, about 150 bytes a file, where a
    # dict of every file's stats and digest alone would take about 700.
    assert peak < 300 * count, f"{peak / count:.0f} bytes a file"


def test_files_are_put_into_a_row_in_place_of_their_inodes() -> None:
    digest = "ab" * 16
    row = helper.row_from_entries({i: (i, i, i, f"{i:032x}") for i in range(1, 1001)})
    more = {5: (6, 7, 8, digest), 2000: (1, 2, 3, "cd" * 16), 9: (1, 1, 1, "short")}
    merged = helper.row_entries(helper.row_with(row, more))
    expected = {**helper.row_entries(row), 5: (6, 7, 8, digest), 2000: (1, 2, 3, "cd" * 16)}
    del expected[9]  # a digest of another length is never stored (nor its old entry kept)
    assert merged == expected
    assert helper.row_with(b"", {}) == b"" and helper.row_with(row, {}) == row


def test_putting_files_into_a_huge_row_holds_no_object_per_file() -> None:
    import tracemalloc

    count = 100_000
    row = helper.row_from_entries({i: (i, i, i, f"{i:032x}") for i in range(1, count + 1)})
    tracemalloc.start()
    try:
        merged = helper.row_with(row, {7: (1, 2, 3, "ab" * 16)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(merged) == len(row)
    # The copy being built and the result, each the row's 48 bytes a file; a dict of the
    # row's files took 465 bytes a file here.
    assert peak < 150 * count, f"{peak / count:.0f} bytes a file"

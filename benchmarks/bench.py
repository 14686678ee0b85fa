#!/usr/bin/env python3
"""Time `smsagent verify` beside rsync and rclone on seeded trees, after checking every answer.

Stdlib only and installs nothing: rsync and rclone come from the distribution's packages.
Run `python3 benchmarks/bench.py --help`; benchmarks/README.md explains the cases.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import queue
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

GEN_VERSION = 1  # bump when a generator changes, so stale trees are rebuilt, not reused
MARKER = ".bench-tree.json"  # beside src/ and dst/, never inside them
POOL_SIZE = 1 << 24  # seeded random bytes; file contents are slices of this pool
GIB = 1 << 30
MB = 1_000_000
DISK_RESERVE = GIB  # leave this much free on a shared machine
TAIL = 2000  # characters of a tool's stderr quoted when it fails

RSYNC_FLAGS = ["-rlcn", "--delete", "--checksum-choice=xxh128"]
# rsync's quick check (size and modification time), the peer of `smsagent verify --quick`.
RSYNC_QUICK_FLAGS = ["-rln", "--delete"]
# `%i %n` without the default `%L`: a symlink line then holds only its name, not `name -> text`,
# which would be ambiguous when either contains " -> ".
RSYNC_ITEMIZE = ["--itemize-changes", "--out-format=%i %n"]
# In the C locale rsync escapes every byte outside printable ASCII as \#ooo, so its names
# decode back to the exact bytes whatever the machine's locale is.
RSYNC_ENV = {"LC_ALL": "C"}


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Answer:
    """Relative paths (bytes, as on disk) a tool reported, by kind of difference."""

    different: frozenset[bytes] = frozenset()
    missing: frozenset[bytes] = frozenset()  # on the source only: missing at the target
    extra: frozenset[bytes] = frozenset()  # on the target only: more at the target


@dataclass(frozen=True)
class Truth:
    """What the generator changed in the target, recorded when the tree was built."""

    total: int  # regular files (and symlinks) in the source tree
    answer: Answer


@dataclass(frozen=True)
class Tree:
    src: Path
    dst: Path
    truth: Truth


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # user + sys seconds of the process and the children it waited for
    rss_mb: float  # ru_maxrss: the largest single process, not a sum
    rss_sum_mb: float = 0.0  # the largest sum over the tool's process tree (case 6), sampled


@dataclass(frozen=True)
class Invocation:
    """One way to run a tool on a tree and read back its answer."""

    tool: str
    argv: list[str]
    ok_codes: frozenset[int]
    read_answer: Callable[[Path], Answer]  # given the file holding the tool's stdout
    env: dict[str, str] = field(default_factory=dict)
    check_extra: Callable[[Path, Truth], str | None] | None = None  # more checks on stdout
    before_warmup: Callable[[], None] | None = None
    before_each: Callable[[], None] | None = None  # before every run, warm-up and timed
    sum_rss: bool = False  # also sample the RSS of all its processes together


@dataclass(frozen=True)
class CaseSpec:
    key: str
    title: str
    tree: str  # a key of GENERATORS
    warm_cache: bool = False
    ssh: bool = False
    relay_ms: float = 0  # over SSH through a loopback relay that delays each chunk this long
    rclone: bool = True  # rclone is run locally only, and not on case 6's million files
    sum_rss: bool = False  # sample the RSS of all the tool's processes together
    quick: bool = False  # the agent's --quick beside rsync's own quick check; nothing is read


@dataclass(frozen=True)
class Target:
    case: str
    peer: str | None  # None: an absolute limit on the agent's peak RSS
    limit: float
    summed: bool = False  # the limit is on all the agent's processes together

    def describe(self) -> str:
        if self.peer is None:
            what = "all processes' RSS" if self.summed else "peak RSS"
            return f"agent {what} ≤ {self.limit:g} MB"
        return f"agent ≤ {self.limit:g}× {self.peer} (wall)"


@dataclass
class CaseResult:
    spec: CaseSpec
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    error: str | None = None
    skipped: str | None = None
    size: str = ""  # the tree as actually built, since --scale shrinks it
    notes: list[str] = field(default_factory=list)


class BenchError(Exception):
    """A case cannot go on; the message says why, and the other cases still run."""


class SkipCase(Exception):
    """A case that cannot run here (no disk, no SSH); reported as skipped, not failed."""


CASES = [
    CaseSpec("1", "small files (100 B to 8 KB), a few dozen differences", "small"),
    CaseSpec("2", "4 large files, one differing in its last byte", "big"),
    CaseSpec("3", "empty or tiny files", "tiny"),
    CaseSpec("4a", "case 1 again, nothing changed (agent: warm hash cache)", "small", True),
    CaseSpec("4b", "case 2 again, nothing changed (agent: warm hash cache)", "big", True),
    CaseSpec("5", "case 1 over SSH, bare target", "small", ssh=True, rclone=False),
    CaseSpec("5L", "2 large files over SSH, bare target", "pair", ssh=True, rclone=False),
    CaseSpec(
        "5R", "case 5 with 15 ms added each way", "small", ssh=True, relay_ms=15, rclone=False
    ),
    CaseSpec("6", "empty files in ONE directory, 10 missing", "onedir", rclone=False, sum_rss=True),
    CaseSpec("1Q", "case 1, quick check (size and mtime)", "small", rclone=False, quick=True),
    CaseSpec(
        "5Q", "case 5, quick check (size and mtime)", "small", ssh=True, rclone=False, quick=True
    ),  # fmt: skip
]

TARGETS = [
    Target("1", "rsync", 1.0),
    Target("1", "rclone", 0.2),
    Target("2", "rsync", 1.1),
    Target("3", None, 150),
    Target("3", "rsync", 1.0),
    Target("4a", "rsync", 0.5),
    Target("4b", "rsync", 0.05),
    Target("5", "rsync", 1.0),
    Target("5L", "rsync", 0.8),
    Target("5R", "rsync", 0.8),
    Target("6", "rsync", 1.0),
    Target("6", None, 150, summed=True),
    Target("1Q", "rsync", 1.0),
    Target("5Q", "rsync", 1.0),
]


# ---------------------------------------------------------------------------- names


def _random_bytes(rng: random.Random, size: int) -> bytes:
    """What `rng.randbytes(size)` gives on Python 3.9 and later, so the trees stay the same."""
    return rng.getrandbits(size * 8).to_bytes(size, "little")


def decode_rsync_name(text: bytes) -> bytes:
    r"""Undo rsync's `\#ooo` escapes; a lone backslash not followed by `#ooo` is literal."""
    out = bytearray()
    i = 0
    while i < len(text):
        chunk = text[i : i + 5]
        if chunk[:2] == b"\\#" and len(chunk) == 5 and all(48 <= c <= 55 for c in chunk[2:]):
            out.append(int(chunk[2:], 8))
            i += 5
        else:
            out.append(text[i])
            i += 1
    return bytes(out)


_QUOTE = "\u201b"  # rclone's quote: the next character is literal
_PICTURES = {**{chr(0x2400 + c): chr(c) for c in range(0x20)}, "\u2421": "\x7f"}


def decode_rclone_name(text: bytes) -> bytes:
    """Undo rclone's encoding: control bytes are shown as control pictures, `‛` quotes a literal.

    Bytes that are not UTF-8 come out raw, so surrogateescape carries them through.
    """
    chars = text.decode("utf-8", "surrogateescape")
    out: list[str] = []
    i = 0
    while i < len(chars):
        c = chars[i]
        if c == _QUOTE and i + 1 < len(chars):
            out.append(chars[i + 1])
            i += 2
            continue
        out.append(_PICTURES.get(c, c))
        i += 1
    return "".join(out).encode("utf-8", "surrogateescape")


_AGENT_NAMED = {ord("n"): b"\n", ord("t"): b"\t", ord("r"): b"\r", ord("\\"): b"\\"}


def decode_agent_name(text: bytes) -> bytes:
    r"""Undo the agent's `report.escape`: `\n \t \r \\`, `\xNN` (a raw byte), `\uNNNN` and
    `\UNNNNNNNN` (characters); the rest is UTF-8."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] != 0x5C or i + 1 == len(text):  # not a backslash
            out.append(text[i])
            i += 1
            continue
        kind = text[i + 1]
        if kind in _AGENT_NAMED:
            out += _AGENT_NAMED[kind]
            i += 2
        elif kind == ord("x"):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif kind == ord("u"):
            out += chr(int(text[i + 2 : i + 6], 16)).encode("utf-8", "surrogateescape")
            i += 6
        elif kind == ord("U"):
            out += chr(int(text[i + 2 : i + 10], 16)).encode("utf-8", "surrogateescape")
            i += 10
        else:
            raise BenchError(f"the agent's report has an unknown escape: {show(text)}")
    return bytes(out)


def show(name: bytes) -> str:
    """A name for a message, with undecodable bytes as escapes."""
    return repr(name.decode("utf-8", "backslashreplace"))


# ---------------------------------------------------------------------------- parsers


def parse_rsync(lines: Iterable[bytes]) -> Answer:
    """Read `rsync -i --out-format='%i %n'` (dry run, --delete) into an Answer.

    `>f+++++++++` and `cL+++++++++` are missing at the target; `>f`/`cL` with `c` (checksum or
    link text) or `s` (size) are different; `*deleting` is extra. Directory lines are skipped:
    only files and symlinks are counted.
    """
    different: set[bytes] = set()
    missing: set[bytes] = set()
    extra: set[bytes] = set()
    for raw in lines:
        line = raw.rstrip(b"\n")
        if not line:
            continue
        if line.startswith(b"*deleting "):
            name = line[len(b"*deleting ") :].lstrip(b" ")
            if not name.endswith(b"/"):
                extra.add(decode_rsync_name(name))
            continue
        code, sep, name = line.partition(b" ")
        if not sep or len(code) != 11:
            raise BenchError(f"rsync printed a line this script does not understand: {show(line)}")
        kind = code[1:2]
        if kind in (b"d", b"D", b"S"):
            continue  # directories; devices and specials are not compared
        if kind not in (b"f", b"L"):
            raise BenchError(f"rsync printed an unknown item type: {show(line)}")
        path = decode_rsync_name(name)
        if code[2:] == b"+++++++++":
            missing.add(path)
        elif code[2:3] == b"c" or code[3:4] == b"s":
            different.add(path)
    return Answer(frozenset(different), frozenset(missing), frozenset(extra))


def parse_combined(lines: Iterable[bytes], decode: Callable[[bytes], bytes], who: str) -> Answer:
    """Read `rclone check --combined` style lines (`= `, `* `, `+ `, `- `, `! `) into an Answer."""
    sets: dict[bytes, set[bytes]] = {b"*": set(), b"+": set(), b"-": set()}
    errors: list[bytes] = []
    for raw in lines:
        line = raw.rstrip(b"\n")
        if not line:
            continue
        mark, name = line[:2], line[2:]
        if mark == b"= ":
            continue
        if mark == b"! ":
            errors.append(decode(name))
        elif mark[:1] in sets and mark[1:2] == b" ":
            sets[mark[:1]].add(decode(name))
        else:
            raise BenchError(f"{who} printed a line this script does not understand: {show(line)}")
    if errors:
        listed = ", ".join(show(e) for e in sorted(errors)[:5])
        raise BenchError(f"{who} could not check {len(errors)} path(s): {listed}")
    return Answer(frozenset(sets[b"*"]), frozenset(sets[b"+"]), frozenset(sets[b"-"]))


def parse_rclone(lines: Iterable[bytes]) -> Answer:
    return parse_combined(lines, decode_rclone_name, "rclone")


def parse_agent_report(lines: Iterable[bytes], dir_check: str) -> Answer:
    """The agent's report names each path in full (dir_check + `/` + escaped relative path)."""
    prefix = os.fsencode(dir_check.rstrip("/")) + b"/"

    def relative(text: bytes) -> bytes:
        path = decode_agent_name(text.split(b"\t", 1)[0])  # `! path<TAB>reason`
        if not path.startswith(prefix):
            raise BenchError(f"the agent reported a path outside {dir_check}: {show(path)}")
        return path[len(prefix) :]

    # A quick check's report opens with a `# mode: quick ...` line.
    return parse_combined((line for line in lines if line[:1] != b"#"), relative, "the agent")


def agent_counts_problem(stdout: bytes, truth: Truth) -> str | None:
    """Compare the agent's JSON counts with the truth; the report alone could hide a count bug."""
    try:
        data = json.loads(stdout)
        entries = data["consistency_result"]
    except (ValueError, KeyError, TypeError) as exc:
        return f"the agent's --json output has no consistency_result: {exc}"
    if len(entries) != 1:
        return f"the agent reported {len(entries)} directories, expected 1"
    got = entries[0]
    t = truth.answer
    want = {
        "num_total_files": truth.total,
        "num_different_files": len(t.different),
        "num_target_miss_files": len(t.missing),
        "num_target_more_files": len(t.extra),
    }
    wrong = [f"{k}={got.get(k)} (expected {v})" for k, v in want.items() if got.get(k) != v]
    return "the agent's JSON counts are wrong: " + ", ".join(wrong) if wrong else None


def answer_problem(tool: str, got: Answer, truth: Truth) -> str | None:
    """None when the tool found exactly the generated differences, else what it got wrong."""
    problems = []
    for kind in ("different", "missing", "extra"):
        want: frozenset[bytes] = getattr(truth.answer, kind)
        have: frozenset[bytes] = getattr(got, kind)
        if want == have:
            continue
        lost = sorted(want - have)
        added = sorted(have - want)
        problems.append(
            f"{kind}: {len(have)} reported, {len(want)} expected; "
            f"not reported {len(lost)} {[show(n) for n in lost[:3]]}, "
            f"wrongly reported {len(added)} {[show(n) for n in added[:3]]}"
        )
    if not problems:
        return None
    return f"{tool} found different differences from the generator's record: " + "; ".join(problems)


# ---------------------------------------------------------------------------- generation


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a new file with raw syscalls: the open/write pair is what dominates a 1M-file tree."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def leaf_dirs(count: int) -> list[str]:
    """`count` leaf directories, 40 to a parent, so the tree has ~count directories in all."""
    return [f"d{i // 40:03d}/e{i % 40:02d}" for i in range(max(1, count))]


def make_dirs(root: Path, leaves: Sequence[str]) -> None:
    for leaf in leaves:
        (root / leaf).mkdir(parents=True, exist_ok=True)


def copy_tree(src: Path, dst: Path) -> None:
    """`cp -a` keeps mtimes, so the target looks like a real migrated copy to a quick check."""
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)


def keep_mtime(path: Path, change: Callable[[], None]) -> None:
    """Apply a change without touching the mtime: a silent corruption only a checksum finds."""
    before = os.stat(path)
    change()
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def flip_byte(path: Path, offset: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        old = os.pread(fd, 1, offset)
        os.pwrite(fd, bytes([old[0] ^ 0xFF]), offset)
    finally:
        os.close(fd)


def append_bytes(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def per_kind(n_files: int, wanted: int) -> int:
    """How many files of each kind to change, so a small smoke tree is not all differences."""
    return max(1, min(wanted, n_files // 20))


def apply_changes(
    dst: Path, files: Sequence[tuple[str, int]], leaves: Sequence[str], k: int, rng: random.Random
) -> Answer:
    """Change k files in place (same size), k by size, delete k and add k extra; return them."""
    candidates = [f for f in files if f[1] > 0]  # an empty file has no byte to flip
    chosen = rng.sample(candidates, min(len(candidates), 3 * k))
    same, grown, gone = chosen[:k], chosen[k : 2 * k], chosen[2 * k :]
    for name, size in same:
        keep_mtime(dst / name, partial(flip_byte, dst / name, size // 2))
    for name, _size in grown:
        keep_mtime(dst / name, partial(append_bytes, dst / name, b"appended by the benchmark\n"))
    for name, _size in gone:
        (dst / name).unlink()
    extra = [f"{rng.choice(leaves)}/extra{j:04d}.dat" for j in range(k)]
    for name in extra:
        write_file(dst / name, b"only on the target\n")
    return Answer(
        different=frozenset(os.fsencode(n) for n, _ in same + grown),
        missing=frozenset(os.fsencode(n) for n, _ in gone),
        extra=frozenset(os.fsencode(n) for n in extra),
    )


def gen_small(root: Path, scale: float, rng: random.Random) -> Truth:
    """Case 1: 100,000 × scale files of 100 B to 8 KB in ~1,400 × scale directories."""
    n_files = max(20, round(100_000 * scale))
    leaves = leaf_dirs(round(1_400 * scale))
    pool = _random_bytes(rng, POOL_SIZE)
    src = root / "src"
    make_dirs(src, leaves)
    files: list[tuple[str, int]] = []
    for i in range(n_files):
        name = f"{rng.choice(leaves)}/f{i:06d}.dat"
        size = rng.randint(100, 8192)
        start = rng.randrange(POOL_SIZE - size)
        write_file(src / name, pool[start : start + size])
        files.append((name, size))
    copy_tree(src, root / "dst")
    return Truth(n_files, apply_changes(root / "dst", files, leaves, per_kind(n_files, 12), rng))


def gen_big(root: Path, scale: float, rng: random.Random, count: int = 4) -> Truth:
    """Case 2: 4 files of 1 GiB × scale; one differs in its last byte, same size and mtime."""
    size = big_file_size(scale)
    pool = _random_bytes(rng, POOL_SIZE)
    chunk = 1 << 22
    src = root / "src"
    src.mkdir(parents=True)
    names = [f"big{i}.bin" for i in range(count)]
    for name in names:
        fd = os.open(src / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            left = size
            while left:
                n = min(chunk, left)
                start = rng.randrange(POOL_SIZE - n)
                view = memoryview(pool)[start : start + n]
                while view:
                    view = view[os.write(fd, view) :]
                left -= n
        finally:
            os.close(fd)
    copy_tree(src, root / "dst")
    victim = rng.choice(names)
    p = root / "dst" / victim
    keep_mtime(p, partial(flip_byte, p, size - 1))
    return Truth(len(names), Answer(different=frozenset({os.fsencode(victim)})))


def gen_tiny(root: Path, scale: float, rng: random.Random) -> Truth:
    """Case 3: 1,000,000 × scale files, half empty, the rest 1 to 16 bytes, 1,000 to a directory."""
    n_files = max(20, round(1_000_000 * scale))
    leaves = [f"d{i:04d}" for i in range((n_files + 999) // 1000)]
    pool = _random_bytes(rng, POOL_SIZE)
    src = root / "src"
    make_dirs(src, leaves)
    files: list[tuple[str, int]] = []
    for i in range(n_files):
        name = f"{leaves[i // 1000]}/t{i:07d}"
        size = 0 if rng.random() < 0.5 else rng.randint(1, 16)
        start = rng.randrange(POOL_SIZE - 16)
        write_file(src / name, pool[start : start + size])
        files.append((name, size))
    copy_tree(src, root / "dst")
    return Truth(n_files, apply_changes(root / "dst", files, leaves, per_kind(n_files, 10), rng))


def gen_pair(root: Path, scale: float, rng: random.Random) -> Truth:
    """Case 5L: case 2 with 2 files of 1 GiB × scale, one differing in its last byte."""
    return gen_big(root, scale, rng, count=2)


def gen_onedir(root: Path, scale: float, rng: random.Random) -> Truth:
    """Case 6: 1,000,000 × scale empty files in ONE directory; 10 of them missing at the target.

    Both sides are written, not copied: `cp -a` of a million files takes longer, and an empty
    file's mtime does not matter to a checksum."""
    n_files = max(20, round(1_000_000 * scale))
    names = [f"f{i:07d}" for i in range(n_files)]
    gone = set(rng.sample(names, per_kind(n_files, 10)))
    for side in ("src", "dst"):
        folder = root / side / "one"
        folder.mkdir(parents=True)
        fd_dir = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for name in names:
                if side == "dst" and name in gone:
                    continue
                os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd_dir))
        finally:
            os.close(fd_dir)
    return Truth(n_files, Answer(missing=frozenset(os.fsencode(f"one/{n}") for n in gone)))


def big_file_size(scale: float) -> int:
    """1 GiB × scale, at least 1 MiB, a whole number of 4 KiB pages."""
    return max(1 << 20, int(GIB * scale) // 4096 * 4096)


GENERATORS: dict[str, Callable[[Path, float, random.Random], Truth]] = {
    "small": gen_small,
    "big": gen_big,
    "tiny": gen_tiny,
    "pair": gen_pair,
    "onedir": gen_onedir,
}


def space_needed(kind: str, scale: float) -> tuple[int, int]:
    """Bytes and inodes both trees of a kind take, generously rounded up."""
    if kind == "small":
        n = max(20, round(100_000 * scale))
        return 2 * n * 8192, 2 * (n + round(1_400 * scale) + 100)
    if kind in ("big", "pair"):
        return 2 * (4 if kind == "big" else 2) * big_file_size(scale), 10
    n = max(20, round(1_000_000 * scale))
    if kind == "onedir":
        return 2 * n * 64, 2 * n + 10
    return 2 * n * 4096 // 2 + 2 * n * 64, 2 * (n + n // 1000 + 100)


def check_space(where: Path, kind: str, scale: float) -> None:
    need_bytes, need_inodes = space_needed(kind, scale)
    free = shutil.disk_usage(where).free
    if free < need_bytes + DISK_RESERVE:
        raise SkipCase(
            f"needs {(need_bytes + DISK_RESERVE) / GIB:.1f} GiB free in {where}, "
            f"has {free / GIB:.1f} GiB"
        )
    st = os.statvfs(where)
    if st.f_files and st.f_favail < need_inodes:
        raise SkipCase(f"needs {need_inodes} free inodes in {where}, has {st.f_favail}")


def tree_params(kind: str, scale: float, seed: int) -> dict[str, object]:
    return {"kind": kind, "scale": scale, "seed": seed, "version": GEN_VERSION}


def truth_to_json(truth: Truth) -> dict[str, object]:
    a = truth.answer
    return {
        "total": truth.total,
        **{
            k: sorted(os.fsdecode(n) for n in getattr(a, k))
            for k in ("different", "missing", "extra")
        },
    }


def truth_from_json(data: dict[str, object]) -> Truth:
    def names(key: str) -> frozenset[bytes]:
        value = data[key]
        assert isinstance(value, list)
        return frozenset(os.fsencode(n) for n in value)

    total = data["total"]
    assert isinstance(total, int)
    return Truth(total, Answer(names("different"), names("missing"), names("extra")))


def prepare_tree(
    workdir: Path, kind: str, scale: float, seed: int, log: Callable[[str], None]
) -> Tree:
    """Reuse the tree when its marker records the same parameters; otherwise rebuild it."""
    root = workdir / "trees" / kind
    params = tree_params(kind, scale, seed)
    marker = root / MARKER
    if marker.exists():
        saved = json.loads(marker.read_text())
        if saved.get("params") == params:
            log(f"reusing the {kind} tree in {root}")
            return Tree(root / "src", root / "dst", truth_from_json(saved["truth"]))
    if root.exists():
        log(f"removing the {kind} tree in {root}: built with other parameters")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    check_space(root, kind, scale)
    log(f"generating the {kind} tree in {root} (scale {scale:g}, seed {seed})")
    started = time.monotonic()
    # The seed is mixed with the kind so each tree has its own stream, whichever cases are run.
    digest = hashlib.sha256(f"{seed}:{kind}".encode()).digest()
    truth = GENERATORS[kind](root, scale, random.Random(int.from_bytes(digest[:8], "big")))
    marker.write_text(json.dumps({"params": params, "truth": truth_to_json(truth)}, indent=1))
    log(f"generated in {time.monotonic() - started:.1f} s")
    return Tree(root / "src", root / "dst", truth)


# ---------------------------------------------------------------------------- tools


@dataclass(frozen=True)
class Options:
    workdir: Path
    repeat: int
    scale: float
    seed: int
    cases: tuple[str, ...]
    agent_cmd: str
    workers: int | None
    only_peers: bool
    ssh_target: str
    markdown: Path | None
    prewarm: bool = True
    ssh_python: str | None = None
    ssh_port: int = 22  # where case 5R's relay forwards to


def read_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        return f.read().splitlines()


def rsync_invocation(
    tree: Tree, ssh_target: str | None, port: int | None = None, quick: bool = False
) -> Invocation:
    dst = f"{ssh_target}:{tree.dst}/" if ssh_target else f"{tree.dst}/"
    remote = ["-e", "ssh -o BatchMode=yes" + (f" -p {port}" if port else "")] if ssh_target else []
    flags = RSYNC_QUICK_FLAGS if quick else RSYNC_FLAGS
    argv = ["rsync", *flags, *RSYNC_ITEMIZE, *remote, f"{tree.src}/", dst]
    return Invocation(
        "rsync", argv, frozenset({0}), lambda p: parse_rsync(read_lines(p)), env=RSYNC_ENV
    )


def rclone_invocation(tree: Tree) -> Invocation:
    # Two-way by default: files only on the target are reported as `- `.
    argv = ["rclone", "check", str(tree.src), str(tree.dst), "--combined", "-"]
    return Invocation("rclone", argv, frozenset({0, 1}), lambda p: parse_rclone(read_lines(p)))


def write_agent_config(
    path: Path, tree: Tree, state: Path, opts: Options, ssh: bool, port: int | None = None
) -> None:
    """JSON is valid YAML, so the config needs no YAML library; mode 0600 as for a real one."""
    host = f"{opts.ssh_target}:{port}" if port else opts.ssh_target
    target = f"ssh://{host}{tree.dst}" if ssh else str(tree.dst)
    config: dict[str, object] = {
        "state_dir": str(state),
        "directories": [{"path": str(tree.src), "target": target}],
    }
    if opts.workers is not None:
        config["limits"] = {"workers": opts.workers}
    if ssh and opts.ssh_python:
        config["ssh"] = {"python": opts.ssh_python}
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(config, f, indent=1)


def agent_invocation(
    spec: CaseSpec, tree: Tree, opts: Options, port: int | None = None
) -> Invocation:
    runs = opts.workdir / "runs"
    state = opts.workdir / "state" / f"case{spec.key}"
    config = runs / f"case{spec.key}-agent.yaml"
    report = runs / f"case{spec.key}-agent.verify.report"
    state.mkdir(parents=True, exist_ok=True)
    write_agent_config(config, tree, state, opts, spec.ssh, port)
    argv = [opts.agent_cmd, "verify", "--config", str(config), "--no-upload", "--json"]
    argv += ["--report", str(report)] + (["--quick"] if spec.quick else [])

    def fresh_state() -> None:
        # Cases 4a/4b: the warm-up primes the cache from nothing, so the timed runs hit only
        # what it stored. Other cases: every run is a first run, as an operator's would be,
        # with the hash cache on and empty (so it pays for filling the cache, too).
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir(parents=True)

    return Invocation(
        "agent",
        argv,
        frozenset({0, 1}),
        lambda _stdout: parse_agent_report(read_lines(report), str(tree.src)),
        check_extra=lambda stdout, truth: agent_counts_problem(stdout.read_bytes(), truth),
        before_warmup=fresh_state if spec.warm_cache else None,
        before_each=None if spec.warm_cache else fresh_state,
    )


def invocations(
    spec: CaseSpec, tree: Tree, opts: Options, port: int | None = None
) -> list[Invocation]:
    """The tools of a case, agent first; rclone is not run over SSH (the spec compares rsync).
    `port`: the SSH port to use instead of ssh's own choice (case 5R's relay)."""
    tools = [] if opts.only_peers else [agent_invocation(spec, tree, opts, port)]
    tools.append(rsync_invocation(tree, opts.ssh_target if spec.ssh else None, port, spec.quick))
    if spec.rclone:
        tools.append(rclone_invocation(tree))
    return [replace(t, sum_rss=spec.sum_rss) for t in tools]


class Relay:
    """A loopback TCP relay that holds every chunk `delay` seconds in each direction, so a
    session through it sees a round trip of twice that (15 ms each way: about a data centre to
    a cloud region). Chunks keep their order and are not slowed otherwise."""

    def __init__(self, upstream: tuple[str, int], delay: float):
        self.upstream = upstream
        self.delay = delay
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for a, b in ((client, server), (server, client)):
                a.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                held: queue.Queue[tuple[float, bytes]] = queue.Queue()
                threading.Thread(target=self._read, args=(a, held), daemon=True).start()
                threading.Thread(target=self._write, args=(b, held), daemon=True).start()

    def _read(self, sock: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            try:
                data = sock.recv(1 << 16)
            except OSError:
                data = b""
            held.put((time.monotonic() + self.delay, data))
            if not data:
                return

    def _write(self, sock: socket.socket, held: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            due, data = held.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    sock.shutdown(socket.SHUT_WR)
                    return
                sock.sendall(data)
            except OSError:
                return


# ---------------------------------------------------------------------------- running


# Runs one command in a small separate interpreter, because ru_maxrss is inherited across exec:
# a child spawned by this script would report at least this script's own RSS (tens of MB after
# building a tree). The launcher's RSS is the floor instead; `rss_floor` measures it.
LAUNCHER = """
import os, sys, time
result, every, argv = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
PAGE = os.sysconf("SC_PAGE_SIZE")

def tree_rss(root):
    # The RSS of root and all its descendants now, in KiB.
    parent, rss = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/" + entry + "/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)] = int(fields[1])
            rss[int(entry)] = int(fields[21]) * PAGE // 1024
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        total += rss.get(pid, 0)
        frontier += [child for child, up in parent.items() if up == pid]
    return total

start = time.perf_counter()
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ)
except OSError as exc:
    sys.exit(f"cannot run {argv[0]!r}: {exc.strerror}")
peak_sum = 0
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG if every else 0)
    if done:
        break
    peak_sum = max(peak_sum, tree_rss(pid))
    time.sleep(every)
wall = time.perf_counter() - start
with open(result, "w") as f:
    cpu = usage.ru_utime + usage.ru_stime
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
    f.write(f"{code} {wall} {cpu} {usage.ru_maxrss} {peak_sum}")
"""
# How often the process tree's RSS is summed when asked (case 6): often enough to see a peak
# that lasts seconds, rarely enough to cost the tool little (one /proc scan takes ~5 ms).
SUM_RSS_EVERY = 0.1


def measure(inv: Invocation, out: Path, err: Path) -> tuple[int, Sample]:
    """Run once; wall time around spawn and reap, CPU and peak RSS from wait4's rusage."""
    result = out.with_suffix(".rusage")
    result.unlink(missing_ok=True)
    every = str(SUM_RSS_EVERY if inv.sum_rss else 0)
    argv = [sys.executable, "-I", "-S", "-c", LAUNCHER, str(result), every, *inv.argv]
    env = {**os.environ, **inv.env}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env)
    if not result.exists():
        tail = err.read_bytes()[-TAIL:].decode("utf-8", "replace").strip()
        raise BenchError(f"{inv.tool}: {tail}")
    code, wall, cpu, rss_kib, sum_kib = result.read_text().split()
    rss = int(rss_kib) * 1024 / MB
    return int(code), Sample(float(wall), float(cpu), rss, int(sum_kib) * 1024 / MB)


def rss_floor(workdir: Path) -> float:
    """The peak RSS the launcher reports for `true`: no measurement can be below it."""
    runs = workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    inv = Invocation("floor", ["true"], frozenset({0}), lambda _p: Answer())
    return measure(inv, runs / "floor.out", runs / "floor.err")[1].rss_mb


def run_checked(inv: Invocation, truth: Truth, runs: Path, label: str) -> Sample:
    """Run a tool and refuse its time unless its answer matches the generator's record."""
    out = runs / f"{label}-{inv.tool}.out"
    err = runs / f"{label}-{inv.tool}.err"
    code, sample = measure(inv, out, err)
    if code not in inv.ok_codes:
        tail = err.read_bytes()[-TAIL:].decode("utf-8", "replace")
        raise BenchError(f"{inv.tool} exited with {code}: {' '.join(inv.argv)}\n{tail}")
    problem = answer_problem(inv.tool, inv.read_answer(out), truth)
    if problem is None and inv.check_extra is not None:
        problem = inv.check_extra(out, truth)
    if problem:
        raise BenchError(f"{problem} (output in {out})")
    return sample


def prewarm(tree: Tree, passes: int = 2) -> None:
    """Read every file of both trees, untimed, right before a timed run.

    On the machine these figures come from, the kernel reclaims page cache in the background
    (kdamond), and a run that follows another tool found much of the tree evicted and took
    five to ten times as long, whichever tool it was. Reading the trees first gives every
    timed run the same warm start. One pass is not enough right after rclone (which evicts
    most of the cache): the pass takes 17 s, the kernel is still reclaiming while it reads,
    and the next tool still ran twice as slow; after a second pass it ran as fast as after
    any other tool.
    """
    buffer = bytearray(128 << 10)
    for _ in range(passes):
        for root in (tree.src, tree.dst):
            for folder, _dirs, files in os.walk(root):
                for name in files:
                    try:
                        fd = os.open(os.path.join(folder, name), os.O_RDONLY | os.O_NOFOLLOW)
                    except OSError:
                        continue
                    try:
                        while os.readv(fd, [buffer]):
                            pass
                    finally:
                        os.close(fd)


def rotations(tools: Sequence[Invocation], repeat: int) -> list[list[Invocation]]:
    """The order of each round. Whatever runs right after rclone is slower, even after two
    reads of the trees (case 3: the agent 13 s after rclone and 6 s after rsync, rsync 19 s
    and 11 s), so rclone opens every round and the others alternate: with an even --repeat,
    the agent and rsync follow rclone equally often."""
    first = [t for t in tools if t.tool == "rclone"]
    rest = [t for t in tools if t.tool != "rclone"]
    return [first + (rest if r % 2 == 0 else rest[::-1]) for r in range(repeat)]


def run_case(spec: CaseSpec, opts: Options, log: Callable[[str], None]) -> CaseResult:
    result = CaseResult(spec)
    relay = None
    try:
        if spec.ssh:
            check_ssh(opts.ssh_target)
        tree = prepare_tree(opts.workdir, spec.tree, opts.scale, opts.seed, log)
        result.size = describe_tree(spec.tree, tree.truth, opts.scale)
        if spec.relay_ms:
            host = opts.ssh_target.rpartition("@")[2]
            relay = Relay((host, opts.ssh_port), spec.relay_ms / 1000)
            check_ssh(opts.ssh_target, relay.port)
            result.notes.append(
                f"through a relay on 127.0.0.1:{relay.port} that holds every chunk "
                f"{spec.relay_ms:g} ms each way, to {host}:{opts.ssh_port}"
            )
        tools = invocations(spec, tree, opts, relay.port if relay else None)
        time_tools(spec, tree, tools, opts, result, log)
        if spec.ssh:
            result.notes.append("over SSH only the local processes' CPU and RSS are counted")
            if not opts.only_peers:
                result.notes.append(
                    hashing_note(opts.workdir / "runs" / f"case{spec.key}-agent.out")
                )
        if spec.sum_rss:
            sums = ", ".join(
                f"{tool} {medians(samples).rss_sum_mb:.0f} MB"
                for tool, samples in result.samples.items()
            )
            result.notes.append(
                f"all of a tool's processes together, sampled every {SUM_RSS_EVERY:g} s "
                f"(median of the peaks): {sums}"
            )
    except SkipCase as exc:
        result.skipped = str(exc)
        log(f"case {spec.key}: skipped: {exc}")
    except BenchError as exc:
        result.error = str(exc)
        result.samples.clear()  # no times are reported from a case with a wrong answer
        log(f"case {spec.key}: ABORTED: {exc}")
    finally:
        if relay is not None:
            relay.close()
    return result


def quick_truth(tree: Tree) -> Truth:
    """What a size-and-mtime check must find: a file whose content changed with its size and
    mtime kept (the generator makes some) is identical to it; the rest as recorded."""

    def same_look(name: bytes) -> bool:
        a, b = os.lstat(tree.src / os.fsdecode(name)), os.lstat(tree.dst / os.fsdecode(name))
        return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)

    answer = tree.truth.answer
    different = frozenset(n for n in answer.different if not same_look(n))
    return Truth(tree.truth.total, Answer(different, answer.missing, answer.extra))


def time_tools(
    spec: CaseSpec,
    tree: Tree,
    tools: list[Invocation],
    opts: Options,
    result: CaseResult,
    log: Callable[[str], None],
) -> None:
    """One untimed warm-up per tool, then the timed rounds; every answer is checked."""
    runs = opts.workdir / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    label = f"case{spec.key}"
    truth = quick_truth(tree) if spec.quick else tree.truth
    for inv in tools:
        if inv.before_warmup:
            inv.before_warmup()
        if inv.before_each:
            inv.before_each()
        log(f"case {spec.key}: warm-up (untimed) {inv.tool}")
        run_checked(inv, truth, runs, label)
    for inv in tools:  # the table lists the tools in this order, not in running order
        result.samples.setdefault(inv.tool, [])
    for r, order in enumerate(rotations(tools, opts.repeat), 1):
        for inv in order:
            if inv.before_each:
                inv.before_each()
            if opts.prewarm:
                prewarm(tree)
            sample = run_checked(inv, truth, runs, label)
            result.samples.setdefault(inv.tool, []).append(sample)
            summed = f", {sample.rss_sum_mb:.0f} MB in all" if inv.sum_rss else ""
            log(
                f"case {spec.key}: repeat {r}/{opts.repeat} {inv.tool}: "
                f"{sample.wall:.2f} s wall, {sample.cpu:.2f} s CPU, {sample.rss_mb:.0f} MB" + summed
            )


def hashing_note(stdout: Path) -> str:
    """How the target hashed, from the agent's last --json output: a bare target must say
    libxxhash (or xxh128sum, hashlib), not python-xxhash."""
    try:
        hashing = json.loads(stdout.read_bytes())["hashing"]
        how = "; ".join(f"{h['hash_algorithm']} via {h['hash_via']}" for h in hashing)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the agent's output does not say how the target hashed ({exc})"
    return f"the target hashed with {how}"


def describe_tree(kind: str, truth: Truth, scale: float) -> str:
    if kind == "big":
        return f"{truth.total} × {big_file_size(scale) / (1 << 20):,.0f} MiB"
    return f"{truth.total:,} files"


def check_ssh(target: str, port: int | None = None) -> None:
    probe = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
    probe += [*(["-p", str(port)] if port else []), target, "true"]
    try:
        done = subprocess.run(probe, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SkipCase(f"`{' '.join(probe)}` failed: {exc}") from exc
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip()
        raise SkipCase(f"`{' '.join(probe)}` failed ({done.returncode}): {why}")


# ---------------------------------------------------------------------------- report


def medians(samples: Sequence[Sample]) -> Sample:
    return Sample(
        statistics.median(s.wall for s in samples),
        statistics.median(s.cpu for s in samples),
        statistics.median(s.rss_mb for s in samples),
        statistics.median(s.rss_sum_mb for s in samples),
    )


def first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else f"unknown (exit {done.returncode})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def machine_lines(opts: Options) -> list[str]:
    usage = shutil.disk_usage(opts.workdir)
    lines = [
        f"- CPUs: {len(os.sched_getaffinity(0))} (nproc) × {cpu_model()}",
        f"- Memory: {mem_total()}",
        f"- Kernel: {platform.system()} {platform.release()}",
        f"- Python: {platform.python_version()}",
        f"- Work dir: {opts.workdir} ({usage.free / GIB:.0f} GiB free)",
        f"- rsync: {first_line(['rsync', '--version'])}",
        f"- rclone: {first_line(['rclone', 'version'])}",
    ]
    if not opts.only_peers:
        lines.append(f"- agent: {first_line([opts.agent_cmd, '--version'])} ({opts.agent_cmd})")
    return lines


def show_rss(rss_mb: float, floor: float) -> str:
    return f"≤ {floor:.0f}" if rss_mb <= floor * 1.05 else f"{rss_mb:.0f}"


def case_rows(result: CaseResult, floor: float) -> list[str]:
    spec = result.spec
    if result.skipped or result.error:
        status = f"skipped: {result.skipped}" if result.skipped else "ABORTED"
        return [f"| {spec.key} | {spec.title} | {result.size} | {status} | | | | |"]
    rows = []
    agent = medians(result.samples["agent"]) if "agent" in result.samples else None
    for tool, samples in result.samples.items():
        m = medians(samples)
        ratio = f"{agent.wall / m.wall:.2f}×" if agent and tool != "agent" and m.wall else ""
        rows.append(
            f"| {spec.key} | {spec.title} | {result.size} | {tool} | {m.wall:.2f} | {m.cpu:.2f} | "
            f"{show_rss(m.rss_mb, floor)} | {ratio} |"
        )
    return rows


def target_row(target: Target, results: dict[str, CaseResult]) -> str | None:
    result = results.get(target.case)
    if result is None:
        return None
    if result.skipped or result.error:
        status = "skipped" if result.skipped else "ABORTED"
        return f"| {target.case} | {target.describe()} | | {status} |"
    if "agent" not in result.samples:
        return f"| {target.case} | {target.describe()} | | n/a (agent not run) |"
    agent = medians(result.samples["agent"])
    if target.peer is None:
        value = agent.rss_sum_mb if target.summed else agent.rss_mb
        measured = f"{value:.0f} MB"
    else:
        value = agent.wall / medians(result.samples[target.peer]).wall
        measured = f"{value:.2f}×"
    verdict = "pass" if value <= target.limit else "FAIL"
    return f"| {target.case} | {target.describe()} | {measured} | {verdict} |"


def render(opts: Options, results: list[CaseResult], started: str, floor: float) -> str:
    by_key = {r.spec.key: r for r in results}
    out = [
        f"## Benchmark run {started}",
        "",
        f"`{' '.join(sys.argv)}`",
        "",
        *machine_lines(opts),
        "",
        f"Scale {opts.scale:g}, seed {opts.seed}, {opts.repeat} timed repeat(s) per tool; "
        "rclone opens every round and the others alternate. Page cache: not dropped; every "
        "tool had one untimed warm-up run on the same trees first"
        + (
            ", and every timed run was preceded by two untimed reads of both trees, so all timed "
            "runs read from a warm page cache."
            if opts.prewarm
            else "."
        )
        + " Every run's answer was checked against the generator's record before its time "
        "was kept.",
        "",
        "Medians. CPU is user + sys of the tool and the children it waited for; peak RSS is "
        "ru_maxrss, the largest single process (rsync's processes are not summed); it cannot read "
        f"below {floor:.1f} MB, the RSS of the small launcher that spawns each tool (ru_maxrss "
        "is inherited across exec), so a value at that floor means 'at most'.",
        "",
        "| Case | What | Tree | Tool | Wall (s) | CPU (s) | Peak RSS (MB) | Agent ÷ tool (wall) |",
        "|---|---|---|---|--:|--:|--:|--:|",
    ]
    for result in results:
        out += case_rows(result, floor)
    out += ["", "| Case | Target | Measured | Result |", "|---|---|--:|---|"]
    out += [row for t in TARGETS if (row := target_row(t, by_key))]
    problems = [r for r in results if r.error or r.notes]
    if problems:
        out.append("")
    for r in problems:
        if r.error:
            out.append(f"- Case {r.spec.key} aborted: {r.error}")
        out += [f"- Case {r.spec.key}: {note}" for note in r.notes]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- main


def parse_cases(text: str) -> tuple[str, ...]:
    """`1,2,4` -> ("1", "2", "4a", "4b"): case 4 stands for both its halves."""
    keys: list[str] = []
    for part in text.split(","):
        part = part.strip()
        matching = [c.key for c in CASES if c.key == part or (part == "4" and c.key[0] == "4")]
        if not matching:
            known = ", ".join(dict.fromkeys(c.key[0] if c.key[0] == "4" else c.key for c in CASES))
            raise argparse.ArgumentTypeError(f"no case {part!r}; the cases are {known}")
        keys += [k for k in matching if k not in keys]
    return tuple(keys)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", type=Path, required=True, help="where trees and runs are kept")
    p.add_argument("--repeat", type=int, default=4, help="timed runs per tool (default 4)")
    p.add_argument("--cases", type=parse_cases, default=parse_cases("1,2,3,4,5,5L,5R,6,1Q,5Q"))
    p.add_argument(
        "--scale",
        type=positive_float,
        default=1.0,
        help="shrink file counts and case 2's file size, e.g. 0.01 for a smoke run",
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--agent-cmd", default="smsagent")
    p.add_argument("--workers", type=int, help="passed to the agent as limits.workers")
    p.add_argument("--only-peers", action="store_true", help="skip the agent; time rsync, rclone")
    p.add_argument("--no-prewarm", action="store_true",
                   help="do not read both trees before each timed run")  # fmt: skip
    p.add_argument("--ssh-target", default="127.0.0.1", help="[user@]host for cases 5, 5L, 5R")
    p.add_argument("--ssh-port", type=int, default=22, help="the sshd port case 5R's relay uses")
    p.add_argument("--ssh-python", help="the target's Python for the agent in cases 5 (ssh.python)")
    p.add_argument("--markdown", type=Path, help="also write the results here as markdown")
    a = p.parse_args(argv)
    if a.repeat < 1:
        p.error("--repeat must be at least 1")
    return Options(
        workdir=a.workdir.resolve(),
        repeat=a.repeat,
        scale=a.scale,
        seed=a.seed,
        cases=a.cases,
        agent_cmd=a.agent_cmd,
        workers=a.workers,
        only_peers=a.only_peers,
        prewarm=not a.no_prewarm,
        ssh_target=a.ssh_target,
        ssh_python=a.ssh_python,
        ssh_port=a.ssh_port,
        markdown=a.markdown,
    )


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    opts.workdir.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    floor = rss_floor(opts.workdir)  # before any tree is built, as it does not depend on them
    results = [run_case(spec, opts, log) for spec in CASES if spec.key in opts.cases]
    text = render(opts, results, started, floor)
    print(text)
    if opts.markdown:
        opts.markdown.write_text(text)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

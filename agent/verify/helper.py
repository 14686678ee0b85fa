"""The worker that lists and hashes one side of a comparison, next to the data.

It runs as a child process of the agent for a local tree, and on the target host for an
`ssh://` target, where its source is sent over the SSH session's stdin. So it needs only the
Python standard library (xxhash is used when importable), keeps to syntax Python 3.6 reads,
and must not import anything from the `agent` package.

Protocol: frames of a 4-byte big-endian length and a JSON array, both ways. A frame may end
with attachments: the array's last elements, as bytes, which travel raw after the JSON text
(see encode_frame), so large texts and binary cache rows are not escaped into strings.
File names are bytes on Linux; they travel as latin-1 strings, which map each byte to one
code point and back, so every name survives and sorts in byte order.
"""

import errno
import hashlib
import json
import os
import stat
import struct
import subprocess
import sys
import time

PROTOCOL = 1
SMALL_FILE = 256 << 10  # read in one call up to this size
# Streaming buffer for larger files: small enough to stay in the CPU's L2 cache between the
# kernel's copy and the hash; 1 MiB made hashing a large file four times slower here.
CHUNK = 128 << 10
# Files per xxh128sum run when this host has no xxhash module: one process per file costs
# ~2 ms, which for small files is most of the run; each file of a batch holds a descriptor.
PROGRAM_BATCH = 128
# A directory of more entries than this is sorted in runs and sent in chunks, so neither the
# helper nor the agent ever holds all its entries as objects.
RUN_ENTRIES = 1 << 14
RUN_PIECE = 512  # entries of a run decoded at a time
CHUNK_ENTRIES = 1 << 14  # entries a chunk of a streamed listing holds, at least
RACY_SECONDS = 2.0  # a file modified this recently may still change: its digest is not cached
PSEUDO_FS = {
    "proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "securityfs", "debugfs",
    "tracefs", "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "autofs",
    "binfmt_misc", "efivarfs", "selinuxfs", "rpc_pipefs", "nsfs",
}  # fmt: skip
FRAME_HEADER = struct.Struct(">I")
_NOATIME = getattr(os, "O_NOATIME", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | _CLOEXEC
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC
# Bytes of path per open(): under PATH_MAX (4,096) with room for one more name; a longer
# path is walked piece by piece relative to directory descriptors.
_PATH_STEP = 3800
_SCANDIR_FD = os.scandir in getattr(os, "supports_fd", ())
_LITTLE_ENDIAN = sys.byteorder == "little"


def read_frame(stream):
    header = stream.read(4)
    if len(header) < 4:
        return None
    (size,) = FRAME_HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decode_payload(payload)


def write_frame(stream, message):
    stream.write(encode_frame(message))
    stream.flush()


def encode_frame(message):
    """A frame: its length, the JSON text of the list, then each trailing bytes element as an
    attachment (a NUL byte after the JSON, then per attachment its length and bytes)."""
    cut = len(message)
    while cut and isinstance(message[cut - 1], bytes):
        cut -= 1
    parts = [json.dumps(message[:cut], separators=(",", ":")).encode("utf-8")]
    if cut < len(message):
        parts.append(b"\0")  # JSON text never holds a NUL byte
        for blob in message[cut:]:
            parts.append(FRAME_HEADER.pack(len(blob)))
            parts.append(blob)
    body = b"".join(parts)
    return FRAME_HEADER.pack(len(body)) + body


def decode_payload(payload):
    """The list a frame's payload (without its length) holds, attachments appended as bytes."""
    end = payload.find(b"\0")
    if end < 0:
        return json.loads(payload.decode("utf-8"))
    message = json.loads(payload[:end].decode("utf-8"))
    pos = end + 1
    while pos < len(payload):
        (size,) = FRAME_HEADER.unpack_from(payload, pos)
        message.append(payload[pos + 4 : pos + 4 + size])
        pos += 4 + size
    return message


# A hash cache row holds the digested files of one directory: per file its inode, size,
# mtime_ns and ctime_ns as 64-bit little-endian integers, then all their 128-bit digests.
_ROW_STATS = "QQqq"
_ROW_DIGITS = 32  # hex digits of a digest: both algorithms give 128 bits
ROW_ITEM = 32 + 16  # bytes per file


def pack_row(stats, digests):
    """A cache row from flat [ino, size, mtime_ns, ctime_ns, ...] and the files' digests."""
    return struct.pack("<" + _ROW_STATS * len(digests), *stats) + bytes.fromhex("".join(digests))


def unpack_row(row):
    """A cache row as {(ino, size, mtime_ns, ctime_ns): digest}."""
    return _row_lookup(*_row_fields(row))


def _row_fields(row):
    """A cache row as pack_row's arguments: flat stats (a tuple) and the list of digests."""
    count = len(row) // ROW_ITEM
    stats = struct.unpack_from("<" + _ROW_STATS * count, row)
    digits = row[32 * count :].hex()
    return stats, [digits[i : i + _ROW_DIGITS] for i in range(0, len(digits), _ROW_DIGITS)]


def _row_lookup(stats, digests):
    keys = zip(stats[0::4], stats[1::4], stats[2::4], stats[3::4])
    return dict(zip(keys, digests))


def row_entries(row):
    """A cache row as {inode: (size, mtime_ns, ctime_ns, digest)}."""
    return {key[0]: key[1:] + (digest,) for key, digest in unpack_row(row).items()}


def row_from_entries(entries):
    """The cache row of {inode: (size, mtime_ns, ctime_ns, digest)}."""
    stats, digests = [], []
    for ino, (size, mtime, ctime, digest) in entries.items():
        if len(digest) == _ROW_DIGITS:  # anything else would shift every later digest
            stats.extend((ino, size, mtime, ctime))
            digests.append(digest)
    return pack_row(stats, digests)


def row_with(row, entries):
    """The cache row `row` with {inode: (size, mtime_ns, ctime_ns, digest)} put in, in place
    of its files of the same inodes. The row is copied a file at a time, never unpacked
    into objects, so a huge directory's row costs its bytes alone (a dict takes about 700
    bytes a file)."""
    count = len(row) // ROW_ITEM
    view = memoryview(row)
    stats, digests = bytearray(), bytearray()
    inode = struct.Struct("<Q").unpack_from
    for i in range(count):
        if inode(view, 32 * i)[0] not in entries:
            stats += view[32 * i : 32 * i + 32]
            digests += view[32 * count + 16 * i : 32 * count + 16 * i + 16]
    added = row_from_entries(entries)
    cut = 32 * (len(added) // ROW_ITEM)
    return b"".join((stats, added[:cut], digests, added[cut:]))


def to_wire(name):
    return name.decode("latin-1")


def from_wire(text):
    return text.encode("latin-1")


def pseudo_mounts():
    """Mount points of pseudo filesystems (proc, sysfs, ...), which are never walked."""
    found = set()
    try:
        with open("/proc/self/mountinfo", "rb") as info:
            for line in info:
                fields = line.split()
                try:
                    sep = fields.index(b"-")
                except ValueError:
                    continue
                fstype = fields[sep + 1].decode("latin-1")
                if fstype in PSEUDO_FS:
                    found.add(_unescape_mount(fields[4]))
    except OSError:
        pass
    return found


def _unescape_mount(raw):
    # mountinfo writes space, tab, newline and backslash as \ooo octal escapes.
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"\\" and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


class Hasher:
    """Hashes files with the negotiated algorithm and route, honouring a read-rate limit."""

    def __init__(self, algorithm, read_limit, via=None):
        self.algorithm = algorithm
        self.read_limit = read_limit  # bytes per second, 0 for none
        self.buffer = bytearray(CHUNK)
        self.view = memoryview(self.buffer)
        self._bucket_start = time.monotonic()
        self._bucket_bytes = 0
        self.via = via or negotiate([algorithm])[1]
        self.oneshot = None  # bytes -> hex digest
        self.factory = None  # () -> an object with update(buffer) and hexdigest()
        if self.via == "python-xxhash":
            import xxhash

            self.oneshot = xxhash.xxh3_128_hexdigest
            self.factory = xxhash.xxh3_128
        elif self.via == "libxxhash":
            library = LibXxhash.load()
            self.oneshot = library.digest_bytes
            self.factory = library.stream
        elif self.via == "hashlib":
            self.factory = lambda: hashlib.blake2b(digest_size=16)
            self.oneshot = lambda data: hashlib.blake2b(data, digest_size=16).hexdigest()

    def throttle(self, nbytes):
        if not self.read_limit:
            return
        self._bucket_bytes += nbytes
        elapsed = time.monotonic() - self._bucket_start
        ahead = self._bucket_bytes / float(self.read_limit) - elapsed
        if ahead > 0:
            time.sleep(ahead)
        if elapsed > 5:
            self._bucket_start = time.monotonic()
            self._bucket_bytes = 0

    def digest_fd(self, fd, size):
        """Digest of an open file; returns (hexdigest, bytes read)."""
        if self.via == "xxh128sum":
            return self._digest_with_program(fd)
        if size <= SMALL_FILE:
            data = os.read(fd, size + 1)
            total = len(data)
            if total > size:  # it grew since fstat: read the rest the slow way
                hasher = self.factory()
                hasher.update(data)
                total += self._stream(fd, hasher)
                return hasher.hexdigest(), total
            self.throttle(total)
            return self.oneshot(data), total
        hasher = self.factory()
        total = self._stream(fd, hasher)
        return hasher.hexdigest(), total

    def _stream(self, fd, hasher):
        total = 0
        view = self.view
        readinto = getattr(os, "readv", None)
        while True:
            if readinto is not None:
                n = os.readv(fd, [self.buffer])
            else:
                chunk = os.read(fd, CHUNK)
                n = len(chunk)
                self.buffer[:n] = chunk
            if n <= 0:
                return total
            hasher.update(view[:n])
            total += n
            self.throttle(n)

    def _digest_with_program(self, fd):
        # No xxhash module on this host: let the xxh128sum program read the open file.
        done = subprocess.run(
            ["xxh128sum", "-"], stdin=fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        if done.returncode != 0:
            raise OSError(errno.EIO, done.stderr.decode("utf-8", "replace").strip())
        digest = done.stdout.split()[0].decode("ascii").lstrip("\\")
        size = os.fstat(fd).st_size
        self.throttle(size)
        return digest, size

    def digests_with_program(self, fds):
        """Digests of open regular files from one xxh128sum run, which reads each through
        /dev/fd: {fd: (hexdigest, size)}; a file it could not read is left out."""
        done = subprocess.run(
            ["xxh128sum", "--"] + ["/dev/fd/%d" % fd for fd in fds],
            pass_fds=fds,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        found = {}
        for line in done.stdout.splitlines():
            digest, _, name = line.partition(b"  ")
            if name.startswith(b"/dev/fd/"):
                fd = int(name[8:])
                found[fd] = (digest.lstrip(b"\\").decode("ascii"), os.fstat(fd).st_size)
        self.throttle(sum(size for _, size in found.values()))
        return found


class LibXxhash:
    """xxh3-128 from the C library libxxhash.so.0 through ctypes, for a host whose Python
    lacks the xxhash module: APT (libapt-pkg) and rsync 3.2+ depend on that library, so it is
    on nearly every Debian and Ubuntu host and wherever such an rsync is installed. A call
    costs about 1 us, against 0.1 us with the module, and it streams about 6 GB/s; BLAKE2b
    costs 4 us for a small file and streams 0.4 GB/s."""

    MIN_VERSION = 800  # 0.8.0: XXH3 was experimental before, and its 128-bit digests differ
    _loaded = None  # the instance, or False once it could not be loaded

    def __init__(self, lib):
        import ctypes

        class Hash128(ctypes.Structure):
            _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]

        if lib.XXH_versionNumber() < self.MIN_VERSION:
            raise OSError(errno.ENOTSUP, "libxxhash is older than 0.8.0")
        # On x86-64, Debian's build also exports *_dispatch variants that pick AVX2 or
        # AVX-512 at run time; the plain ones are SSE2: streaming 1.5 GB/s against 19 here.
        self._oneshot = self._fastest(lib, "XXH3_128bits")
        self._oneshot.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self._oneshot.restype = Hash128
        create = lib.XXH3_createState
        create.restype = ctypes.c_void_p
        # One streaming state, reset for each large file: the helper hashes one at a time.
        self._state = create()
        if not self._state:
            raise MemoryError("XXH3_createState")
        self._reset = lib.XXH3_128bits_reset
        self._reset.argtypes = [ctypes.c_void_p]
        self._update = self._fastest(lib, "XXH3_128bits_update")
        self._update.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self._digest = lib.XXH3_128bits_digest
        self._digest.argtypes = [ctypes.c_void_p]
        self._digest.restype = Hash128
        self._address = ctypes.addressof
        self._char_at = ctypes.c_char.from_buffer

    @staticmethod
    def _fastest(lib, name):
        try:
            return getattr(lib, name + "_dispatch")
        except AttributeError:
            return getattr(lib, name)

    @classmethod
    def load(cls):
        """The library, found by its soname, else as ctypes.util.find_library finds it
        (through ldconfig's cache); None where it is absent, too old or ctypes is missing."""
        if cls._loaded is None:
            cls._loaded = False
            try:
                import ctypes
                import ctypes.util
            except ImportError:  # a Python built without libffi
                return None
            for name in ("libxxhash.so.0", None, "libxxhash.so"):
                try:
                    name = name or ctypes.util.find_library("xxhash")
                    if name:
                        cls._loaded = cls(ctypes.CDLL(name))
                        break
                except (OSError, AttributeError, MemoryError):
                    continue  # absent, or without the XXH3 functions
        return cls._loaded or None

    def digest_bytes(self, data):
        """The canonical digest of bytes: high 64 bits first, as python-xxhash gives it."""
        value = self._oneshot(data, len(data))
        if _LITTLE_ENDIAN:  # see _canonical; inlined, as this runs once per small file
            return memoryview(value).tobytes()[::-1].hex()
        return _canonical(value)

    def stream(self):
        self._reset(self._state)
        return self

    def update(self, data):
        """Adds bytes, or a memoryview of a bytearray (the read buffer), without a copy."""
        if isinstance(data, bytes):
            self._update(self._state, data, len(data))
        elif len(data):
            self._update(self._state, self._address(self._char_at(data)), len(data))

    def hexdigest(self):
        """The digest of what the stream was given since stream()."""
        return _canonical(self._digest(self._state))


def _canonical(value):
    """The hex digest of an XXH128_hash_t: its two 64-bit halves as they lie in memory,
    reversed, are on a little-endian host the canonical form (high half first, big-endian),
    in three C calls (measured a little cheaper than reading both fields and formatting)."""
    if _LITTLE_ENDIAN:
        return memoryview(value).tobytes()[::-1].hex()
    return "%016x%016x" % (value.high64, value.low64)


# Where the helper gets xxh3-128, fastest first (measured: benchmarks/RESULTS.md).
XXH3_ROUTES = ("python-xxhash", "libxxhash", "xxh128sum")


def negotiate(offered):
    """The first algorithm of the agent's list that this host can compute, and how."""
    for name in offered:
        if name == "xxh3-128":
            for via in XXH3_ROUTES:
                if route_available(via):
                    return name, via
        elif name == "blake2b":
            return name, "hashlib"
    return None, "none"


def route_available(via):
    if via == "python-xxhash":
        try:
            import xxhash  # noqa: F401
        except ImportError:
            return False
        return True
    if via == "libxxhash":
        return LibXxhash.load() is not None
    if via == "xxh128sum":
        return _has_program("xxh128sum")
    return via == "hashlib"


def _has_program(name):
    for folder in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        if os.access(os.path.join(folder, name), os.X_OK):
            return True
    return False


class Worker:
    def __init__(self):
        self.hasher = None
        self.pseudo = set()
        self.streams = {}  # listings being sent a chunk at a time, by number
        self.last_stream = 0

    def hello(self, options):
        algorithm, via = negotiate(options.get("algorithms", ["xxh3-128"]))
        if algorithm is not None:
            self.hasher = Hasher(algorithm, int(options.get("read_limit", 0)), via)
        self.pseudo = pseudo_mounts()
        return {
            "protocol": PROTOCOL,
            "algorithm": algorithm,
            "via": via,
            "python": "%d.%d.%d" % sys.version_info[:3],
            "now": time.time(),
        }

    def stat_root(self, path):
        """What is at a tree's root: [kind, dev, error]."""
        try:
            st = _stat_long(from_wire(path))
        except OSError as exc:
            return ["missing" if exc.errno in (errno.ENOENT, errno.ENOTDIR) else "e",
                    0, os.strerror(exc.errno or 0)]  # fmt: skip
        if not stat.S_ISDIR(st.st_mode):
            return ["notdir", st.st_dev, ""]
        if from_wire(path) in self.pseudo:
            return ["p", st.st_dev, ""]
        return ["d", st.st_dev, ""]

    def scan_dir(self, path, options, cache_row=b""):
        """One directory's entries sorted by name, as [name, kind, size, value] where value
        is a regular file's digest, a symlink's target or why an entry cannot be examined.

        With options["hash"], files up to SMALL_FILE are digested during the walk, since
        reading a small file costs about what asking for it later would; larger files, and
        files that could not be read here, carry None and their mtime as a fifth field, to be
        hashed on request. With options["remember"], cache_row is this directory's hash cache
        row (made on device options["cache_dev"]): a file whose inode, size, mtime and ctime
        match keeps its digest unread, and the row to store is made. With options["same_dev"],
        directories on other devices are not entered (one_file_system). With options["quick"]
        (size and mtime compared, nothing read) an empty file carries its mtime too, and a
        file without a digest still leaves the scan complete. Returns a summary,
        the listing and the cache row to store if "new_row" in the summary says so; "complete"
        in the summary says every file has its digest and nothing failed, so two equal
        listings mean two identical directories. A directory of more than RUN_ENTRIES
        entries is kept in sorted runs: the listing is then its first chunk, and the summary's
        "stream" numbers the rest, which next_chunk gives out."""
        folder = from_wire(path)
        hasher = self.hasher
        oneshot = hasher.oneshot if (options.get("hash") and hasher is not None) else None
        same_dev = options.get("same_dev")
        quick = bool(options.get("quick"))
        pseudo = self.pseudo
        dir_fd = _open_dir(folder)
        try:
            dev = os.fstat(dir_fd).st_dev
            remember = bool(options.get("remember"))  # the agent keeps a hash cache
            usable = remember and cache_row and options.get("cache_dev") == dev
            fields = None
            if usable and len(cache_row) // ROW_ITEM > RUN_ENTRIES:
                old = _RowCursor(cache_row)  # a huge row is never unpacked whole
            else:
                fields = _row_fields(cache_row) if usable else None
                old = _row_lookup(*fields) if fields else {}
            # The row to store: flat (ino, size, mtime_ns, ctime_ns) per file, and digests.
            row_stats, row_digests = [], []
            row_packed = ([], [])  # earlier files' stats and digests, packed as runs spill
            keep_stats, keep_digest = row_stats.extend, row_digests.append
            # Digests of files changed this recently are not kept: they may change again
            # within the same mtime tick (the racy-git problem).
            settled = int((time.time() - RACY_SECONDS) * 1e9)
            # With no cache row to consult, every regular file is read: open it first and
            # fstat the descriptor, which saves the lookup of the name an lstat would repeat.
            # An empty file opened so costs more than an lstat, so where more than a third
            # of the files are empty the rest are lstat'ed first.
            open_first = oneshot is not None and not old
            opened_empty = 0
            entries = []
            append = entries.append
            # A huge directory is kept as sorted runs of packed entries, not one list of
            # objects (about 150 bytes an entry); they are merged as the agent asks for them.
            runs = []
            complete = True
            files_read = bytes_read = hits = 0
            lstat_at, fstat = os.stat, os.fstat
            # os.fsencode, without its Python frame: the name as bytes, undecodable bytes kept.
            encode, fs_encoding = str.encode, sys.getfilesystemencoding()
            fs_errors = sys.getfilesystemencodeerrors()
            is_file = stat.S_ISREG
            open_at, read, close = os.open, os.read, os.close
            # O_NONBLOCK: a file replaced by a FIFO must not hang the read.
            open_flags = _OPEN_FLAGS | _NOATIME
            # The loop is written out in full: it runs once per file of the tree.
            with _scandir(dir_fd) as it:
                for entry in it:
                    if len(entries) >= RUN_ENTRIES:
                        runs.append(_pack_run(entries))
                        del entries[:]
                        _pack_into(row_packed, row_stats, row_digests)
                    name = encode(entry.name, fs_encoding, fs_errors)
                    fd = -1
                    st = None
                    if open_first and entry.is_file(follow_symlinks=False):
                        try:
                            fd = open_at(name, open_flags, dir_fd=dir_fd)
                        except OSError:
                            fd = _reopen(dir_fd, name)
                        if fd >= 0:
                            st = fstat(fd)
                    if st is None:
                        try:
                            # Relative to the open directory: no walk of the whole path.
                            st = lstat_at(name, dir_fd=dir_fd, follow_symlinks=False)
                        except OSError as exc:
                            append(_unstatable(name, exc))
                            complete = False
                            continue
                    mode = st.st_mode
                    if is_file(mode):
                        size = st.st_size
                        if size == 0:  # nothing to read: equal to any other empty file
                            if fd >= 0:
                                close(fd)
                                opened_empty += 1
                                if opened_empty > 8 and opened_empty * 2 > files_read:
                                    open_first = False
                            if quick:
                                append([name.decode("latin-1"), "f", 0, "", st.st_mtime_ns])
                            else:
                                append([name.decode("latin-1"), "f", 0, ""])
                            continue
                        mtime, ctime = st.st_mtime_ns, st.st_ctime_ns
                        key = (st.st_ino, size, mtime, ctime)
                        digest = old.get(key) if old else None
                        if digest is not None:  # the file is as it was when last hashed
                            append([name.decode("latin-1"), "f", size, digest])
                            keep_stats(key)
                            keep_digest(digest)
                            hits += 1
                            continue
                        digest = None
                        if oneshot is not None and size <= SMALL_FILE:
                            # Inlined (open, read, close): this runs once per small file.
                            if fd < 0:
                                try:
                                    fd = open_at(name, open_flags, dir_fd=dir_fd)
                                except OSError:
                                    fd = _reopen(dir_fd, name)
                            data = b""
                            if fd >= 0:
                                try:
                                    data = read(fd, size + 1)  # +1: a file that grew shows
                                except OSError:
                                    data = b""
                                close(fd)
                            if len(data) == size:
                                digest = oneshot(data)
                                files_read += 1
                                bytes_read += size
                                if hasher.read_limit:
                                    hasher.throttle(size)
                        elif fd >= 0:
                            close(fd)  # opened first, but too large to read here
                        if digest is None:
                            complete = complete and quick
                            append([name.decode("latin-1"), "f", size, None, mtime])
                            continue
                        append([name.decode("latin-1"), "f", size, digest])
                        if remember and mtime < settled and ctime < settled:
                            keep_stats(key)
                            keep_digest(digest)
                        continue
                    if fd >= 0:  # a regular file when listed, something else by now
                        close(fd)
                    if stat.S_ISDIR(mode):
                        kind = "d"
                        if (same_dev is not None and st.st_dev != same_dev) or (
                            pseudo and (folder.rstrip(b"/") + b"/" + name) in pseudo
                        ):
                            kind = "p"
                        append([name.decode("latin-1"), kind, 0, None])
                    elif stat.S_ISLNK(mode):
                        kind, link = _read_link(dir_fd, name)
                        complete = complete and kind == "l"
                        append([name.decode("latin-1"), kind, 0, link])
                    else:
                        append([name.decode("latin-1"), "s", 0, None])
        finally:
            os.close(dir_fd)
        summary = {
            "complete": complete,
            "dev": dev,
            "read": files_read,
            "bytes": bytes_read,
            "hits": hits,
        }
        if runs:
            runs.append(_pack_run(entries))
            del entries[:]
            merger = _RunMerger(runs)
            listing = merger.chunk()
            summary["stream"] = 0  # a chunk: never to be settled as a whole listing
            if not merger.done:
                self.last_stream += 1
                self.streams[self.last_stream] = merger
                summary["stream"] = self.last_stream  # the rest comes on "next" requests
            summary.update(files="", subdirs=[], specials=0)
        else:
            entries.sort()  # names are unique, so this orders by name alone
            # For two equal scans: the files ("/" never occurs in a name), directories to
            # enter and specials, so the agent need not look at single entries.
            summary["files"] = "/".join([e[0] for e in entries if e[1] == "f" or e[1] == "l"])
            summary["subdirs"] = [e[0] for e in entries if e[1] == "d"]
            summary["specials"] = sum(1 for e in entries if e[1] == "s")
            # The entries go as JSON text that the agent compares with the other side's whole
            # and parses only when they differ.
            listing = json.dumps(entries, separators=(",", ":")).encode("ascii")
        # The cache row goes as the bytes to store (b"": unchanged).
        if (
            fields is not None
            and not row_packed[0]  # a huge directory's row is packed as it goes
            and row_digests == fields[1]
            and tuple(row_stats) == fields[0]
            and len(cache_row) % ROW_ITEM == 0
        ):
            row = cache_row  # every file as the row has it (a warm run): no need to pack it
        elif remember:
            _pack_into(row_packed, row_stats, row_digests)
            row = b"".join(row_packed[0] + row_packed[1])
        else:
            row = b""
        # "new_row": the row to store differs from the one sent (an empty one drops it).
        summary["new_row"] = bool(
            remember and (row != cache_row or not usable) and (row or cache_row)
        )
        if not summary["new_row"]:
            row = b""  # it need not travel back
        return summary, listing, row

    def next_chunk(self, stream):
        """The next entries of a streamed listing: [{"end": bool}, listing]."""
        merger = self.streams.get(stream)
        if merger is None:
            raise OSError(errno.EINVAL, "no listing %r in progress" % (stream,))
        listing = merger.chunk()
        if merger.done:
            del self.streams[stream]
        return [{"end": merger.done}, listing]

    def scan_dirs(self, dirs, rows):
        """scan_dir for each [path, options] of a batch with its cache row (b"" for none):
        [summaries], then each directory's listing and row. A directory that cannot be
        scanned has {"error": why} for its summary."""
        summaries, blobs = [], []
        for (path, options), row in zip(dirs, rows):
            try:
                summary, listing, new_row = self.scan_dir(path, options, row)
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                gone = exc.errno in (errno.ENOENT, errno.ENOTDIR)  # vanished since listed
                summary, listing, new_row = {"error": why, "gone": gone}, b"", b""
            summaries.append(summary)
            blobs.append(listing)
            blobs.append(new_row)
        return [summaries] + blobs

    def hash_files(self, path, names, sizes, mtimes, want_stats):
        """Digest the named files of one directory, each expected at the size and mtime the
        listing saw. Returns digests (None where it failed), {index: reason}, the stats of
        what was hashed as [ino, size, mtime, ctime, cacheable] when asked, and bytes read."""
        if self.hasher is None:
            raise OSError(errno.ENOTSUP, "no hash algorithm was agreed")
        folder = from_wire(path)
        count = len(names)
        digests = [None] * count
        errors = {}
        stats = [None] * count if want_stats else []
        total = 0
        try:
            dir_fd = _open_dir(folder)
        except OSError as exc:
            reason = "cannot open directory: " + os.strerror(exc.errno or 0)
            return digests, dict((str(i), reason) for i in range(count)), [], 0
        digest_fd = self.hasher.digest_fd
        # With xxh128sum, one run digests a batch of files opened here (and checked to be
        # regular: it reopens them through /dev/fd, where a FIFO would block).
        batch = 1
        if self.hasher.via == "xxh128sum" and os.path.isdir("/dev/fd"):
            batch = PROGRAM_BATCH
        now = time.time()
        try:
            for start in range(0, count, batch):
                opened = []
                try:
                    for i in range(start, min(start + batch, count)):
                        try:
                            fd = _open_at(dir_fd, from_wire(names[i]))
                        except OSError as exc:
                            errors[str(i)] = _open_error(exc)
                            continue
                        opened.append((i, fd))
                        if batch > 1 and not stat.S_ISREG(os.fstat(fd).st_mode):
                            errors[str(i)] = "is no longer a regular file"
                            opened.pop()
                            os.close(fd)
                    found = {}
                    if batch > 1 and opened:
                        found = self.hasher.digests_with_program([fd for _, fd in opened])
                    for i, fd in opened:
                        try:
                            if batch > 1:
                                if fd not in found:
                                    raise OSError(errno.EIO, "xxh128sum could not read it")
                                digest, nbytes = found[fd]
                            else:
                                # O_NONBLOCK at open: a file replaced by a FIFO must not hang.
                                digest, nbytes = digest_fd(fd, sizes[i])
                            after = os.fstat(fd)
                        except OSError as exc:
                            errors[str(i)] = "read error: " + (
                                os.strerror(exc.errno) if exc.errno != errno.EIO else str(exc)
                            )
                            continue
                        total += nbytes
                        # The listing's lstat is the "before"; this fstat is the "after".
                        if not stat.S_ISREG(after.st_mode):
                            errors[str(i)] = "is no longer a regular file"
                        elif after.st_size != nbytes:
                            errors[str(i)] = "changed while being read"
                        elif after.st_size != sizes[i] or after.st_mtime_ns != mtimes[i]:
                            errors[str(i)] = "changed during verification"
                        else:
                            digests[i] = digest
                        if want_stats:
                            newest = max(after.st_mtime_ns, after.st_ctime_ns) / 1e9
                            stats[i] = [after.st_ino, after.st_size, after.st_mtime_ns,
                                        after.st_ctime_ns, now - newest > RACY_SECONDS]  # fmt: skip
                finally:
                    for _, fd in opened:
                        os.close(fd)
        finally:
            os.close(dir_fd)
        return digests, errors, stats, total

    def handle(self, message):
        op, ident = message[0], message[1]
        try:
            if op == "hello":
                return ["ok", ident, self.hello(message[2])]
            if op == "stat":
                return ["ok", ident, self.stat_root(message[2])]
            if op == "scan":
                return ["ok", ident] + self.scan_dirs(message[2], message[3:])
            if op == "next":
                return ["ok", ident] + self.next_chunk(message[2])
            if op == "drop":  # the rest of a streamed listing is not wanted
                return ["ok", ident, self.streams.pop(message[2], None) is not None]
            if op == "hash":
                digests, errors, stats, total = self.hash_files(*message[2:7])
                return ["ok", ident, digests, errors, stats, total]
            return ["err", ident, "unknown request %r" % (op,)]
        except OSError as exc:
            return ["err", ident, os.strerror(exc.errno) if exc.errno else str(exc)]


def _pack_into(packed, stats, digests):
    """Moves the files of a cache row so far into `packed`, (stats, digests) as bytes: as
    lists of ints and strings they take five times the room."""
    if digests:
        row = pack_row(stats, digests)
        cut = 32 * len(digests)
        packed[0].append(row[:cut])
        packed[1].append(row[cut:])
        del stats[:], digests[:]


def _pack_run(entries):
    """A sorted run of entries as JSON texts of RUN_PIECE entries each (an ASCII str takes a
    byte a character; the lists it stands for take ten times that)."""
    entries.sort()
    dumps = json.dumps
    return [
        dumps(entries[i : i + RUN_PIECE], separators=(",", ":"))
        for i in range(0, len(entries), RUN_PIECE)
    ]


class _RunMerger(object):
    """Merges a huge directory's sorted runs into one sorted listing, a chunk at a time.

    Each step holds one decoded piece of each run: everything up to the smallest last name
    among the runs with more to come is final, and it is sorted in C (timsort merges the
    sorted pieces), so no Python loop runs per entry and only the pieces are ever decoded."""

    def __init__(self, runs):
        self.runs = [[pieces[::-1], []] for pieces in runs]  # pieces popped from the end
        self.done = False

    def chunk(self):
        window = []
        while len(window) < CHUNK_ENTRIES and not self.done:
            window += self._step()
        window.sort()
        return json.dumps(window, separators=(",", ":")).encode("ascii")

    def _step(self):
        for run in self.runs:
            if not run[1] and run[0]:
                run[1] = json.loads(run[0].pop())
        self.runs = [run for run in self.runs if run[1]]
        if not self.runs:
            self.done = True
            return []
        limits = [run[1][-1][0] for run in self.runs if run[0]]
        bound = min(limits) if limits else None
        out = []
        for run in self.runs:
            piece = run[1]
            cut = len(piece) if bound is None else _count_upto(piece, bound)
            out += piece[:cut]
            del piece[:cut]
        return out


class _RowCursor(object):
    """A huge directory's cache row, looked up without a dict of its entries (about 700
    bytes a file). A warm scan meets the files in the order the row was made in, readdir's
    order, which holds while the directory is unchanged: the file asked for is nearly
    always the next one in the row. After files were added or removed, a short look ahead
    finds the place again; a file not found near it is read again, which costs time but
    never a wrong answer."""

    LOOK_AHEAD = 64
    _ENTRY = struct.Struct("<" + _ROW_STATS)
    _INODE = struct.Struct("<Q")

    def __init__(self, row):
        self.row = row
        self.count = len(row) // ROW_ITEM
        self.next = 0  # where the next file is expected

    def __len__(self):
        return self.count

    def get(self, key):
        """The digest of a file with these (ino, size, mtime_ns, ctime_ns), or None."""
        row, at = self.row, self.next
        if at < self.count and self._ENTRY.unpack_from(row, 32 * at) == key:
            return self._digest(at)
        inode = self._INODE.unpack_from
        for i in range(at, min(self.count, at + self.LOOK_AHEAD)):
            if inode(row, 32 * i)[0] == key[0]:
                if self._ENTRY.unpack_from(row, 32 * i) == key:
                    return self._digest(i)
                self.next = i + 1  # the same file, changed since
                return None
        return None  # a new file, or far from where the row has it

    def _digest(self, index):
        self.next = index + 1
        start = 32 * self.count + 16 * index
        return self.row[start : start + 16].hex()


def _count_upto(entries, bound):
    """How many of the sorted entries have a name up to `bound`."""
    low, high = 0, len(entries)
    while low < high:
        middle = (low + high) // 2
        if entries[middle][0] <= bound:
            low = middle + 1
        else:
            high = middle
    return low


def _unstatable(name, exc):
    if exc.errno == errno.ENOENT:
        return [to_wire(name), "gone", 0, "vanished while listed"]
    return [to_wire(name), "e", 0, os.strerror(exc.errno or 0)]


def _read_link(dir_fd, name):
    try:
        return "l", to_wire(os.readlink(name, dir_fd=dir_fd))
    except OSError as exc:
        return "e", "cannot read link: " + os.strerror(exc.errno or 0)


def _open_error(exc):
    if exc.errno == errno.ENOENT:
        return "vanished before it was read"
    if exc.errno == errno.ELOOP:
        return "became a symbolic link"
    return "cannot open: " + os.strerror(exc.errno or 0)


def _open_dir(folder):
    """A descriptor of the directory at `folder`, however long its path: a path longer than
    PATH_MAX is opened a piece at a time, each piece relative to the one before, so the
    depth of a tree has no limit."""
    pieces = _pieces(folder)
    fd = os.open(pieces[0], _DIR_FLAGS)
    try:
        for piece in pieces[1:]:
            parent, fd = fd, -1
            try:
                fd = os.open(piece, _DIR_FLAGS, dir_fd=parent)
            finally:
                os.close(parent)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd


def _pieces(path):
    """`path` cut at slashes into pieces shorter than _PATH_STEP (one piece when it is)."""
    pieces = []
    while len(path) >= _PATH_STEP:
        cut = path.rfind(b"/", 1, _PATH_STEP)
        if cut < 0:  # no name is this long (NAME_MAX is 255): let the kernel say so
            break
        pieces.append(path[:cut])
        path = path[cut + 1 :]
    pieces.append(path)
    return pieces


def _stat_long(path):
    """os.stat (following symlinks) of a path of any length."""
    if len(path) < _PATH_STEP:
        return os.stat(path)
    parent, _, name = path.rstrip(b"/").rpartition(b"/")
    fd = _open_dir(parent or b"/")
    try:
        return os.stat(name, dir_fd=fd)
    finally:
        os.close(fd)


def _scandir(dir_fd):
    """The entries of an open directory: os.scandir(fd) from Python 3.7, a plain list of
    names on 3.6 (whose entries are then all lstat'ed)."""
    if _SCANDIR_FD:
        return os.scandir(dir_fd)
    return _Names(os.listdir(dir_fd))


class _Names(object):
    """A directory's names shaped like os.scandir's entries, for Python 3.6."""

    def __init__(self, names):
        self.entries = [_Name(name) for name in names]

    def __enter__(self):
        return iter(self.entries)

    def __exit__(self, *exc_info):
        return False


class _Name(object):
    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def is_file(self, follow_symlinks=True):
        return False  # unknown here: the caller lstats every entry


def _reopen(dir_fd, name):
    """After a failed open in the scan: the descriptor without O_NOATIME (which needs
    ownership of the file), or -1 when the file cannot be opened (the later hash request
    then says why)."""
    if not _NOATIME:
        return -1
    try:
        return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError:
        return -1


def _open_at(dir_fd, name):
    flags = _OPEN_FLAGS | _NOATIME
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        if not _NOATIME:
            raise
        # O_NOATIME needs ownership of the file; without it, open normally.
        return os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)


def serve(stdin, stdout):
    worker = Worker()
    while True:
        message = read_frame(stdin)
        if message is None:
            return
        write_frame(stdout, worker.handle(message))


def main():
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    # Nothing else may write to the protocol stream.
    sys.stdout = sys.stderr
    try:
        serve(stdin, stdout)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()

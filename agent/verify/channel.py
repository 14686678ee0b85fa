"""A connection to one helper process (local child or over SSH) and pools of them per side."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

from ..errors import TargetError
from .helper import FRAME_HEADER, decode_payload, encode_frame
from .wire import Reply

log = logging.getLogger(__name__)

HELPER_SOURCE = (Path(__file__).with_name("helper.py")).read_bytes()
# The first reply (hello) is tiny; a larger "length" is text a login script printed on the
# SSH session's stdout before the helper started, which would otherwise stall the reader.
FIRST_FRAME_MAX = 1 << 20
# A reply pipe is widened to this (Linux's default limit for a user): a helper writing a
# listing of hundreds of KiB then blocks, and wakes, a few times instead of once per 64 KiB,
# and each wake-up costs both processes a context switch.
PIPE_SIZE = 1 << 20
READ_SIZE = PIPE_SIZE  # one read takes whatever the pipe holds

# Turns what a dead helper left behind (its stderr, its exit status or None) into one line.
Explain = Callable[[str, "int | None"], str]


def explain_exit(stderr: str, code: int | None) -> str:
    """The default for a local helper: its last stderr line, else its exit status."""
    lines = stderr.strip().splitlines()
    if lines:
        return lines[-1]
    return f"helper exited with status {code}" if code is not None else "connection lost"


def bootstrap_command(python: str) -> list[str]:
    """argv that starts a helper whose source arrives first on stdin, then the protocol."""
    code = (
        "import sys;"
        f"exec(compile(sys.stdin.buffer.read({len(HELPER_SOURCE)}),'smsagent-helper','exec'))"
    )
    return [python, "-c", code]


class Channel:
    """A helper process spoken to with length-prefixed JSON frames over non-blocking pipes.

    All I/O happens on the caller's thread through `wait_for_replies`: no reader threads, so
    no fight for the GIL, and a helper busy writing a large listing can never deadlock with
    the agent writing a request, because unsent requests wait in `_out`.
    """

    def __init__(self, argv: Sequence[str], label: str, explain: Explain = explain_exit):
        self.label = label
        self.explain = explain
        self.outstanding = 0
        self.alive = True
        self._next_id = 0
        self._stderr_tail = b""
        self._answered = False  # a first frame arrived: the stream is the helper's
        self._garbage = b""  # what came instead of the first frame, if anything
        try:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # a Ctrl-C at the terminal reaches the agent only
            )
        except OSError as exc:
            raise TargetError(f"{label}: cannot start {argv[0]}: {exc.strerror}") from None
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.in_fd = self.process.stdin.fileno()
        self.out_fd = self.process.stdout.fileno()
        os.set_blocking(self.in_fd, False)
        os.set_blocking(self.out_fd, False)
        _widen_pipe(self.out_fd)
        self._out = bytearray(HELPER_SOURCE)
        self._in = bytearray()
        # Replies are read into this one buffer: os.read(fd, n) allocates n bytes each call,
        # which for a large n costs more than the read itself.
        self._scratch = bytearray(READ_SIZE)
        self._stderr_thread = threading.Thread(
            target=self._drain_stderr, name=f"{label}-stderr", daemon=True
        )
        self._stderr_thread.start()
        self.flush()

    def send(self, op: str, *args: Any, attach: Sequence[bytes] = ()) -> int:
        """Queue one request; its reply comes from `wait_for_replies` with the returned id.
        `attach` travels raw after the request and arrives as its last elements."""
        self._next_id += 1
        ident = self._next_id
        self._out += encode_frame([op, ident, *args, *attach])
        self.outstanding += 1
        return ident  # written by the next wait_for_replies, with whatever else is queued

    @property
    def pending_output(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        while self._out and self.alive:
            try:
                written = os.write(self.in_fd, self._out)
            except BlockingIOError:
                return
            except OSError:
                self.alive = False  # the reader side sees the end of the stream next
                return
            del self._out[:written]

    def read_available(self) -> list[Reply]:
        try:
            count = os.readv(self.out_fd, [self._scratch])
        except BlockingIOError:
            return []
        except OSError:
            count = 0
        if not count:
            self.alive = False
            return [Reply(self, None)]
        buf = self._in
        with memoryview(self._scratch) as data:
            buf += data[:count]
        replies = []
        offset = 0
        while len(buf) - offset >= 4:
            (size,) = FRAME_HEADER.unpack_from(buf, offset)
            if not self._answered and size > FIRST_FRAME_MAX:
                self._garbage = bytes(buf[:200])
                self.alive = False
                self.process.kill()
                return [Reply(self, None)]
            self._answered = True
            if len(buf) - offset - 4 < size:
                break
            replies.append(Reply(self, decode_payload(bytes(buf[offset + 4 : offset + 4 + size]))))
            self.outstanding -= 1  # the one place that counts answers off
            offset += 4 + size
        if offset:
            del buf[:offset]
        return replies

    def _drain_stderr(self) -> None:
        for line in self.process.stderr or ():
            self._stderr_tail = (self._stderr_tail + line)[-4096:]

    def failure(self) -> str:
        """Why the helper stopped answering, from its exit status and stderr, in one line."""
        try:
            code: int | None = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        # The process has exited, but its last stderr lines may still be in the pipe.
        self._stderr_thread.join(timeout=2)
        if self._garbage:
            text = self._garbage.decode("utf-8", "replace").strip()
            shown = text.splitlines()[0][:80] if text else repr(self._garbage[:20])
            return (
                f"unexpected output instead of the helper's first answer: {shown!r} "
                "(a login script that prints text breaks non-interactive sessions)"
            )
        return self.explain(self._stderr_tail.decode("utf-8", "replace"), code)

    def hang_up(self) -> None:
        """Close the request stream: an idle helper exits at once, a busy one after its job."""
        self.alive = False
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]

    def reap(self, deadline: float) -> None:
        """Wait for the helper until `deadline` (monotonic), then kill it."""
        self._drain_until_eof(deadline)
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self.process.stdout.close()  # type: ignore[union-attr]

    def _drain_until_eof(self, deadline: float) -> None:
        # A helper that exits closes its stdout. Waiting for that end of stream is prompt,
        # where Popen.wait with a timeout polls in sleeps of growing length (tens of ms at
        # the end of every run); replies still on their way are dropped.
        with contextlib.suppress(OSError, ValueError):
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.out_fd], [], [], left)[0]:
                    return
                if not os.read(self.out_fd, 1 << 16):
                    return

    def close(self, grace: float = 2.0) -> None:
        self.hang_up()
        self.reap(time.monotonic() + grace)


def _widen_pipe(fd: int) -> None:
    """Best effort, on Linux only (the command's number means nothing elsewhere; Python
    names it from 3.10 on), and never past /proc/sys/fs/pipe-max-size."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)


def wait_for_replies(channels: Sequence[Channel], timeout: float) -> list[Reply]:
    """Send what is queued and collect what has arrived, waiting at most `timeout` seconds."""
    poller = select.poll()
    owners: dict[int, tuple[Channel, bool]] = {}
    for channel in channels:
        channel.flush()
    for channel in channels:
        if not channel.alive and not channel.pending_output:
            continue
        poller.register(channel.out_fd, select.POLLIN)
        owners[channel.out_fd] = (channel, False)
        if channel.pending_output:
            poller.register(channel.in_fd, select.POLLOUT)
            owners[channel.in_fd] = (channel, True)
    if not owners:
        return []
    replies: list[Reply] = []
    for fd, _event in poller.poll(timeout * 1000):
        channel, writable = owners[fd]
        if writable:
            channel.flush()
        else:
            replies.extend(channel.read_available())
    return replies


class Pool:
    """The helpers that serve one side of a comparison; requests go to the least busy."""

    def __init__(self, channels: list[Channel], *, scope: str, hello: dict[str, Any]):
        self.channels = channels
        self.scope = scope  # names this side's files in the hash cache
        self.algorithm: str = hello["algorithm"]
        self.via: str = hello.get("via", "")

    def pick(self) -> Channel:
        return min((c for c in self.channels if c.alive), key=lambda c: c.outstanding)

    @property
    def alive(self) -> bool:
        return any(c.alive for c in self.channels)

    def close(self, grace: float = 2.0) -> None:
        """Stop every helper within one shared grace period (a helper hashing a large file
        is killed rather than waited for)."""
        for channel in self.channels:
            channel.hang_up()
        deadline = time.monotonic() + grace
        for channel in self.channels:
            channel.reap(deadline)


def call(channel: Channel, op: str, *args: Any, timeout: float) -> Any:
    """A request answered before the pipeline starts (hello, root stat)."""
    ident = channel.send(op, *args)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            channel.process.kill()
            raise TargetError(f"{channel.label}: no answer within {timeout:g}s")
        for reply in wait_for_replies([channel], min(left, 1.0)):
            if reply.ident is None:
                raise TargetError(f"{channel.label}: {channel.failure()}")
            if reply.ident != ident:
                continue
            if reply.error is not None:
                raise TargetError(f"{channel.label}: {reply.error}")
            return reply.values[0]


def spawn(argv: Sequence[str], *, label: str, workers: int, explain: Explain = explain_exit
          ) -> list[Channel]:  # fmt: skip
    """Start `workers` helpers without waiting for them, so that several pools (or several
    machines) start up at once; `greet` then waits for them."""
    channels: list[Channel] = []
    try:
        for _ in range(max(1, workers)):
            channels.append(Channel(argv, label, explain))
    except BaseException:
        for channel in channels:
            channel.close()
        raise
    return channels


def greet(
    channels: list[Channel],
    *,
    label: str,
    scope: str,
    algorithms: Sequence[str],
    read_limit: int,
    timeout: float,
) -> Pool:
    """Agree on a hash algorithm with started helpers (of one machine) and pool them."""
    hello: dict[str, Any] = {}
    try:
        for index, channel in enumerate(channels):
            hello = call(
                channel,
                "hello",
                {"algorithms": list(algorithms), "read_limit": read_limit},
                timeout=timeout,
            )
            if hello.get("algorithm") is None:
                raise TargetError(f"{label}: cannot compute any of {', '.join(algorithms)} there")
            if index == 0:
                algorithms = [hello["algorithm"]]
    except BaseException:
        for channel in channels:
            channel.close()
        raise
    return Pool(channels, scope=scope, hello=hello)


def start_pool(
    argv: Sequence[str],
    *,
    label: str,
    scope: str,
    workers: int,
    algorithms: Sequence[str],
    read_limit: int,
    timeout: float,
    explain: Explain = explain_exit,
) -> Pool:
    """Start `workers` helpers with the same command and agree on a hash algorithm."""
    channels = spawn(argv, label=label, workers=workers, explain=explain)
    return greet(
        channels,
        label=label,
        scope=scope,
        algorithms=algorithms,
        read_limit=read_limit,
        timeout=timeout,
    )


def local_command() -> list[str]:
    return bootstrap_command(sys.executable)


def default_workers() -> int:
    """Helpers per side: half the CPUs (the other side gets the other half), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) // 2))

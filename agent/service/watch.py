"""Watch the source directories with watchdog and report each one once its changes settle.

The only module that imports watchdog. inotify is a best effort: when the observer cannot start,
dies, or the kernel's watch limit runs out (watchdog then silently skips new subdirectories),
the watcher logs one warning and reports itself unhealthy so the daemon falls back to the interval.
`WatchControl` keeps the daemon's one watcher across reloads.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from ..config import AgentConfig
from ..names import counted
from ..verify.plan import exclude_rules

log = logging.getLogger(__name__)

# Only changes of content or names. Opens and reads are left out so the verification's own
# reads never wake the watcher; a directory's "modified" is left out because every change
# inside it is reported on its own path, where the excludes can judge it.
WATCHED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileModifiedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
]

Excluded = Callable[[bytes, bool], bool]  # (path relative to the directory, is_dir) -> excluded


@dataclass(frozen=True)
class WatchedDir:
    """One configured directory and the exclude rules the engine applies inside it."""

    path: str
    excluded: Excluded = lambda rel, is_dir: False  # noqa: E731


def _within(path: bytes, root: bytes) -> bytes | None:
    """`path` relative to `root` (b"" for the root itself), or None when outside it."""
    if root == b"/":
        return path.lstrip(b"/")
    if path == root:
        return b""
    if path.startswith(root + b"/"):
        return path[len(root) + 1 :]
    return None


def excluded_path(rel: bytes, is_dir: bool, excluded: Excluded) -> bool:
    """A path is skipped when it or any directory above it is excluded, as in the walk."""
    parts = rel.split(b"/")
    for depth in range(1, len(parts)):
        if excluded(b"/".join(parts[:depth]), True):
            return True
    return excluded(rel, is_dir)


def affected(
    path: bytes, is_dir: bool, dirs: Sequence[WatchedDir], ignored: Sequence[bytes] = ()
) -> list[str]:
    """The configured directories whose verification a change at `path` could alter."""
    if any(_within(path, root) is not None for root in ignored):
        return []
    hits = []
    for d in dirs:
        rel = _within(path, os.fsencode(d.path))
        if rel is None:
            continue
        if rel and excluded_path(rel, is_dir, d.excluded):
            continue
        hits.append(d.path)
    return hits


class Debouncer:
    """Calls `fire(key)` once a key has had `quiet` seconds without `touch`, or `max_wait` in all.

    The cap keeps a file that is written without pause (a busy log) from postponing a
    verification forever. `fire` runs on the debouncer's own thread.
    """

    def __init__(
        self,
        quiet: float,
        fire: Callable[[str], None],
        *,
        max_wait: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.quiet = quiet
        self.max_wait = max_wait if max_wait is not None else max(10 * quiet, quiet)
        self._fire = fire
        self._clock = clock
        self._cond = threading.Condition()
        self._first: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="smsagent-debounce", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def touch(self, key: str) -> None:
        with self._cond:
            now = self._clock()
            self._first.setdefault(key, now)
            self._last[key] = now
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _deadline(self, key: str) -> float:
        return min(self._last[key] + self.quiet, self._first[key] + self.max_wait)

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                now = self._clock()
                ready = [k for k in self._last if self._deadline(k) <= now]
                for key in ready:
                    del self._last[key], self._first[key]
                if not ready:
                    deadlines = [self._deadline(k) for k in self._last]
                    self._cond.wait(min(deadlines) - now if deadlines else None)
                    continue
            for key in ready:
                try:
                    self._fire(key)
                except Exception:  # a failing callback must not stop later changes
                    log.exception("change handler failed for %s", key)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.watcher.saw(event)


class Watcher:
    """inotify observers on the configured directories feeding one debouncer."""

    def __init__(
        self,
        dirs: Sequence[WatchedDir],
        *,
        debounce: float,
        on_change: Callable[[str], None],
        ignored: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.dirs = tuple(dirs)
        # Both spellings: under DynamicUser=yes /var/lib/smsagent is a symlink into
        # /var/lib/private, and inotify reports the path it walked, not the link.
        self.ignored = tuple(
            {os.fsencode(f(p)) for p in ignored for f in (os.path.abspath, os.path.realpath)}
        )
        self.debouncer = Debouncer(debounce, on_change, clock=clock)
        self._observer: InotifyObserver | None = None
        self._failed = False

    def start(self) -> bool:
        """Start watching; False (after one warning) when inotify cannot be used."""
        observer = InotifyObserver()
        handler = _Handler(self)
        try:
            for d in self.dirs:
                observer.schedule(handler, d.path, recursive=True, event_filter=WATCHED_EVENTS)
            observer.start()
        except OSError as exc:
            self._stop_observer(observer)
            self._fail(f"cannot watch for changes ({_describe(exc)})")
            return False
        self._observer = observer
        self.debouncer.start()
        return self.check()

    def check(self) -> bool:
        """Still watching everything? Else warn once, stop, and return False for good."""
        if self._failed or self._observer is None:
            return False
        dead = [e.watch.path for e in self._observer.emitters if not e.is_alive()]
        if not self._observer.is_alive() or dead:
            where = ", ".join(str(p) for p in dead) or "the observer"
            self._fail(f"the change watcher stopped ({where})")
            return False
        for d in self.dirs:
            problem = _probe_watch_room(d.path)
            if problem is not None:
                self._fail(f"{problem} while watching {d.path}")
                return False
        return True

    def stop(self) -> None:
        if self._observer is not None:
            self._stop_observer(self._observer)
            self._observer = None
        self.debouncer.stop()

    def saw(self, event: FileSystemEvent) -> None:
        paths = [event.src_path]
        if getattr(event, "dest_path", None):
            paths.append(event.dest_path)
        for path in paths:
            for directory in affected(os.fsencode(path), event.is_directory, self.dirs,
                                      self.ignored):  # fmt: skip
                self.debouncer.touch(directory)

    def _fail(self, problem: str) -> None:
        if not self._failed:
            log.warning(
                "%s; changes are no longer watched and directories are verified on the "
                "schedule.interval only (raise fs.inotify.max_user_watches, or exclude "
                "large trees, then reload)",
                problem,
            )
        self._failed = True
        if self._observer is not None:
            self._stop_observer(self._observer)
            self._observer = None
        self.debouncer.stop()

    @staticmethod
    def _stop_observer(observer: InotifyObserver) -> None:
        try:
            observer.stop()
            if observer.is_alive():
                observer.join(5)
        except Exception:  # stopping is best effort; a broken observer must not crash us
            log.debug("stopping the observer failed", exc_info=True)


def watched_dirs(config: AgentConfig) -> list[WatchedDir]:
    """The configured directories, each with the exclude rules the engine applies inside it."""
    return [WatchedDir(d.path, exclude_rules(config, d).excluded) for d in config.directories]


def _inputs(config: AgentConfig) -> tuple[object, ...]:
    """What a watcher is made from."""
    s = config.schedule
    return (s.watch, s.debounce, config.directories, config.exclude, config.state_dir)


class WatchControl:
    """The daemon's one watcher across reloads.

    Adding a watch for every directory of a big tree takes a while, and the daemon's loop must
    keep answering systemd's watchdog meanwhile: each watcher starts on a thread of its own and
    is handed back to the loop through `adopt()`. A watcher started for a configuration that
    has since been replaced (an older generation) is stopped instead of adopted."""

    def __init__(self, wake: Callable[[], None]):
        self._wake = wake  # tells the daemon's loop that a start finished or a change settled
        self._lock = threading.Lock()  # guards what other threads hand back
        self._started: list[tuple[int, Watcher, bool]] = []
        self._changed: list[str] = []
        self._generation = 0
        self._closed = False
        self.current: Watcher | None = None

    def follow(self, config: AgentConfig, old: AgentConfig | None = None) -> None:
        """Watch `config`'s directories from now on, or nothing if it does not watch. After a
        reload from `old`, a healthy watcher stays when nothing it is made from changed."""
        if old is not None and self.current is not None and _inputs(config) == _inputs(old):
            return
        dirs = watched_dirs(config) if config.schedule.watch else []
        with self._lock:
            self._generation += 1
            generation = self._generation
        self._drop_current()
        if not dirs:
            return
        debounce, ignored = config.schedule.debounce, [str(config.state_dir)]
        watcher = Watcher(dirs, debounce=debounce, on_change=self._settled, ignored=ignored)

        def start() -> None:
            ok = watcher.start()
            with self._lock:
                late = self._closed
                if not late:
                    self._started.append((generation, watcher, ok))
            if late:
                watcher.stop()  # the daemon stopped while this watcher was starting
            self._wake()

        threading.Thread(target=start, name="smsagent-watch-start", daemon=True).start()

    def take_changed(self) -> list[str]:
        """The directories whose changes have settled since the last call."""
        with self._lock:
            changed, self._changed = self._changed, []
        return changed

    def _settled(self, path: str) -> None:
        log.info(
            "%s: changes settled, verifying it again", path, extra={"ctx": {"directory": path}}
        )
        with self._lock:
            self._changed.append(path)
        self._wake()

    def adopt(self) -> None:
        """Take the watchers whose start finished: keep the newest, stop the rest."""
        with self._lock:
            started, self._started = self._started, []
            generation = self._generation
        for born, watcher, ok in started:
            if ok and born == generation:
                self._drop_current()
                self.current = watcher
                log.info("watching %s for changes",
                         counted(len(watcher.dirs), "directory", "directories"))  # fmt: skip
            else:
                watcher.stop()  # failed (it warned), or made for a config since replaced

    def check(self) -> None:
        """Drop a watcher that stopped working (it warned); the interval still applies."""
        if self.current is not None and not self.current.check():
            self._drop_current()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._generation += 1
            late, self._started = self._started, []
        self._drop_current()
        for _, watcher, _ in late:
            watcher.stop()

    def _drop_current(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the inotify watch limit fs.inotify.max_user_watches is reached"
    if exc.errno == errno.EMFILE:
        return "the inotify instance limit fs.inotify.max_user_instances is reached"
    return f"{exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}"


_libc = ctypes.CDLL(None, use_errno=True)
_IN_CLOEXEC = 0o2000000
_IN_CREATE = 0x100


def _probe_watch_room(path: str) -> str | None:
    """Whether one more inotify watch can be added (watchdog ignores ENOSPC on subdirectories)."""
    fd = _libc.inotify_init1(_IN_CLOEXEC)
    if fd < 0:
        return None  # out of instances or fds: says nothing about our own watches
    try:
        if _libc.inotify_add_watch(fd, os.fsencode(path), _IN_CREATE) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                return "the inotify watch limit fs.inotify.max_user_watches is reached"
        return None
    finally:
        os.close(fd)

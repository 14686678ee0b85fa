"""Where verdicts go: counted into a directory's tally and written to the report, with one
escaping rule (agent/names.py) for the paths shown in reports, logs and JSON."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from typing import IO, Callable, Protocol

from ..errors import AgentError
from ..model import DirCounts, Verdict
from ..names import escape

MAX_ERROR_SAMPLES = 50  # reasons kept with a directory's result

# Told as a directory's work goes on: dir_check, files settled and bytes hashed so far.
ProgressSink = Callable[[str, int, int], None]


class ReportSink(Protocol):
    """Takes every compared path's verdict (ReportWriter writes them to a file)."""

    def __call__(self, dir_check: str, verdict: Verdict, rel: bytes, reason: str | None) -> None:
        """One path; `rel` is relative to the verified directory `dir_check`."""

    def many(self, dir_check: str, verdict: Verdict, folder: bytes, names: str) -> None:
        """Files of one folder with the same verdict and no reason: `names` are joined by
        "/" (which no file name holds), each byte one latin-1 character."""


def join_display(dir_check: str, rel: bytes) -> str:
    """The source-side path of an entry, escaped: `/var` + `log/x` -> `/var/log/x`."""
    base = escape(dir_check).rstrip("/")
    return f"{base}/{escape(rel)}" if rel else (base or "/")


def open_report(path: str) -> IO[str]:
    """Where `--report` goes: "-" is stdout, else the file, created or emptied."""
    if path == "-":
        return sys.stdout  # the table then goes to stderr
    try:
        # A large buffer: a write per 8 KiB stalled the engine on a busy disk.
        return open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20)  # noqa: SIM115
    except OSError as exc:
        raise AgentError(f"--report {path}: {exc.strerror}") from None


class ReportWriter:
    """Writes one line per compared path in the style of `rclone check --combined`:
    `= ` identical, `* ` different, `+ ` missing at the target, `- ` more at the target,
    `! ` could not be verified (followed by a tab and the reason)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        # The first write error (a full disk, /dev/full, a reader that went away): the
        # report stops there, the run goes on.
        self.error: OSError | None = None

    def _write(self, text: str) -> None:
        if self.error is None:
            try:
                self.stream.write(text)
            except OSError as exc:
                self.error = exc

    def comment(self, text: str) -> None:
        """A `# ` line, which no verdict line starts with."""
        self._write(f"# {text}\n")

    def finish(self, *, close: bool) -> None:
        """Write out what is buffered (and close the file), keeping a write error."""
        try:
            self.stream.flush()
        except OSError as exc:
            self.error = self.error or exc
        if close:
            try:
                self.stream.close()
            except OSError as exc:  # a failed flush is tried again by close
                self.error = self.error or exc

    def __call__(self, dir_check: str, verdict: Verdict, rel: bytes, reason: str | None) -> None:
        line = f"{verdict.value} {join_display(dir_check, rel)}"
        if reason:
            line += f"\t{reason}"
        self._write(line + "\n")

    def many(self, dir_check: str, verdict: Verdict, folder: bytes, names: str) -> None:
        """The lines for files of one folder (see ReportSink.many), in one write."""
        head = f"{verdict.value} {escape(dir_check).rstrip('/')}/"
        if folder:
            head += escape(folder) + "/"
        if names.isascii() and names.isprintable() and "\\" not in names:
            # Nothing to escape, the common case: the lines are made in one step.
            text = head + names.replace("/", "\n" + head) + "\n"
        else:
            text = "".join([f"{head}{escape(n.encode('latin-1'))}\n" for n in names.split("/")])
        self._write(text)


@dataclass
class Tally:
    """One directory's counts as verdicts come in (the fields of DirCounts, and samples)."""

    total: int = 0
    identical: int = 0
    different: int = 0
    missing: int = 0
    more: int = 0
    errors: int = 0
    skipped_special: int = 0
    bytes_hashed: int = 0
    files_hashed: int = 0
    cache_hits: int = 0
    samples: list[str] = field(default_factory=list)  # the first reasons, for the result

    def add(self, verdict: Verdict, reason: str | None = None) -> None:
        if verdict is Verdict.IDENTICAL:
            self.identical += 1
            self.total += 1
        elif verdict is Verdict.MISSING:
            self.missing += 1
            self.total += 1
        elif verdict is Verdict.MORE:
            self.more += 1
            if reason:  # something at the target that could not be examined
                self.errors += 1
        else:
            self.different += 1
            self.total += 1
            if verdict is Verdict.ERROR:
                self.errors += 1

    def freeze(self) -> DirCounts:
        return DirCounts(**{f.name: getattr(self, f.name) for f in fields(DirCounts)})


class ResultSink:
    """Where one directory's verdicts go: its tally, the report and the progress display."""

    def __init__(self, dir_check: str, report: ReportSink | None, progress: ProgressSink | None):
        self.dir_check = dir_check
        self.report = report
        self.progress = progress
        self.tally = Tally()
        self.files_done = 0  # settled, for the progress display
        self.bytes_done = 0

    def read(self, files: int, nbytes: int, *, hits: int = 0) -> None:
        """Files the helpers digested (during a scan or on request), and cache hits."""
        self.tally.files_hashed += files
        self.tally.bytes_hashed += nbytes
        self.tally.cache_hits += hits
        self.bytes_done += nbytes

    def identical(self, folder: bytes, names: str) -> int:
        """Count and report identical files of one folder in bulk (`names` as in
        ReportSink.many); returns how many there were."""
        if not names:
            return 0
        count = names.count("/") + 1
        self.tally.identical += count
        self.tally.total += count
        if self.report is not None:
            self.report.many(self.dir_check, Verdict.IDENTICAL, folder, names)
        return count

    def verdict(self, verdict: Verdict, rel: bytes, reason: str | None) -> None:
        tally = self.tally
        tally.add(verdict, reason)
        if reason and len(tally.samples) < MAX_ERROR_SAMPLES:
            tally.samples.append(f"{escape(rel)}: {reason}")
        if self.report is not None:
            self.report(self.dir_check, verdict, rel, reason)

    def settled(self, files: int) -> None:
        """`files` more files have their verdicts."""
        self.files_done += files

    def tell_progress(self) -> None:
        if self.progress is not None:
            self.progress(self.dir_check, self.files_done, self.bytes_done)

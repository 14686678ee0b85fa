"""A real systemd booted as PID 1 in a systemd-nspawn container, for tests of the shipped unit.

The Debian tree comes from debootstrap with the mirror apt uses here, and is cached between runs
(keyed by suite and package list). Each run boots an overlay of it, so the cache is never
written, and leaves nothing behind: the container is powered off, the overlay unmounted and its
directory removed. The container has its own network namespace with only a loopback.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

SUITE = "bookworm"
PACKAGES = (
    "systemd", "systemd-sysv", "dbus", "libnss-systemd", "python3", "python3-venv",
    "ca-certificates", "procps", "openssh-server", "openssh-client", "xxhash",
)  # fmt: skip
CACHE_ROOT = Path(os.environ.get("SMSAGENT_CI_CACHE", "/var/cache/smsagent-ci"))
# Inside the container: a clean environment, not this process's (pip and TLS settings).
CLEAN_ENV = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
             "LANG=C.UTF-8", "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0")  # fmt: skip


def tree_key() -> str:
    digest = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()
    return f"{SUITE}-{digest[:12]}"


def apt_mirror() -> str | None:
    """The first Debian mirror apt uses here for SUITE (one-line or deb822 sources)."""
    if os.environ.get("SMSAGENT_CI_MIRROR"):
        return os.environ["SMSAGENT_CI_MIRROR"]
    files = ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*"))]
    for name in files:
        with contextlib.suppress(OSError):
            text = Path(name).read_text()
            if name.endswith(".sources"):
                for stanza in re.split(r"\n\s*\n", text):
                    fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
                    suites = fields.get("Suites", "").split()
                    if "deb" in fields.get("Types", "").split() and SUITE in suites:
                        return fields.get("URIs", "").split()[0]
            else:
                for line in text.splitlines():
                    words = re.sub(r"\[[^]]*\]", "", line).split()
                    if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                        return words[1]
    return None


def apt_proxy() -> str | None:
    """apt's own HTTP proxy setting, so debootstrap goes the same way."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dump = subprocess.run(["apt-config", "dump"], capture_output=True, text=True, timeout=30)
        found = re.search(r'^Acquire::http::Proxy "([^"]+)";', dump.stdout, re.M)
        if found and found.group(1).upper() != "DIRECT":
            return found.group(1)
    return None


def _cgroup_writable() -> str | None:
    """nspawn makes the container's cgroup below ours: try the same on each hierarchy it uses."""
    unified = "/sys/fs/cgroup" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            base = unified or "/sys/fs/cgroup/unified"
        elif controllers == "name=systemd":
            base = "/sys/fs/cgroup/systemd"
        else:
            continue
        probe = Path(base + path.rstrip("/")) / f"smsagent-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as exc:
            return f"the cgroup hierarchy {base} is not writable ({exc.strerror})"
    return None


def missing_requirement() -> str | None:
    """Why a container cannot be booted here, or None when it can."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    if shutil.which("systemd-nspawn") is None:
        return "systemd-nspawn is not installed (apt-get install systemd-container)"
    problem = _cgroup_writable()
    if problem:
        return problem
    if (CACHE_ROOT / tree_key()).is_dir():
        return None
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed and no cached tree exists"
    mirror = apt_mirror()
    if mirror is None:
        return f"no Debian {SUITE} mirror found in /etc/apt/sources.list*"
    proxy = apt_proxy()
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy} if proxy else {})
    )
    try:
        opener.open(f"{mirror.rstrip('/')}/dists/{SUITE}/Release", timeout=20).close()
    except OSError as exc:
        return f"the Debian mirror {mirror} is unreachable: {exc}"
    return None


def cached_tree() -> Path:
    """The debootstrapped tree, built once (about a minute and a half) and kept in CACHE_ROOT."""
    tree = CACHE_ROOT / tree_key()
    if tree.is_dir():
        return tree
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with open(CACHE_ROOT / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building the same tree
        if tree.is_dir():
            return tree
        partial = CACHE_ROOT / f"{tree.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        env = dict(os.environ)
        proxy = apt_proxy()
        if proxy:
            env["http_proxy"] = proxy
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}",
                   SUITE, str(partial), str(apt_mirror())]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise RuntimeError(f"debootstrap failed ({done.returncode}):\n{tail}")
        _trust_host_cas(partial)
        partial.rename(tree)  # only a finished tree ever has the final name
    return tree


def _trust_host_cas(root: Path) -> None:
    """The CAs this host added (a package or TLS proxy's, say) are trusted inside too."""
    extra = sorted(glob.glob("/usr/local/share/ca-certificates/**/*.crt", recursive=True))
    if not extra:
        return
    into = root / "usr/local/share/ca-certificates/host"
    into.mkdir(parents=True, exist_ok=True)
    for cert in extra:
        shutil.copy(cert, into / Path(cert).name)
    subprocess.run(["chroot", str(root), "update-ca-certificates"], capture_output=True,
                   check=True, timeout=120)  # fmt: skip


class Container:
    """A booted container; `sh` runs a script inside it as root."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes], pid1: int) -> None:
        self.root = root  # the container's / as seen from the host
        self.process = process
        self.pid1 = pid1

    def sh(
        self, script: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        command = ["nsenter", "-t", str(self.pid1), "-a", "--", "/usr/bin/env", "-i",
                   *CLEAN_ENV, "/bin/sh", "-ec", script]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(
                f"in the container, exit {done.returncode}: {script}\n{done.stdout}{done.stderr}"
            )
        return done


def _container_init(nspawn: int) -> int | None:
    """The pid (as the host sees it) of the container's PID 1, a descendant of nspawn."""
    parents: dict[int, int] = {}
    inits: list[int] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{entry}/status").read_text()
            parents[int(entry)] = int(re.search(r"^PPid:\s*(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
            nspid = re.search(r"^NSpid:\s*(.*)$", status, re.M)
            inner = nspid.group(1).split() if nspid else []
            # nspawn's own child is PID 1 for a moment too, before it becomes systemd.
            if len(inner) > 1 and inner[-1] == "1" and "Name:\tsystemd\n" in status:
                inits.append(int(entry))
    for pid in inits:
        up = pid
        while up in parents and up > 1:
            up = parents[up]
            if up == nspawn:
                return pid
    return None


@contextlib.contextmanager
def booted(tree: Path, prepare: object = None, *, log: Path | None = None) -> Iterator[Container]:
    """Boot an overlay of `tree`; `prepare(root)` may add files first. Cleans up on the way out."""
    work = Path(tempfile.mkdtemp(prefix="smsagent-nspawn-", dir="/var/tmp"))
    root, upper, scratch = work / "root", work / "upper", work / "work"
    for d in (root, upper, scratch):
        d.mkdir()
    machine = f"smsagent-ci-{secrets.token_hex(4)}"
    options = f"lowerdir={tree},upperdir={upper},workdir={scratch}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)], check=True)
    process: subprocess.Popen[bytes] | None = None
    try:
        # minbase has no /etc/hosts, and ssh cannot resolve localhost without one.
        (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n::1\tlocalhost\n")
        if callable(prepare):
            prepare(root)
        with open(log or work / "console.log", "wb") as out:
            process = subprocess.Popen(
                ["systemd-nspawn", "-D", str(root), f"--machine={machine}", "--boot",
                 "--register=no", "--keep-unit", "--private-network"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        pid1 = None
        deadline = time.monotonic() + 60
        while pid1 is None and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            pid1 = _container_init(process.pid)
        if pid1 is None:
            raise RuntimeError(f"the container did not boot: see {log or work / 'console.log'}")
        container = Container(root, process, pid1)
        # PID 1 opens its control socket a moment after it starts.
        wait = "for i in $(seq 300); do [ -S /run/systemd/private ] && break; sleep 0.2; done"
        state = container.sh(f"{wait}; systemctl is-system-running --wait", check=False)
        if state.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"the container's systemd did not come up: {state}")
        yield container
    finally:
        _power_off(process)
        subprocess.run(["umount", str(root)], capture_output=True)
        left = _mounts_under(work)
        if not left:
            shutil.rmtree(work, ignore_errors=True)
    if left:
        raise RuntimeError(f"mounts left behind under {work}: {left}")


def _power_off(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM makes nspawn shut the container down cleanly; SIGKILL only if that hangs."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)


def _mounts_under(path: Path) -> list[str]:
    found = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True)
    return [m for m in found.stdout.splitlines() if m == str(path) or m.startswith(f"{path}/")]

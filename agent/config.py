"""Read the agent's YAML configuration and turn it into a validated, frozen `AgentConfig`.

Two steps, as in pypa/build: `load_config` only does I/O and turns read and parse errors into
`ConfigError` naming the file; `parse_config` is pure and checks every key, reporting all
problems at once, each with its dotted key and a "did you mean" hint for typos.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from .errors import ConfigError
from .model import MAX_DIR_CHECK, MAX_TASK_ID
from .secret import Secret

SYSTEM_CONFIG = Path("/etc/smsagent/agent.yaml")
LOCAL_CONFIG = Path("config/agent.yaml")
SYSTEM_STATE_DIR = Path("/var/lib/smsagent")


@dataclass(frozen=True)
class DirectoryConfig:
    """One directory to verify, with its own target and excludes."""

    path: str  # absolute and normalised: this is the `dir_check` sent to SMS
    target: str | None = None  # None: derived from the global target root
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class IamConfig:
    endpoint: str
    domain: str
    user: str
    password_file: Path
    project: str | None = None


@dataclass(frozen=True)
class AuthConfig:
    token: Secret | None = None  # inline in the YAML (discouraged)
    token_file: Path | None = None
    iam: IamConfig | None = None
    ak: str | None = None
    sk_file: Path | None = None
    domain_id: str | None = None
    project_id: str | None = None


@dataclass(frozen=True)
class SshConfig:
    identity_file: Path | None = None
    port: int | None = None
    options: tuple[str, ...] = ()
    connect_timeout: float = 10.0
    python: str = "python3"


@dataclass(frozen=True)
class ScheduleConfig:
    interval: float = 6 * 3600.0
    jitter: float = 300.0
    window: tuple[int, int] | None = None  # minutes after midnight: (start, end)
    watch: bool = False
    debounce: float = 60.0


@dataclass(frozen=True)
class LimitsConfig:
    workers: int = 0  # 0: chosen from the CPU count
    read_mb_per_s: float = 0.0  # 0: unlimited


@dataclass(frozen=True)
class UploadConfig:
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_age: float = 7 * 86400.0  # pending longer than this: moved to dead letters
    backoff_max: float = 600.0


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    max_entries: int = 5_000_000


@dataclass(frozen=True)
class AgentConfig:
    source: str = "<defaults>"  # the file it came from, for messages
    endpoint: str | None = None
    task_id: str | None = None
    allow_insecure_http: bool = False
    state_dir: Path = SYSTEM_STATE_DIR
    target: str | None = None
    one_file_system: bool = False
    exclude: tuple[str, ...] = ()
    directories: tuple[DirectoryConfig, ...] = ()
    auth: AuthConfig = field(default_factory=AuthConfig)
    ca_bundle: Path | None = None
    ssh: SshConfig = field(default_factory=SshConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    upload: UploadConfig = field(default_factory=UploadConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    warnings: tuple[str, ...] = ()

    def target_for(self, directory: DirectoryConfig) -> str | None:
        """The target of one directory: its own, or the global root with the path appended."""
        if directory.target is not None:
            return directory.target
        if self.target is None:
            return None
        return join_target(self.target, directory.path)

    def with_overrides(
        self,
        *,
        dirs: Sequence[str] = (),
        target: str | None = None,
        exclude: Sequence[str] = (),
        endpoint: str | None = None,
        task_id: str | None = None,
        state_dir: str | None = None,
    ) -> AgentConfig:
        """Apply command-line options; they are validated like the file's keys."""
        raw: dict[str, Any] = {}
        if dirs:
            raw["directories"] = list(dirs)
        if target is not None:
            raw["target"] = target
        if exclude:
            raw["exclude"] = list(exclude)
        if endpoint is not None:
            raw["endpoint"] = endpoint
        if task_id is not None:
            raw["task_id"] = task_id
        if state_dir is not None:
            raw["state_dir"] = state_dir
        if not raw:
            return self
        reader = _Reader("command line")
        changes: dict[str, Any] = {}
        if "directories" in raw:
            changes["directories"] = _directories(reader, raw["directories"], "--dir")
            # A --dir replaces the configured list, so per-directory targets go with it.
        if "target" in raw:
            changes["target"] = _target(reader, raw["target"], "--target")
        if "exclude" in raw:
            changes["exclude"] = self.exclude + _patterns(reader, raw["exclude"], "--exclude")
        if "endpoint" in raw:
            changes["endpoint"] = reader.string(raw["endpoint"], "--endpoint")
        if "task_id" in raw:
            changes["task_id"] = _task_id(reader, raw["task_id"], "--task-id")
        if "state_dir" in raw:
            changes["state_dir"] = Path(raw["state_dir"])
        reader.raise_if_errors()
        updated = replace(self, **changes)
        _check_endpoint(reader, updated)
        reader.raise_if_errors()
        return updated


def join_target(root: str, path: str) -> str:
    """Map an absolute source path under a target root: `/mnt/t` + `/var` -> `/mnt/t/var`.

    Under an ssh:// root the path is percent-encoded, so that `#`, `?`, `%` and bytes that
    are not UTF-8 in a source path reach the target as they are instead of as URL syntax."""
    if path == "/":
        return root
    if root.startswith("ssh://"):
        path = quote(path, safe="/", errors="surrogateescape")
    return root.rstrip("/") + path


def default_state_dir() -> Path:
    """systemd's StateDirectory, else /var/lib/smsagent for root, else the user's state home."""
    from_systemd = os.environ.get("STATE_DIRECTORY")
    if from_systemd:
        return Path(from_systemd.split(":")[0])
    if os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    xdg = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(xdg) / "smsagent"


def find_config(explicit: str | None) -> Path | None:
    """--config, then $SMSAGENT_CONFIG, then /etc/smsagent/agent.yaml, then config/agent.yaml."""
    if explicit:
        return Path(explicit)
    from_env = os.environ.get("SMSAGENT_CONFIG")
    if from_env:
        return Path(from_env)
    for candidate in (SYSTEM_CONFIG, LOCAL_CONFIG):
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None) -> AgentConfig:
    """Read and parse a config file; with no file, the defaults."""
    if path is None:
        return parse_config({}, source="<defaults>")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", source=str(path)) from None
    except PermissionError:
        raise ConfigError("permission denied while reading", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"not valid YAML{where}: {problem}", source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("the top level must be a mapping of keys", source=str(path))
    config = parse_config(data, source=str(path), base=str(path.resolve().parent))
    if config.auth.token is not None and _readable_by_others(path):
        warning = (
            f"{path}: auth.token is written inline and the file is readable by group or others; "
            "prefer auth.token_file with mode 0600"
        )
        config = replace(config, warnings=config.warnings + (warning,))
    return config


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


# --- the pure part -------------------------------------------------------------------------

_TOP_KEYS = {
    "endpoint", "task_id", "allow_insecure_http", "state_dir", "target", "one_file_system",
    "exclude", "directories", "auth", "tls", "ssh", "schedule", "limits", "upload", "cache",
}  # fmt: skip
_ALIASES = {"excludes": "exclude", "dirs": "directories"}


class _Reader:
    """Collects every problem in a config so the operator sees them all at once."""

    def __init__(self, source: str, base: str | None = None):
        self.source = source
        self.base = base  # relative paths in a file are taken from the file's folder
        self.errors: list[str] = []

    def error(self, key: str, message: str) -> None:
        self.errors.append(f"{key}: {message}")

    def raise_if_errors(self) -> None:
        if self.errors:
            if len(self.errors) == 1:
                raise ConfigError(self.errors[0], source=self.source)
            lines = "\n  ".join(self.errors)
            raise ConfigError(f"{len(self.errors)} problems:\n  {lines}", source=self.source)

    def mapping(self, value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping, not {_type_name(value)}")
            return {}
        out: dict[str, Any] = {}
        for name, item in value.items():
            name = _ALIASES.get(str(name), str(name))
            if name not in allowed:
                full = f"{key}.{name}" if key else name
                hint = difflib.get_close_matches(name, sorted(allowed), n=1)
                suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.error(full, f"unknown key{suffix}")
                continue
            out[name] = item
        return out

    def string(self, value: Any, key: str, *, allow_empty: bool = False) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            self.error(key, f"must be a string, not {_type_name(value)}")
            return None
        text = str(value)
        if not text and not allow_empty:
            self.error(key, "must not be empty")
            return None
        return text

    def boolean(self, value: Any, key: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"must be true or false, not {value!r}")
            return default
        return value

    def number(self, value: Any, key: str, default: float, *, minimum: float = 0) -> float:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(key, f"must be a number, not {value!r}")
            return default
        if value < minimum:
            self.error(key, f"must be at least {minimum:g}, not {value!r}")
            return default
        return float(value)

    def integer(self, value: Any, key: str, default: int, *, minimum: int = 0) -> int:
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"must be a whole number, not {value!r}")
            return default
        if value < minimum:
            self.error(key, f"must be at least {minimum}, not {value}")
            return default
        return value

    def duration(self, value: Any, key: str, default: float, *, minimum: float = 0) -> float:
        if value is None:
            return default
        seconds = parse_duration(value)
        if seconds is None:
            self.error(key, f"must be a duration such as 90s, 15m, 6h or 7d, not {value!r}")
            return default
        if seconds < minimum:
            self.error(key, f"must be at least {minimum:g}s, not {value!r}")
            return default
        return seconds

    def path(self, value: Any, key: str) -> Path | None:
        text = self.string(value, key)
        if text is None:
            return None
        path = Path(os.path.expanduser(text))
        return Path(self.base) / path if self.base and not path.is_absolute() else path


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float | None:
    """Seconds from `90`, `90s`, `15m`, `6h` or `7d`; None when it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _DURATION.match(value)
    if not match:
        return None
    return float(match.group(1)) * _UNITS[match.group(2)]


_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_window(value: str) -> tuple[int, int] | None:
    """`01:00-05:00` as minutes after midnight; a window may wrap past midnight."""
    match = _WINDOW.match(value)
    if not match:
        return None
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 24 or h2 > 24 or m1 > 59 or m2 > 59:
        return None
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end or start > 1440 or end > 1440:
        return None
    return start, end


def normalise_dir(path: str) -> str:
    """`/var/` -> `/var`, `/a//b/../c` -> `/a/c`; the root stays `/`."""
    normal = os.path.normpath(path)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    return normal


def parse_config(
    data: Mapping[str, Any], *, source: str = "<config>", base: str | None = None
) -> AgentConfig:
    """Validate a parsed YAML mapping; raises one ConfigError listing every problem.
    `base` is the folder relative paths are taken from (the config file's)."""
    r = _Reader(source, base)
    top = r.mapping(data, "", _TOP_KEYS)
    warnings: list[str] = []

    state_dir = r.path(top.get("state_dir"), "state_dir") or default_state_dir()
    target = _target(r, top["target"], "target") if top.get("target") is not None else None
    directories = _directories(r, top.get("directories"), "directories")
    config = AgentConfig(
        source=source,
        endpoint=r.string(top.get("endpoint"), "endpoint"),
        task_id=_task_id(r, top.get("task_id"), "task_id"),
        allow_insecure_http=r.boolean(top.get("allow_insecure_http"), "allow_insecure_http", False),
        state_dir=state_dir,
        target=target,
        one_file_system=r.boolean(top.get("one_file_system"), "one_file_system", False),
        exclude=_patterns(r, top.get("exclude"), "exclude"),
        directories=directories,
        auth=_auth(r, top.get("auth")),
        ca_bundle=_tls(r, top.get("tls")),
        ssh=_ssh(r, top.get("ssh")),
        schedule=_schedule(r, top.get("schedule")),
        limits=_limits(r, top.get("limits")),
        upload=_upload(r, top.get("upload")),
        cache=_cache(r, top.get("cache")),
    )
    _check_endpoint(r, config)
    r.raise_if_errors()
    if config.allow_insecure_http and config.endpoint and config.endpoint.startswith("http://"):
        warnings.append(
            f"{source}: allow_insecure_http is on: the token travels unencrypted"
            f" to {config.endpoint}"
        )
    return replace(config, warnings=tuple(warnings))


def _task_id(r: _Reader, value: Any, key: str) -> str | None:
    text = r.string(value, key)
    if text is not None and not 1 <= len(text) <= MAX_TASK_ID:
        r.error(key, f"must be 1 to {MAX_TASK_ID} characters, not {len(text)}")
        return None
    return text


def _target(r: _Reader, value: Any, key: str) -> str | None:
    text = r.string(value, key)
    if text is None:
        return None
    if text.startswith("ssh://"):
        parts = urlsplit(text)
        if not parts.hostname:
            r.error(key, f"an ssh:// target needs a host, as in ssh://user@host/path, not {text!r}")
            return None
        try:
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            r.error(key, f"bad port in {text!r}")
            return None
        return text
    if "://" in text:
        r.error(key, f"must be a local path or ssh://user@host[:port]/path, not {text!r}")
        return None
    if not text.startswith("/"):
        text = os.path.join(r.base, text) if r.base else os.path.abspath(text)
    return normalise_dir(text)


def _patterns(r: _Reader, value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        r.error(key, f"must be a list of patterns, not {_type_name(value)}")
        return ()
    patterns = []
    for index, item in enumerate(value):
        text = r.string(item, f"{key}[{index}]")
        if text is not None:
            patterns.append(text)
    return tuple(patterns)


def _directories(r: _Reader, value: Any, key: str) -> tuple[DirectoryConfig, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        r.error(key, f"must be a list of directories, not {_type_name(value)}")
        return ()
    seen: set[str] = set()
    out = []
    for index, item in enumerate(value):
        item_key = f"{key}[{index}]"
        if isinstance(item, Mapping):
            fields = r.mapping(item, item_key, {"path", "target", "exclude"})
            raw_path = fields.get("path")
            if raw_path is None:
                r.error(f"{item_key}.path", "is required")
                continue
            path = r.string(raw_path, f"{item_key}.path")
            target = _target(r, fields.get("target"), f"{item_key}.target")
            exclude = _patterns(r, fields.get("exclude"), f"{item_key}.exclude")
        else:
            path = r.string(item, item_key)
            target, exclude = None, ()
        if path is None:
            continue
        if not path.startswith("/"):
            if r.base is None:
                r.error(item_key, f"must be an absolute path, not {path!r}")
                continue
            path = os.path.join(r.base, path)
        path = normalise_dir(path)
        if len(path) > MAX_DIR_CHECK:
            r.error(item_key, f"is {len(path)} characters; SMS accepts at most {MAX_DIR_CHECK}")
            continue
        if path in seen:
            r.error(item_key, f"{path} is listed twice")
            continue
        seen.add(path)
        out.append(DirectoryConfig(path=path, target=target, exclude=exclude))
    return tuple(out)


def _auth(r: _Reader, value: Any) -> AuthConfig:
    allowed = {"token", "token_file", "iam", "ak", "sk_file", "domain_id", "project_id"}
    raw = r.mapping(value, "auth", allowed)
    iam = None
    if raw.get("iam") is not None:
        fields = r.mapping(
            raw["iam"], "auth.iam", {"endpoint", "domain", "user", "password_file", "project"}
        )
        missing = [k for k in ("endpoint", "domain", "user", "password_file") if not fields.get(k)]
        for name in missing:
            r.error(f"auth.iam.{name}", "is required for IAM password login")
        if not missing:
            iam = IamConfig(
                endpoint=r.string(fields["endpoint"], "auth.iam.endpoint") or "",
                domain=r.string(fields["domain"], "auth.iam.domain") or "",
                user=r.string(fields["user"], "auth.iam.user") or "",
                password_file=r.path(fields["password_file"], "auth.iam.password_file") or Path(),
                project=r.string(fields.get("project"), "auth.iam.project"),
            )
    token = r.string(raw.get("token"), "auth.token")
    ak = r.string(raw.get("ak"), "auth.ak")
    sk_file = r.path(raw.get("sk_file"), "auth.sk_file")
    if (ak is None) != (sk_file is None):
        r.error("auth.ak" if ak is None else "auth.sk_file", "auth.ak and auth.sk_file go together")
    return AuthConfig(
        token=Secret(token) if token else None,
        token_file=r.path(raw.get("token_file"), "auth.token_file"),
        iam=iam,
        ak=ak,
        sk_file=sk_file,
        domain_id=r.string(raw.get("domain_id"), "auth.domain_id"),
        project_id=r.string(raw.get("project_id"), "auth.project_id"),
    )


def _tls(r: _Reader, value: Any) -> Path | None:
    raw = r.mapping(value, "tls", {"ca_bundle"})
    return r.path(raw.get("ca_bundle"), "tls.ca_bundle")


def _ssh(r: _Reader, value: Any) -> SshConfig:
    raw = r.mapping(value, "ssh", {"identity_file", "port", "options", "connect_timeout", "python"})
    port = r.integer(raw.get("port"), "ssh.port", 0, minimum=1) if raw.get("port") else None
    if port is not None and port > 65535:
        r.error("ssh.port", f"must be 1 to 65535, not {port}")
        port = None
    return SshConfig(
        identity_file=r.path(raw.get("identity_file"), "ssh.identity_file"),
        port=port,
        options=_patterns(r, raw.get("options"), "ssh.options"),
        connect_timeout=r.duration(raw.get("connect_timeout"), "ssh.connect_timeout", 10.0),
        python=r.string(raw.get("python"), "ssh.python") or "python3",
    )


def _schedule(r: _Reader, value: Any) -> ScheduleConfig:
    raw = r.mapping(value, "schedule", {"interval", "jitter", "window", "watch", "debounce"})
    window = None
    if raw.get("window") is not None:
        text = r.string(raw["window"], "schedule.window")
        window = parse_window(text) if text else None
        if text and window is None:
            r.error("schedule.window", f"must look like 01:00-05:00, not {text!r}")
    defaults = ScheduleConfig()
    return ScheduleConfig(
        interval=r.duration(raw.get("interval"), "schedule.interval", defaults.interval, minimum=1),
        jitter=r.duration(raw.get("jitter"), "schedule.jitter", defaults.jitter),
        window=window,
        watch=r.boolean(raw.get("watch"), "schedule.watch", False),
        debounce=r.duration(raw.get("debounce"), "schedule.debounce", defaults.debounce),
    )


def _limits(r: _Reader, value: Any) -> LimitsConfig:
    raw = r.mapping(value, "limits", {"workers", "read_mb_per_s"})
    return LimitsConfig(
        workers=r.integer(raw.get("workers"), "limits.workers", 0, minimum=0),
        read_mb_per_s=r.number(raw.get("read_mb_per_s"), "limits.read_mb_per_s", 0.0),
    )


def _upload(r: _Reader, value: Any) -> UploadConfig:
    raw = r.mapping(value, "upload", {"connect_timeout", "read_timeout", "max_age", "backoff_max"})
    d = UploadConfig()
    return UploadConfig(
        connect_timeout=r.duration(raw.get("connect_timeout"), "upload.connect_timeout",
                                   d.connect_timeout, minimum=0.001),
        read_timeout=r.duration(raw.get("read_timeout"), "upload.read_timeout",
                                d.read_timeout, minimum=0.001),
        max_age=r.duration(raw.get("max_age"), "upload.max_age", d.max_age, minimum=1),
        backoff_max=r.duration(raw.get("backoff_max"), "upload.backoff_max", d.backoff_max,
                               minimum=0.01),
    )  # fmt: skip


def _cache(r: _Reader, value: Any) -> CacheConfig:
    raw = r.mapping(value, "cache", {"enabled", "max_entries"})
    d = CacheConfig()
    return CacheConfig(
        enabled=r.boolean(raw.get("enabled"), "cache.enabled", d.enabled),
        max_entries=r.integer(raw.get("max_entries"), "cache.max_entries", d.max_entries,
                              minimum=1000),
    )  # fmt: skip


def _check_endpoint(r: _Reader, config: AgentConfig) -> None:
    """A token never travels over plain HTTP, except to this machine or when explicitly allowed."""
    iam = config.auth.iam
    if iam is not None and iam.endpoint:
        parts = urlsplit(iam.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            r.error("auth.iam.endpoint", f"must be an https:// URL, not {iam.endpoint!r}")
        elif (
            parts.scheme == "http"
            and not config.allow_insecure_http
            and not is_loopback(parts.hostname)
        ):
            r.error("auth.iam.endpoint", f"{iam.endpoint} is plain HTTP: the password "
                    "would travel unencrypted; use https://")  # fmt: skip
    if not config.endpoint:
        return
    parts = urlsplit(config.endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.error("endpoint", f"must be an https:// URL, not {config.endpoint!r}")
        return
    if (
        parts.scheme == "http"
        and not config.allow_insecure_http
        and not is_loopback(parts.hostname)
    ):
        r.error(
            "endpoint",
            f"{config.endpoint} is plain HTTP to another host, which would expose the token; "
            "use https:// or set allow_insecure_http: true",
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def describe(config: AgentConfig) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked, for `config check`."""
    auth = config.auth
    return {
        "source": config.source,
        "endpoint": config.endpoint,
        "task_id": config.task_id,
        "allow_insecure_http": config.allow_insecure_http,
        "state_dir": str(config.state_dir),
        "target": config.target,
        "one_file_system": config.one_file_system,
        "exclude": list(config.exclude),
        "directories": [
            {"path": d.path, "target": config.target_for(d), "exclude": list(d.exclude)}
            for d in config.directories
        ],
        "auth": {
            "token": "****" if auth.token else None,
            "token_file": str(auth.token_file) if auth.token_file else None,
            "iam": None
            if auth.iam is None
            else {
                "endpoint": auth.iam.endpoint,
                "domain": auth.iam.domain,
                "user": auth.iam.user,
                "password_file": str(auth.iam.password_file),
                "project": auth.iam.project,
            },
            "ak": auth.ak,
            "sk_file": str(auth.sk_file) if auth.sk_file else None,
            "domain_id": auth.domain_id,
            "project_id": auth.project_id,
        },
        "tls": {"ca_bundle": str(config.ca_bundle) if config.ca_bundle else None},
        "ssh": {
            "identity_file": str(config.ssh.identity_file) if config.ssh.identity_file else None,
            "port": config.ssh.port,
            "options": list(config.ssh.options),
            "connect_timeout": config.ssh.connect_timeout,
            "python": config.ssh.python,
        },
        "schedule": {
            "interval": config.schedule.interval,
            "jitter": config.schedule.jitter,
            "window": _format_window(config.schedule.window),
            "watch": config.schedule.watch,
            "debounce": config.schedule.debounce,
        },
        "limits": {
            "workers": config.limits.workers,
            "read_mb_per_s": config.limits.read_mb_per_s,
        },
        "upload": {
            "connect_timeout": config.upload.connect_timeout,
            "read_timeout": config.upload.read_timeout,
            "max_age": config.upload.max_age,
            "backoff_max": config.upload.backoff_max,
        },
        "cache": {"enabled": config.cache.enabled, "max_entries": config.cache.max_entries},
    }


def render(config: AgentConfig) -> str:
    """The effective configuration as YAML, secrets masked."""
    return yaml.safe_dump(describe(config), sort_keys=False, allow_unicode=True).rstrip()


def _format_window(window: tuple[int, int] | None) -> str | None:
    if window is None:
        return None
    (h1, m1), (h2, m2) = divmod(window[0], 60), divmod(window[1], 60)
    return f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"

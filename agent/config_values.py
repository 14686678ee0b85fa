"""The machinery behind `config.py`'s table of keys, and the readers of single values.

A key is a dataclass field made with `key(...)`: its default, its reader, how `describe()`
shows it and the command-line option that overrides it; a section (`ssh:`) is a field made
with `section(...)`. `read_section`, `show_section` and `override` walk those fields, so no
key is written twice. Every reader takes `(reader, value, key)`, is called only for a value
that is present, and returns the converted value, or None after recording why it is wrong.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from .errors import ConfigError
from .model import dir_check_problem, task_id_problem
from .secret import Secret

# Older spellings accepted in any mapping.
ALIASES = {"excludes": "exclude", "dirs": "directories"}


class Reader:
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
        """The known keys of a mapping; each unknown one is a problem with a "did you mean"."""
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, f"must be a mapping, not {type_name(value)}")
            return {}
        out: dict[str, Any] = {}
        for name, item in value.items():
            name = ALIASES.get(str(name), str(name))
            if name not in allowed:
                full = f"{key}.{name}" if key else name
                hint = difflib.get_close_matches(name, sorted(allowed), n=1)
                suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.error(full, f"unknown key{suffix}")
                continue
            out[name] = item
        return out


Read = Callable[[Reader, Any, str], Any]
Show = Callable[[Any, Any], Any]  # (value, the whole config) -> plain data


@dataclass(frozen=True)
class Key:
    """How one configuration key is read, shown and overridden."""

    read: Read | None = None  # None for a section
    section: type | None = None  # the dataclass of a mapping of keys, such as SshConfig
    show: Show | None = None  # None: the value as plain data (paths as text, secrets masked)
    cli: str | None = None  # the command-line option that overrides it, for messages
    cli_extends: bool = False  # the option adds to the configured list instead of replacing it
    required: str | None = None  # the message when the key is missing
    optional: bool = False  # a section that is None unless the file has it


def key(default: Any = None, read: Read | None = None, *, factory: Any = None, **spec: Any) -> Any:
    """A dataclass field that is a configuration key; `factory` makes a default per parse."""
    metadata = {"key": Key(read=read, **spec)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def section(cls: type, *, optional: bool = False) -> Any:
    """A dataclass field that is a mapping of keys, such as `ssh:`."""
    spec = Key(section=cls, optional=optional)
    if optional:
        return field(default=None, metadata={"key": spec})
    return field(default_factory=cls, metadata={"key": spec})


def keys_of(cls: type) -> list[tuple[str, Key]]:
    return [(f.name, f.metadata["key"]) for f in dataclasses.fields(cls) if "key" in f.metadata]


def _spec(cls: Any, dotted: str) -> Key:
    """The spec of a key given as `limits.workers`."""
    for name in dotted.split("."):
        spec = dict(keys_of(cls))[name]
        cls = spec.section
    return spec


def _get(obj: Any, dotted: str) -> Any:
    for name in dotted.split("."):
        obj = getattr(obj, name)
    return obj


def _set(obj: Any, names: list[str], value: Any) -> Any:
    inner = value if len(names) == 1 else _set(getattr(obj, names[0]), names[1:], value)
    return replace(obj, **{names[0]: inner})


def read_section(r: Reader, cls: type, value: Any, key: str) -> Any:
    """Read one mapping of keys into `cls`: every key checked, every problem recorded."""
    specs = keys_of(cls)
    raw = r.mapping(value, key, {name for name, _ in specs})
    values: dict[str, Any] = {}
    for name, spec in specs:
        dotted = f"{key}.{name}" if key else name
        item = raw.get(name)
        if spec.section is not None:
            if item is not None or not spec.optional:
                values[name] = read_section(r, spec.section, item, dotted)
        elif item is None or (item == "" and spec.required):
            if spec.required:
                r.error(dotted, spec.required)
        else:
            got = spec.read(r, item, dotted) if spec.read else None
            if got is not None:
                values[name] = got
    return cls(**values)


def override(r: Reader, config: Any, dotted: str, value: Any) -> Any:
    """`config` with one key, given as `limits.workers`, set from a command-line option."""
    spec = _spec(type(config), dotted)
    if spec.read is None:
        return config
    got = spec.read(r, list(value) if isinstance(value, tuple) else value, spec.cli or dotted)
    if got is None:
        return config
    if spec.cli_extends:
        got = _get(config, dotted) + got
    return _set(config, dotted.split("."), got)


def show_section(obj: Any, config: Any) -> dict[str, Any]:
    """A section as plain data: each key shown by its spec, secrets masked."""
    out: dict[str, Any] = {}
    for name, spec in keys_of(type(obj)):
        value = getattr(obj, name)
        if spec.section is not None:
            out[name] = None if value is None else show_section(value, config)
        else:
            out[name] = spec.show(value, config) if spec.show else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return "****"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def string(r: Reader, value: Any, key: str) -> str | None:
    if value is None:  # an empty item in a list, such as `- ` in YAML, is left out
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        r.error(key, f"must be a string, not {type_name(value)}")
        return None
    text = str(value)
    if not text:
        r.error(key, "must not be empty")
        return None
    return text


def boolean(r: Reader, value: Any, key: str) -> bool | None:
    if not isinstance(value, bool):
        r.error(key, f"must be true or false, not {value!r}")
        return None
    return value


def number(*, minimum: float = 0) -> Read:
    def read(r: Reader, value: Any, key: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            r.error(key, f"must be a number, not {value!r}")
            return None
        if value < minimum:
            r.error(key, f"must be at least {minimum:g}, not {value!r}")
            return None
        return float(value)

    return read


def integer(*, minimum: int = 0, maximum: int | None = None) -> Read:
    def read(r: Reader, value: Any, key: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            r.error(key, f"must be a whole number, not {value!r}")
            return None
        if value < minimum:
            r.error(key, f"must be at least {minimum}, not {value}")
            return None
        if maximum is not None and value > maximum:
            r.error(key, f"must be {minimum} to {maximum}, not {value}")
            return None
        return value

    return read


def duration(*, minimum: float = 0) -> Read:
    def read(r: Reader, value: Any, key: str) -> float | None:
        seconds = parse_duration(value)
        if seconds is None:
            r.error(key, f"must be a duration such as 90s, 15m, 6h or 7d, not {value!r}")
            return None
        if seconds < minimum:
            r.error(key, f"must be at least {minimum:g}s, not {value!r}")
            return None
        return seconds

    return read


def path(r: Reader, value: Any, key: str) -> Path | None:
    text = string(r, value, key)
    if text is None:
        return None
    found = Path(os.path.expanduser(text))
    return Path(r.base) / found if r.base and not found.is_absolute() else found


def listed(r: Reader, value: Any, key: str, what: str) -> list[Any]:
    """The items of a list; a single string is a list of one."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        r.error(key, f"must be a list of {what}, not {type_name(value)}")
        return []
    return value


def patterns(r: Reader, value: Any, key: str) -> tuple[str, ...]:
    """A list of strings; a single string is a list of one."""
    items = listed(r, value, key, "patterns")
    found = (string(r, item, f"{key}[{index}]") for index, item in enumerate(items))
    return tuple(text for text in found if text is not None)


def task_id(r: Reader, value: Any, key: str) -> str | None:
    text = string(r, value, key)
    problem = task_id_problem(text) if text is not None else None
    if problem:
        r.error(key, problem)
        return None
    return text


def target(r: Reader, value: Any, key: str) -> str | None:
    """A local path (made absolute and normalised) or ssh://[user@]host[:port]/path: a
    `target` or a `source`."""
    text = string(r, value, key)
    if text is None:
        return None
    if text.startswith("ssh://"):
        parts = urlsplit(text)
        if not parts.hostname:
            r.error(key, f"an ssh:// URL needs a host, as in ssh://user@host/path, not {text!r}")
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


def directory(r: Reader, value: Any, key: str) -> str | None:
    """An absolute, normalised directory short enough to be a `dir_check`."""
    text = string(r, value, key)
    if text is None:
        return None
    if not text.startswith("/"):
        if r.base is None:
            r.error(key, f"must be an absolute path, not {text!r}")
            return None
        text = os.path.join(r.base, text)
    text = normalise_dir(text)
    problem = dir_check_problem(text)
    if problem:
        r.error(key, problem)
        return None
    return text


def window(r: Reader, value: Any, key: str) -> tuple[int, int] | None:
    text = string(r, value, key)
    found = parse_window(text) if text else None
    if text and found is None:
        r.error(key, f"must look like 01:00-05:00, not {text!r}")
    return found


def format_window(value: tuple[int, int] | None) -> str | None:
    if value is None:
        return None
    (h1, m1), (h2, m2) = divmod(value[0], 60), divmod(value[1], 60)
    return f"{h1:02d}:{m1:02d}-{h2:02d}:{m2:02d}"


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


def join_target(root: str, path: str) -> str:
    """Map an absolute source path under a target root: `/mnt/t` + `/var` -> `/mnt/t/var`.

    Under an ssh:// root the path is percent-encoded, so that `#`, `?`, `%` and bytes that
    are not UTF-8 in a source path reach the target as they are instead of as URL syntax."""
    if path == "/":
        return root
    if root.startswith("ssh://"):
        path = quote(path, safe="/", errors="surrogateescape")
    return root.rstrip("/") + path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )

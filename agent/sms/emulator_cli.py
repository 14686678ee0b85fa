"""`smsagent-emulator`: the command that runs the SMS/IAM emulator on loopback until SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from ..model import task_id_problem
from .emulator import MAX_CLOCK_SKEW, Emulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smsagent-emulator", description="Run the SMS/IAM emulator on loopback."
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="loopback address to listen on (127.0.0.1)")
    add("--port", type=int, default=8080, help="port (8080; 0 picks a free one)")
    add("--task-id", action="append", dest="task_ids", metavar="ID", help="a known task (T)")
    add("--token", help="the static token SMS accepts (X-Auth-Token)")
    add("--ak", help="access key whose signatures are accepted (with --sk-file)")
    add("--sk-file", metavar="FILE", help="file holding the secret key of --ak")
    add("--iam-user", action="append", default=[], metavar="USER:PASSWORD_FILE")
    add("--iam-domain", metavar="NAME", help="the IAM domain users must log in to")
    add("--token-ttl", type=float, default=86400.0, metavar="SECONDS")
    add(
        "--result-format",
        choices=("strings", "objects"),
        default="strings",
        help="result_list items as JSON strings (documented) or as objects",
    )
    add("--setting", action="append", default=[], metavar="KEY=VALUE", help="a task setting")
    add("--settings-file", metavar="FILE", help="JSON task settings, read again when it changes")
    add("--migration-ip", metavar="IP", help="the task's migration_ip")
    add("--target-ip", metavar="IP", help="the task's target_server.ip")
    add(
        "--max-clock-skew",
        type=float,
        default=MAX_CLOCK_SKEW,
        metavar="SECONDS",
        help="refuse AK/SK signatures dated further away (900)",
    )
    return parser


def _read(path: str, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    for task in args.task_ids or []:
        problem = task_id_problem(task)
        if problem:
            parser.error(f"--task-id {problem}")
    settings = {}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--setting takes KEY=VALUE, not {item!r}")
        settings[key] = value
    try:
        users = {}
        for item in args.iam_user:
            name, sep, path = item.partition(":")
            if not sep:
                parser.error("--iam-user takes USER:PASSWORD_FILE")
            users[name] = _read(path, "the password file")
        sk = _read(args.sk_file, "the secret key file") if args.sk_file else None
        emulator = Emulator(
            args.host,
            args.port,
            task_ids=args.task_ids or ["T"],
            token=args.token,
            ak=args.ak,
            sk=sk,
            iam_users=users,
            iam_domain=args.iam_domain,
            token_ttl=args.token_ttl,
            result_format=args.result_format,
            settings=settings,
            settings_file=Path(args.settings_file) if args.settings_file else None,
            migration_ip=args.migration_ip,
            target_ip=args.target_ip,
            max_skew=args.max_clock_skew,
        )
    except (ValueError, OSError) as exc:  # SettingsFileError is a ValueError
        print(f"smsagent-emulator: {exc}", file=sys.stderr)
        return 2
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    emulator.start()
    tasks = ", ".join(args.task_ids or ["T"])
    print(f"SMS emulator listening on {emulator.url} (tasks: {tasks})", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        done.wait()
    emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

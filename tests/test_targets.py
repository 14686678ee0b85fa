"""Where a tree lives: target syntax, the ssh command line, and an SSH failure in one line.
(Sessions against a real sshd are in test_ssh.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import SshConfig, join_target
from agent.verify.targets import TargetSpec, explain_ssh_failure, parse_target, ssh_command


def test_ssh_command_is_batch_mode_and_user_options_come_before_defaults() -> None:
    spec = parse_target("ssh://backup@db1:2222/srv")
    config = SshConfig(
        identity_file=Path("/k/id"), options=("ConnectTimeout=30", "ProxyJump=bastion")
    )
    argv = ssh_command(spec, config)
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    # ssh keeps the first value given for an option: the user's ConnectTimeout wins.
    assert argv.index("ConnectTimeout=30") < argv.index("ConnectTimeout=10")
    assert argv.index("ProxyJump=bastion") < argv.index("--")
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-i") + 1] == "/k/id"
    assert argv[-2] == "backup@db1"
    assert argv[-1].startswith("python3 -c ")


@pytest.mark.parametrize(
    ("source_path", "remote_path"),
    [
        ("/var", b"/var"),
        ("/data/a#b", b"/data/a#b"),
        ("/data/q?x", b"/data/q?x"),
        ("/data/100%41", b"/data/100%41"),
        ("/data/sp ace", b"/data/sp ace"),
        ("/data/caf\udce9", b"/data/caf\xe9"),  # a byte that is not UTF-8
        ("/", b"/"),
    ],
)
def test_a_source_path_under_an_ssh_root_reaches_the_target_unchanged(
    source_path: str, remote_path: bytes
) -> None:
    spec = parse_target(join_target("ssh://root@h:22/", source_path))
    assert (spec.host, spec.user, spec.port, spec.path) == ("h", "root", 22, remote_path)


@pytest.mark.parametrize(
    ("stderr", "code", "expected"),
    [
        (
            "ssh: connect to host 10.0.0.9 port 22: Connection refused\n",
            255,
            "cannot connect (connect to host 10.0.0.9 port 22: Connection refused)",
        ),
        (
            "ssh: connect to host 10.0.0.9 port 22: Connection timed out\n",
            255,
            "cannot connect (connect to host 10.0.0.9 port 22: Connection timed out)",
        ),
        (
            "Connection timed out during banner exchange\nConnection to h port 22 timed out\n",
            255,
            "cannot connect: the port is open but no SSH server answered (Connection timed out during banner exchange)",
        ),
        (
            "ssh: Could not resolve hostname nohost: Name or service not known\n",
            255,
            "cannot connect (Could not resolve hostname nohost: Name or service not known)",
        ),
        (
            "No ED25519 host key is known for [h]:22 and you have requested strict checking.\nHost key verification failed.\n",
            255,
            "host key verification failed: the host's key is not in known_hosts; an unknown key is never accepted (check its fingerprint, then add it) (No ED25519 host key is known for [h]:22 and you have requested strict checking)",
        ),
        (
            "@@@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@@@@\nOffending ECDSA key in /k/known_hosts:3\nHost key verification failed.\n",
            255,
            "host key verification failed: the host's key has CHANGED since it was recorded in known_hosts (Offending ECDSA key in /k/known_hosts:3)",
        ),
        (
            "root@h: Permission denied (publickey).\n",
            255,
            "authentication failed (root@h: Permission denied (publickey))",
        ),
        (
            "Connection to h closed by remote host.\n",
            255,
            "connection closed by the target (Connection to h closed by remote host)",
        ),
        (
            "Timeout, server h not responding.\n",
            255,
            "the target stopped answering keepalives (Timeout, server h not responding)",
        ),
        ("", 255, "the session ended without a word: the helper on the target was killed or lost"),
        (
            "bash: line 1: python3: command not found\n",
            127,
            "cannot start the helper: python3 is not found on the target; install Python 3 there or point ssh.python at it (bash: line 1: python3: command not found)",
        ),
        (
            "Traceback (most recent call last):\n  File x\nAttributeError: 'file' object has no attribute 'buffer'\n",
            1,
            "the helper failed on the target (it needs Python 3.6 or later): AttributeError: 'file' object has no attribute 'buffer'",
        ),
        ("", 3, "helper exited with status 3"),
    ],
)
def test_ssh_failures_become_one_line(stderr: str, code: int, expected: str) -> None:
    message = explain_ssh_failure(stderr, code, python="python3")
    assert message == expected
    assert "\n" not in message


@pytest.mark.parametrize("homeless", [True, False])
def test_an_unknown_host_key_points_a_homeless_user_at_UserKnownHostsFile(
    homeless: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", "/" if homeless else str(tmp_path))  # "/" as for DynamicUser=
    message = explain_ssh_failure("Host key verification failed.\n", 255, python="python3")
    hint = 'ssh.options: ["UserKnownHostsFile=/etc/smsagent/known_hosts"]'
    assert (hint in message) is homeless, message
    assert message.startswith("host key verification failed")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("/mnt/t", "local"),
        ("ssh://h/x", "ssh://h"),
        ("ssh://u@h:2222/x", "ssh://u@h:2222"),
    ],
)
def test_one_key_names_each_machine(text: str, key: str) -> None:
    assert parse_target(text).key == key
    assert parse_target(text.replace("/x", "/y")).key == key


def test_a_local_target_is_its_path_in_bytes() -> None:
    assert parse_target("/mnt/caf\udce9") == TargetSpec(path=b"/mnt/caf\xe9")

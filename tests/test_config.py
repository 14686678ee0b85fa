"""Configuration: every key validated, with one exact message naming it."""

from __future__ import annotations

import pytest

from agent.config import DirectoryConfig, describe, parse_config
from agent.config_file import render
from agent.errors import ConfigError

ERRORS = [
    ({"directoris": ["/var"]}, "directoris: unknown key (did you mean 'directories'?)"),
    ({"directories": ["var"]}, "directories[0]: must be an absolute path, not 'var'"),
    ({"directories": ["/var", "/var/"]}, "directories[1]: /var is listed twice"),
    ({"directories": ["/" + "x" * 1024]}, "directories[0]: is 1025 characters; SMS accepts at most 1024"),
    ({"directories": [{"target": "/t"}]}, "directories[0].path: is required"),
    ({"directories": [{"path": "/v", "excludes": 3}]}, "directories[0].exclude: must be a list of patterns, not int"),
    ({"task_id": "x" * 37}, "task_id: must be 1 to 36 characters, not 37"),
    ({"endpoint": "http://sms.example.com"}, "endpoint: http://sms.example.com is plain HTTP to another host"),
    ({"endpoint": "ftp://x"}, "endpoint: must be an https:// URL"),
    ({"target": "nfs://x/y"}, "target: must be a local path or ssh://user@host[:port]/path"),
    ({"target": "ssh:///path"}, "target: an ssh:// URL needs a host"),
    ({"source": "ssh:///path"}, "source: an ssh:// URL needs a host"),
    ({"directories": [{"path": "/v", "source": "rsync://h/v"}]}, "directories[0].source: must be a local path or ssh://"),
    ({"schedule": {"interval": "soon"}}, "schedule.interval: must be a duration such as 90s"),
    ({"schedule": {"window": "1-5"}}, "schedule.window: must look like 01:00-05:00"),
    ({"schedule": {"watch": "yes"}}, "schedule.watch: must be true or false, not 'yes'"),
    # inotify sees this machine only: a remote source cannot be watched, never silently.
    ({"source": "ssh://root@old-db/", "schedule": {"watch": True}}, "schedule.watch: cannot watch the remote source ssh://root@old-db/: inotify sees only this machine's files; set schedule.watch: false (schedule.interval verifies it)"),
    ({"directories": [{"path": "/var", "source": "ssh://old/var"}], "schedule": {"watch": True}}, "schedule.watch: cannot watch the remote source ssh://old/var of /var"),
    ({"source": "/mnt/old", "directories": ["/var"], "schedule": {"watch": True}}, "schedule.watch: cannot watch the source /mnt/old/var of /var: only a directory read at its own path"),
    ({"limits": {"workers": -1}}, "limits.workers: must be at least 0, not -1"),
    ({"limits": {"read_mb_per_s": "fast"}}, "limits.read_mb_per_s: must be a number, not 'fast'"),
    ({"ssh": {"port": 70000}}, "ssh.port: must be 1 to 65535, not 70000"),
    ({"auth": {"ak": "AK"}}, "auth.sk_file: auth.ak and auth.sk_file go together"),
    ({"auth": {"iam": {"endpoint": "https://iam"}}}, "auth.iam.domain: is required for IAM password login"),
    ({"auth": {"tokn": "x"}}, "auth.tokn: unknown key (did you mean 'token'?)"),
    ({"tls": []}, "tls: must be a mapping, not a list"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "message"), ERRORS)
def test_each_problem_has_its_message(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, source="agent.yaml")
    assert str(caught.value).startswith("agent.yaml: ")
    assert message in str(caught.value)


def test_all_problems_are_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"task_id": "", "limits": {"workers": "x"}, "bogus": 1}, source="f.yaml")
    text = str(caught.value)
    assert "3 problems" in text and "task_id" in text and "limits.workers" in text
    assert "bogus: unknown key" in text


def test_directories_are_normalised_and_targets_mapped() -> None:
    config = parse_config({
        "target": "/mnt/target/",
        "directories": ["/var/", "//srv//data/../www", {"path": "/opt", "target": "/elsewhere"}],
        "endpoint": "http://127.0.0.1:8080", "task_id": "t",
    })  # fmt: skip
    paths = [d.path for d in config.directories]
    assert paths == ["/var", "/srv/www", "/opt"]
    assert [config.target_for(d) for d in config.directories] == [
        "/mnt/target/var", "/mnt/target/srv/www", "/elsewhere"]  # fmt: skip
    ssh = parse_config({"target": "ssh://root@10.0.0.8/", "directories": ["/var"]})
    assert ssh.target_for(ssh.directories[0]) == "ssh://root@10.0.0.8/var"


def test_insecure_http_only_when_allowed() -> None:
    with pytest.raises(ConfigError, match="plain HTTP to another host"):
        parse_config({"endpoint": "http://sms.example"})
    config = parse_config({"endpoint": "http://sms.example", "allow_insecure_http": True})
    assert config.endpoint == "http://sms.example"
    assert any("allow_insecure_http" in w for w in config.warnings)
    local = parse_config({"endpoint": "http://127.0.0.1:8080"})  # this machine: no warning
    assert local.endpoint == "http://127.0.0.1:8080" and not local.warnings


def test_describe_shows_every_key_with_secrets_masked() -> None:
    config = parse_config({
        "endpoint": "https://sms.example", "target": "/mnt/t", "directories": ["/var"],
        "auth": {"token": "s3cret-value", "iam": {"endpoint": "https://iam", "domain": "d",
                 "user": "u", "password_file": "/pw"}},
        "schedule": {"window": "01:00-05:00"}, "tls": {"ca_bundle": "/ca.pem"},
    })  # fmt: skip
    shown = describe(config)
    assert "s3cret-value" not in render(config)
    assert shown["auth"]["token"] == "****"
    assert shown["auth"]["iam"]["password_file"] == "/pw"
    assert shown["directories"] == [
        {"path": "/var", "source": "/var", "target": "/mnt/t/var", "exclude": []}
    ]
    assert shown["schedule"]["window"] == "01:00-05:00"
    assert shown["tls"] == {"ca_bundle": "/ca.pem"}
    # Every section and key of the YAML shows up, so `config check` hides nothing.
    assert list(shown) == [
        "config_file", "endpoint", "task_id", "allow_insecure_http", "state_dir", "source",
        "target", "one_file_system", "exclude", "directories", "exclude_from_task", "mode",
        "modify_window", "auth", "tls", "ssh", "schedule", "limits", "upload", "cache",
        "metrics"]  # fmt: skip
    assert set(shown["ssh"]) == {"identity_file", "port", "options", "connect_timeout", "python"}


def test_overrides_are_validated_like_the_file() -> None:
    config = parse_config({"directories": [{"path": "/var", "target": "/t"}], "exclude": ["a"]})
    changed = config.with_overrides({
        "directories": ["/srv"], "exclude": ("b",), "task_id": "t1", "limits.workers": 4,
        "target": None, "endpoint": None,
    })  # fmt: skip
    assert [(d.path, d.target) for d in changed.directories] == [("/srv", None)]
    assert changed.exclude == ("a", "b")  # --exclude adds to the configured patterns
    assert changed.task_id == "t1" and changed.limits.workers == 4
    assert config.with_overrides({"directories": [], "target": None}) == config
    with pytest.raises(ConfigError) as caught:
        config.with_overrides({"task_id": "x" * 37, "target": "nfs://h/p", "directories": ["rel"]})
    text = str(caught.value)
    assert text.startswith("command line: 3 problems")
    assert "--task-id: must be 1 to 36 characters" in text
    assert "--target: must be a local path" in text
    assert "--dir[0]: must be an absolute path, not 'rel'" in text
    with pytest.raises(
        ConfigError, match="command line: endpoint: http://sms.example is plain HTTP"
    ):
        config.with_overrides({"endpoint": "http://sms.example"})


def test_a_source_root_maps_each_directory_under_it_and_dir_check_stays_the_path() -> None:
    config = parse_config({
        "source": "ssh://root@old-db:2222/", "target": "/",
        "directories": ["/var", {"path": "/srv/a#b", "source": "ssh://root@other/data/b"}, "/"],
    })  # fmt: skip
    assert [config.source_for(d) for d in config.directories] == [
        "ssh://root@old-db:2222/var", "ssh://root@other/data/b", "ssh://root@old-db:2222/"]  # fmt: skip
    assert [d.path for d in config.directories] == ["/var", "/srv/a#b", "/"]
    assert parse_config({"directories": ["/var"]}).source_for(DirectoryConfig("/var")) == "/var"
    changed = config.with_overrides({"source": "ssh://u@new-host/"})
    assert changed.source_for(changed.directories[0]) == "ssh://u@new-host/var"
    with pytest.raises(ConfigError, match="command line: schedule.watch: cannot watch the remote"):
        parse_config({"schedule": {"watch": True}}).with_overrides({"source": "ssh://h/"})

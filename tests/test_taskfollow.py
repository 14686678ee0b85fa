"""The daemon's view of the task's settings, against the real emulator: read, changed, lost."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.service.taskfollow import TaskFollower
from agent.sms.emulator import Emulator

from .sms_helpers import make_config


def test_follows_changes_and_keeps_the_last_settings_when_sms_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    emu = Emulator(token="TOKEN-s3cr3t-0123456789", settings={"CONSISTENCY_DIR": "/srv/a"})
    emu.start()
    base = make_config(tmp_path / "state", emu.url, directories="from_task", target="/mnt/t")
    follower = TaskFollower(base)
    try:
        assert [d.path for d in follower.current().directories] == []
        assert "never read yet, so there is nothing to verify" in caplog.text
        assert [d.path for d in follower.refresh().directories] == ["/srv/a"]
        emu.set_setting("CONSISTENCY_DIR", "/srv/a,/srv/b")
        assert [d.path for d in follower.refresh().directories] == ["/srv/a", "/srv/b"]
        assert "task T: directories added: /srv/b" in caplog.text
    finally:
        emu.stop()
    kept = follower.refresh()  # SMS is gone: the last settings stay in force, with a warning
    assert [d.path for d in kept.directories] == ["/srv/a", "/srv/b"]
    assert "cannot read the task's settings; keeping the ones read at" in caplog.text
    # A restart while SMS is unreachable starts from the copy in the state directory.
    restarted = TaskFollower(base)
    assert [d.path for d in restarted.current().directories] == ["/srv/a", "/srv/b"]
    assert restarted.rebase(make_config(tmp_path / "state", emu.url, directories=["from_task", "/x"],
                                        target="/mnt/t")).directories[-1].path == "/x"  # fmt: skip


def test_never_read_and_unreachable_warns_every_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    base = make_config(tmp_path / "state", "http://127.0.0.1:9", directories="from_task",
                       target="/mnt/t", upload={"connect_timeout": 0.5})  # fmt: skip
    follower = TaskFollower(base)
    for _ in range(2):
        assert follower.refresh().directories == ()
    assert caplog.text.count("none were read before: nothing to verify") == 2

"""Quick mode end to end: the scenario trees with their mtimes preserved, locally and over SSH,
and proof that nothing is read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from agent.sms.emulator import Emulator

from .conftest import smsagent_command, write_tree
from .sshd import Sshd, sshd_server  # noqa: F401 - the `sshd` fixture
from .test_ssh import EXPECTED, build_scenario, run_verify

# The scenario's pairs whose content differs with the same size: all quick mode cannot see.
SAME_LOOK = {"same-size.txt", "dir\\xff/changed.txt", "new\\nline.txt", "big-last-byte.bin"}


def preserve_mtimes(src: Path, dst: Path) -> None:
    """Give every target file (and link) its source counterpart's mtime, as a migration does."""
    for folder, _dirs, files in os.walk(os.fsencode(src)):
        for name in files:
            path = os.path.join(folder, name)
            twin = os.path.join(os.fsencode(dst), os.path.relpath(path, os.fsencode(src)))
            if os.path.lexists(twin) and not os.path.isdir(twin):
                st = os.lstat(path)
                os.utime(twin, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


@pytest.fixture
def scenario(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    build_scenario(src, dst)
    preserve_mtimes(src, dst)
    return src, dst


def report_marks(path: Path) -> dict[str, str]:
    lines = path.read_text(errors="surrogateescape").splitlines()
    return {
        line[2:].split("\t")[0].rsplit("/src/", 1)[1]: line[0]
        for line in lines
        if line[:1] in "=*+-!"
    }


def test_quick_differs_from_content_only_where_content_changed_with_size_and_mtime_kept(
    scenario: tuple[Path, Path], tmp_path: Path
) -> None:
    src, dst = scenario
    dirs = [{"path": str(src), "target": str(dst)}]
    content_report, quick_report = tmp_path / "content.report", tmp_path / "quick.report"
    content, content_doc, _ = run_verify(tmp_path, dirs, None, "--report", str(content_report))
    quick, quick_doc, _ = run_verify(tmp_path, dirs, None, "--quick", "--report", str(quick_report))
    assert content.returncode == quick.returncode == 1, quick.stderr
    assert content_doc is not None and quick_doc is not None
    c, q = content_doc["directories"][0], quick_doc["directories"][0]
    assert {k: c[k] for k in EXPECTED} == EXPECTED
    assert q["num_different_files"] == EXPECTED["num_different_files"] - len(SAME_LOOK)
    assert q["num_identical_files"] == EXPECTED["num_identical_files"] + len(SAME_LOOK)
    for key in ("num_total_files", "num_target_miss_files", "num_target_more_files"):
        assert q[key] == c[key]
    assert (q["files_hashed"], q["bytes_hashed"], q["mode"]) == (0, 0, "quick")
    assert quick_doc["mode"] == "quick" and content_doc["mode"] == "content"
    marks, quick_marks = report_marks(content_report), report_marks(quick_report)
    changed = {name for name in marks if marks[name] != quick_marks[name]}
    assert changed == SAME_LOOK and all(quick_marks[n] == "=" for n in changed)
    assert quick_report.read_text().startswith("# mode: quick (")
    assert not content_report.read_text().startswith("#")


def test_the_modify_window_and_the_table(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"a": "same", "empty": ""})
    write_tree(dst, {"a": "same", "empty": ""})
    os.utime(src / "a", (1_000_000_000, 1_000_000_000))
    os.utime(dst / "a", (1_000_000_003, 1_000_000_003))
    os.utime(src / "empty", (1_000_000_000, 1_000_000_000))
    os.utime(dst / "empty", (1_000_000_000, 1_000_000_000))
    dirs = [{"path": str(src), "target": str(dst)}]
    near, _, _ = run_verify(tmp_path, dirs, None, "--quick")
    assert near.returncode == 1  # 3 s apart
    wide, wide_doc, _ = run_verify(tmp_path, dirs, None, "--quick", "--modify-window", "3")
    assert wide.returncode == 0 and wide_doc is not None
    assert wide_doc["directories"][0]["modify_window"] == 3
    config = tmp_path / "quick.yaml"
    config.write_text(json.dumps({"directories": dirs, "mode": "quick", "modify_window": 5}))
    table = subprocess.run(
        [*smsagent_command(), "verify", "--config", str(config), "--no-upload",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert (
        "mode: quick (same type and size, modification times at most 5 s apart; no content read)"
        in table.stdout
    )
    assert "hashing on" not in table.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="needs root and setpriv to drop the capability to read every file",
)
def test_quick_mode_opens_no_file(tmp_path: Path) -> None:
    """A file root cannot open without CAP_DAC_OVERRIDE: content mode reports it unreadable,
    quick mode never tries (small files are otherwise read during the scan)."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"closed": "small", "big": b"x" * 400_000})
    write_tree(dst, {"closed": "small", "big": b"x" * 400_000})
    preserve_mtimes(src, dst)
    for path in (src / "closed", dst / "closed", src / "big", dst / "big"):
        os.chmod(path, 0)
    config = tmp_path / "agent.yaml"
    config.write_text(json.dumps({"directories": [{"path": str(src), "target": str(dst)}],
                                  "state_dir": str(tmp_path / "state")}))  # fmt: skip

    def verify(*extra: str) -> dict:
        done = subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *smsagent_command(),
             "verify", "--config", str(config), "--json", "--no-upload", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return json.loads(done.stdout)["directories"][0]

    assert verify()["num_error_files"] == 2
    quick = verify("--quick")
    assert (quick["num_identical_files"], quick["num_error_files"]) == (2, 0)


def test_the_tasks_consistency_mode_picks_quick_unless_the_config_says(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    write_tree(src, {"a": "aaaa"})
    write_tree(dst, {"a": "bbbb"})  # same size, other content
    preserve_mtimes(src, dst)
    token = tmp_path / "token"
    token.write_text("TOKEN\n")
    settings = {"CONSISTENCY_DIR": str(src), "CONSISTENCY_MODE": "fast"}
    with Emulator(token="TOKEN", settings=settings) as emu:
        config = {"endpoint": emu.url, "task_id": "T", "auth": {"token_file": str(token)},
                  "directories": "from_task", "target": str(dst.parent / "map"),
                  "state_dir": str(tmp_path / "state")}  # fmt: skip
        mapped = dst.parent / "map" / str(src).lstrip("/")
        mapped.parent.mkdir(parents=True)
        os.symlink(dst, mapped)
        for mode, expected in ((None, "quick"), ("content", "content")):
            if mode:
                config["mode"] = mode
            path = tmp_path / "agent.yaml"
            path.write_text(json.dumps(config))
            done = subprocess.run(
                [*smsagent_command(), "verify", "--config", str(path), "--json", "--no-upload"],
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            document = json.loads(done.stdout)
            assert document["mode"] == expected, done.stderr
            assert done.returncode == (0 if expected == "quick" else 1)


@pytest.mark.parametrize("remote_side", ["target", "source"])
def test_quick_over_ssh_answers_as_locally(
    sshd: Sshd, scenario: tuple[Path, Path], tmp_path: Path, remote_side: str
) -> None:
    src, dst = scenario
    local, local_doc, _ = run_verify(
        tmp_path, [{"path": str(src), "target": str(dst)}], None, "--quick"
    )
    remote_entry = {"path": str(src), "target": str(dst)}
    remote_entry[remote_side] = sshd.url(dst if remote_side == "target" else src)
    remote, remote_doc, _ = run_verify(
        tmp_path, [remote_entry], sshd.ssh_section(python=sys.executable), "--quick"
    )
    assert local.returncode == remote.returncode == 1, remote.stderr
    assert local_doc is not None and remote_doc is not None
    assert local_doc["consistency_result"] == remote_doc["consistency_result"]
    assert remote_doc["directories"][0]["mode"] == "quick"
    assert remote_doc["directories"][0]["bytes_hashed"] == 0

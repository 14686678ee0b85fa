"""The helper on every Python a target may have (3.6 to 3.13), through the real SSH path.

Each interpreter found under pyenv's root (`pyenv root`/versions/X.Y.Z) is the target's
`ssh.python` for one run on the SSH scenario trees: one session per interpreter, so the
matrix costs a few seconds. None of them has the xxhash module, so each must hash with xxh3
through libxxhash (ctypes) wherever the library is installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.verify import helper

from .reference import expected_counts
from .sshd import Sshd, sshd_server  # noqa: F401 - the `sshd` fixture
from .test_ssh import EXPECTED, build_scenario, run_verify

# The interpreters of the machine image (`pyenv versions`); RHEL 8's platform-python is 3.6.
VERSIONS = ["3.6.15", "3.7.16", "3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"]


def pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])
    if shutil.which("pyenv"):
        done = subprocess.run(["pyenv", "root"], capture_output=True, text=True, timeout=30)
        if done.returncode == 0 and done.stdout.strip():
            return Path(done.stdout.strip())
    return Path.home() / ".pyenv"


@pytest.fixture(scope="module")
def scenario_trees(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pythons")
    build_scenario(root / "src", root / "dst")
    return root / "src", root / "dst"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_helper_gives_the_reference_counts_on_each_python(
    sshd: Sshd, scenario_trees: tuple[Path, Path], tmp_path: Path, version: str
) -> None:
    python = pyenv_root() / "versions" / version / "bin" / "python3"
    if not os.access(python, os.X_OK):
        pytest.skip(f"Python {version} is not installed here ({python} is absent)")
    src, dst = scenario_trees
    done, document, _ = run_verify(
        tmp_path,
        [{"path": str(src), "target": sshd.url(dst)}],
        sshd.ssh_section(python=str(python)),
    )
    assert done.returncode == 1, done.stderr  # the scenario has differences
    assert document is not None and "Traceback" not in done.stderr
    result = document["directories"][0]
    assert result["error"] is None and result["error_samples"] == []
    want = expected_counts(os.fsencode(src), os.fsencode(dst))
    got = {key: result[f"num_{key}_files"] for key in ("total", "identical", "different")}
    got["missing"] = result["num_target_miss_files"]
    got["more"] = result["num_target_more_files"]
    assert got == want
    assert {k: result[k] for k in EXPECTED} == EXPECTED
    # No interpreter here has the xxhash module: each takes the ctypes route.
    via = "libxxhash" if helper.LibXxhash.load() is not None else "hashlib"
    assert (result["hash_algorithm"], result["hash_via"]) == (
        "xxh3-128" if via == "libxxhash" else "blake2b",
        via,
    )


def test_a_streamed_listing_on_the_oldest_python(sshd: Sshd, tmp_path: Path) -> None:
    """A directory past the size that switches the helper to sorted runs and chunks, on the
    oldest interpreter present: the run merging and chunking code runs there too."""
    present = [v for v in VERSIONS if os.access(pyenv_root() / "versions" / v / "bin" / "python3",
                                                os.X_OK)]  # fmt: skip
    if not present:
        pytest.skip(f"none of Python {', '.join(VERSIONS)} is installed under {pyenv_root()}")
    python = pyenv_root() / "versions" / present[0] / "bin" / "python3"
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    count = 2 * helper.RUN_ENTRIES + 1000  # more than two runs, more than one chunk
    for index in range(count):
        name = f"f{(index * 7919) % count:06d}"  # created out of order
        (src / name).write_bytes(name.encode())
        if index % 5000 != 1:
            (dst / name).write_bytes(name.encode() if index % 4000 else b"X" * len(name))
    (dst / "zz-extra").write_bytes(b"more")
    done, document, _ = run_verify(
        tmp_path, [{"path": str(src), "target": sshd.url(dst)}],
        sshd.ssh_section(python=str(python)), "--no-cache",
    )  # fmt: skip
    assert done.returncode == 1 and document is not None, done.stderr
    result = document["directories"][0]
    assert result["error"] is None, result
    want = expected_counts(os.fsencode(src), os.fsencode(dst))
    got = {key: result[f"num_{key}_files"] for key in ("total", "identical", "different")}
    got["missing"] = result["num_target_miss_files"]
    got["more"] = result["num_target_more_files"]
    assert got == want
    assert (want["missing"], want["more"]) == (len(range(1, count, 5000)), 1)
    assert want["different"] > 0

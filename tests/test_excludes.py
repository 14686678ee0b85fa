"""Gitignore-style exclude patterns: a table, and the same verdicts as git on generated
patterns (`git check-ignore --no-index` is the reference)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.verify.excludes import ExcludeRules

CASES = [
    # patterns, base, path, is_dir, excluded
    (["*.log"], "/var", b"a.log", False, True),
    (["*.log"], "/var", b"deep/er/a.log", False, True),
    (["*.log"], "/var", b"a.logx", False, False),
    (["cache/"], "/var", b"cache", True, True),
    (["cache/"], "/var", b"cache", False, False),
    (["cache/"], "/var", b"x/cache", True, True),
    (["/tmp"], "/var", b"tmp", True, True),
    (["/tmp"], "/var", b"x/tmp", True, False),
    (["/var/log"], "/var", b"log", True, True),  # an absolute source path
    (["/var/log"], "/srv", b"log", True, False),
    (["log/*.gz"], "/var", b"log/a.gz", False, True),
    (["log/*.gz"], "/var", b"log/x/a.gz", False, False),
    (["**/tmp/*"], "/", b"a/b/tmp/x", False, True),
    (["a/**"], "/", b"a/b/c", False, True),
    (["a/**/z"], "/", b"a/z", False, True),
    (["a/**/z"], "/", b"a/b/c/z", False, True),
    (["*", "!keep"], "/", b"keep", False, False),
    (["*", "!keep"], "/", b"drop", False, True),
    (["f?le"], "/", b"file", False, True),
    (["[ab]c"], "/", b"bc", False, True),
    (["[!ab]c"], "/", b"bc", False, False),
    (["caf\u00e9"], "/", "café".encode(), False, True),
    (["*"], "/", b"\xff\xfe", False, True),
    (["# comment", ""], "/", b"# comment", False, False),
    (["with\\ space"], "/", b"with space", False, True),
]


@pytest.mark.parametrize(("patterns", "base", "path", "is_dir", "excluded"), CASES)
def test_pattern(patterns: list[str], base: str, path: bytes, is_dir: bool,
                 excluded: bool) -> None:  # fmt: skip
    assert ExcludeRules(patterns, base=base).excluded(path, is_dir) is excluded


def test_empty_rules_are_falsy() -> None:
    assert not ExcludeRules([])
    assert not ExcludeRules(["# only a comment"])


# --- the same verdicts as git -------------------------------------------------------------

TREE = {  # path: is a directory
    "a": True, "a/b": True, "a/b/c": False, "a/b/d.log": False, "a/x.log": False,
    "b": True, "b/a": False, "foo": False, "foo ": False, "foo\\": False, "a b": False,
    ".hidden": False, "c.tmp": True, "c.tmp/inner": False, "]": False, "x[y": False,
}  # fmt: skip
TOKENS = ["a", "b", "c", "foo", "/", "*", "**", "?", "[ab]", "[!a]", "[]a]", "\\*", "\\ ", " ",
          ".log", ".tmp", "x", "\\[", "\\!", "\\#", "d"]  # fmt: skip


def pattern() -> st.SearchStrategy[str]:
    body = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=5).map("".join)
    # Only `**` standing alone between slashes (or at an end): git's documentation calls any
    # other run of asterisks plain `*`, but git itself is not consistent there (`a**/**`
    # ignores `a` itself), so those patterns are not a reference for the agent.
    return st.tuples(st.sampled_from(["", "!", "/", "**/"]), body,
                     st.sampled_from(["", "/", "/**"])).map("".join).filter(
                         lambda p: not re.search(r"[^/]\*\*|\*\*[^/]", p))  # fmt: skip


@pytest.fixture(scope="module")
def git_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("gitignore")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for path, is_dir in TREE.items():
        if is_dir:
            (root / path).mkdir(parents=True, exist_ok=True)
        else:
            (root / path).write_text("x")
    return root


def git_ignored(root: Path, patterns: list[str]) -> set[str]:
    """The paths of TREE that `git check-ignore --no-index` calls ignored (a path under an
    ignored directory is ignored: the agent does not enter that directory)."""
    (root / ".gitignore").write_text("".join(p + "\n" for p in patterns))
    done = subprocess.run(
        ["git", "-C", str(root), "check-ignore", "--no-index", "-z", "--stdin"],
        input="".join(p + "\0" for p in TREE).encode(), capture_output=True, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    hits = {p.decode() for p in done.stdout.split(b"\0") if p}
    return {p for p in TREE if any(p == h or p.startswith(h.rstrip("/") + "/") for h in hits)}


def agent_ignored(patterns: list[str]) -> set[str]:
    rules = ExcludeRules(patterns, base="/")  # the absolute-path extension adds nothing here
    out = set()
    for path in TREE:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(rules.excluded(p.encode(), TREE[p]) for p in prefixes):
            out.add(path)
    return out


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same draws in every CI run
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(patterns=st.lists(pattern(), min_size=1, max_size=3))
def test_the_same_paths_are_excluded_as_by_git(git_tree: Path, patterns: list[str]) -> None:
    assert agent_ignored(patterns) == git_ignored(git_tree, patterns), patterns


@pytest.mark.parametrize(
    "patterns",
    [["foo\\ "], ["foo "], ["foo\\\\ "], ["[]a]"], ["\\!b", "b"], ["a/", "!a/b"], ["**/c"],
     ["a/**"], ["a/**/d.log"], ["*.tmp/"], ["\\#x"], [" foo"]],
)  # fmt: skip
def test_known_cases_agree_with_git(git_tree: Path, patterns: list[str]) -> None:
    assert agent_ignored(patterns) == git_ignored(git_tree, patterns), patterns

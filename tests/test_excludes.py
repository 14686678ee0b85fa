"""Gitignore-style exclude patterns, as a table."""

from __future__ import annotations

import pytest

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

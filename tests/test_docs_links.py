"""The README and docs/*.md: every relative link points to a file that exists (and, for a link
into a markdown file with #anchor, to one of its headings). Pure text, no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_EXTERNAL = ("http://", "https://", "mailto:")


def prose(text: str) -> str:
    """The text without fenced code blocks and inline code (links there are not links)."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def links(text: str):
    return _LINK.findall(prose(text))


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set:
    """Every heading anchor of a page, repeated headings numbered as GitHub does (-1, -2, ...)."""
    seen: dict = {}
    out = set()
    for heading in _HEADING.findall(_FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


def broken_links(page: Path):
    """(target, why) for every relative link of ``page`` that does not resolve."""
    bad = []
    for target in links(page.read_text(encoding="utf-8")):
        if target.startswith(_EXTERNAL):
            continue
        path, _, anchor = target.partition("#")
        dest = page if not path else (page.parent / path).resolve()
        if not dest.exists():
            bad.append((target, "no such file"))
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            bad.append((target, f"no heading #{anchor} in {path or page.name}"))
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_the_checker_catches_a_missing_file_and_a_missing_heading(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## The `bench` command: measured\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok](other.md#the-bench-command-measured) [ok](#here) [web](https://example.org/x)\n"
        "[gone](missing.md) [no heading](other.md#nowhere) ![img](pic.png)\n"
        "`[in code](ignored.md)`\n```\n[in a block](ignored.md)\n```\n## Here\n"
    )
    assert broken_links(page) == [
        ("missing.md", "no such file"),
        ("other.md#nowhere", "no heading #nowhere in other.md"),
        ("pic.png", "no such file"),
    ]


def test_readme_starts_with_the_two_commands_and_stays_a_front_page():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("```\nmake demo\nmake test\n```\n")
    assert len(text.splitlines()) <= 160, "the README is the front page: move details into docs/"

"""The README stays a user's page and every relative link in the documentation resolves.

Issue 23, finding 6: README.md holds what users need (at most 250 lines);
the rest lives in docs/*.md. A moved section must not leave a link behind
that points at nothing: every relative Markdown link (and image) in
README.md and docs/*.md names a file or folder that exists, and a link with
an `#anchor` into a Markdown file names a heading that file has (GitHub's
heading ids).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from capgen.cli_support.exit_codes import ExitCode

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`+[^`\n]*`+")
# [text](target) and ![alt](target), with an optional "title".
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # https:, mailto:, …


def _prose(text: str) -> str:
    """The Markdown without fenced code blocks and inline code (links there are not links)."""
    return _INLINE_CODE.sub("code", _FENCE.sub("", text))


def _links(path: Path) -> list[str]:
    return _LINK.findall(_prose(path.read_text(encoding="utf-8")))


def _slug(heading: str) -> str:
    """GitHub's id for a heading: its text, lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for heading in _HEADING.findall(text):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """Each link of `page` that names no file under `root`, or no heading of the file, and why."""
    broken = []
    for target in _links(page):
        if _EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        file = (page.parent / path_part).resolve() if path_part else page
        if not file.is_relative_to(root):
            broken.append(f"{target} (outside the repository)")
        elif not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target} (no such heading in {file.relative_to(root)})")
    return broken


def test_the_readme_is_at_most_250_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; move developers' matters into docs/"
    )


def test_the_docs_pages_exist_and_are_linked_from_the_readme() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for target in _links(README)
        if not _EXTERNAL.match(target)
    }
    pages = [page for page in PAGES if page.parent.name == "docs"]
    assert len(pages) >= 8, pages
    for name in ("cli", "convert", "serve", "ray", "benchmarks", "errors", "development"):
        page = ROOT / "docs" / f"{name}.md"
        assert page in pages, page
        assert page.resolve() in linked, f"README.md does not link docs/{name}.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    assert _links(page) or page != README, "no links found: the link pattern is broken"
    assert _broken_links(page) == []


def test_the_link_checker_sees_what_is_broken(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A heading: with `code`\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#a-heading-with-code) ![ok](there.md) [web](https://x.y/z)\n"
        "[gone](missing.md) [no heading](there.md#nothing) [self](#here)\n"
        "`[not a link](nowhere.md)`\n```\n[nor](this.md)\n```\n## Here\n",
        encoding="utf-8",
    )
    assert _links(page) == [
        "there.md",
        "there.md#a-heading-with-code",
        "there.md",
        "https://x.y/z",
        "missing.md",
        "there.md#nothing",
        "#here",
    ]
    broken = [entry.split(" ")[0] for entry in _broken_links(page, root=tmp_path)]
    assert broken == ["missing.md", "there.md#nothing"]
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "up.md").write_text("[out](../../etc/passwd)\n", encoding="utf-8")
    assert _broken_links(tmp_path / "docs" / "up.md", root=tmp_path) == [
        "../../etc/passwd (outside the repository)"
    ]


def test_the_readme_short_exit_code_table_lists_every_exit_code() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Errors and exit codes", 1)[1].split("\n## ", 1)[0]
    codes = [int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.M)]
    assert codes == [int(code) for code in ExitCode]
    assert "(docs/errors.md)" in section

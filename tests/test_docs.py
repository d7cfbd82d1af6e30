"""The documentation: README.md stays a short guide, every relative link and image in README.md
and docs/ points at something that exists (a file, and for an #anchor into a Markdown file a
heading with that slug), every docs page can be reached from README.md, and the README's
verdict counts are REPORT.md's. Fast: reads Markdown only, trains nothing."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from bnrepro.claims import VERDICTS

REPO = Path(__file__).resolve().parents[1]
MAX_README_LINES = 300  # issue 25: the README guides; the rest lives in docs/

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), an optional "title" after the target.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # https:, mailto:, ...
# the report's (and a "mixed" column while a claims file of the old rule is left: bnrepro.report)
HEADLINE_HEADER = "| source | claims | " + " | ".join(VERDICTS)


def prose(text: str) -> str:
    """Markdown without code blocks and code spans: links and headings there are not rendered."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def markdown_files(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def link_targets(page: Path) -> list[str]:
    """Every link and image target of a page, external ones included."""
    return LINK.findall(prose(page.read_text()))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text lower-cased, punctuation dropped (hyphens and
    underscores kept), spaces as hyphens. Link syntax in the heading counts by its text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    # Code spans in a heading count by their text (slug drops the backticks).
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        out.add(f"{base}-{seen[base]}" if base in seen else base)
        seen[base] = seen.get(base, 0) + 1
    return out


def resolve(page: Path, target: str) -> tuple[Path, str]:
    """The file a relative target names (the page itself for a bare #anchor) and its anchor."""
    path, _, anchor = target.partition("#")
    return (page.parent / unquote(path)).resolve() if path else page.resolve(), anchor


def broken_links(root: Path) -> list[str]:
    """One line per relative link or image, in README.md or docs/, whose file is missing or
    outside the repository, or whose anchor names no heading of the Markdown file it points to."""
    root = root.resolve()
    broken = []
    for page in markdown_files(root):
        for target in link_targets(page):
            if EXTERNAL.match(target):
                continue
            where = f"{page.relative_to(root)}: ({target})"
            path, anchor = resolve(page, target)
            if not path.is_relative_to(root) or not path.exists():
                broken.append(f"{where}: no file {path}")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{where}: no heading with the anchor #{anchor} in "
                              f"{path.relative_to(root)}")
    return broken


def orphan_pages(root: Path) -> list[Path]:
    """The docs pages that no chain of links from README.md reaches."""
    root = root.resolve()
    reached, todo = set(), [root / "README.md"]
    while todo:
        page = todo.pop()
        if page in reached or not page.is_file():
            continue
        reached.add(page)
        todo += [path for target in link_targets(page) if not EXTERNAL.match(target)
                 for path, _ in [resolve(page, target)] if path.suffix == ".md"]
    return [page for page in sorted((root / "docs").rglob("*.md")) if page not in reached]


def headline_table(page: Path) -> list[str]:
    """The rows of a page's verdict-count table (header, separator and one row per source)."""
    lines = page.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADLINE_HEADER))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    return rows


# The repository's own documentation.

def test_the_readme_is_a_short_guide() -> None:
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, (
        f"README.md has {len(lines)} lines (at most {MAX_README_LINES}): move detail to docs/")


def test_every_relative_link_and_image_points_at_something_that_exists() -> None:
    assert broken_links(REPO) == []


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    assert (REPO / "docs").is_dir()
    assert orphan_pages(REPO) == []


def test_the_readme_verdict_counts_are_the_reports() -> None:
    readme = headline_table(REPO / "README.md")
    assert len(readme) > 2, "the README's verdict table has no rows"
    assert readme == headline_table(REPO / "results" / "REPORT.md")


# The checks themselves, on a small made-up repository: each must catch what it is for.

def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """README -> docs/a.md -> docs/sub/b.md, an image, anchors, code that must be ignored."""
    write(tmp_path / "README.md",
          "# Top\n\n![fig](results/fig.png)\n[a](docs/a.md#a-page) [web](https://x.org/y)\n"
          "[here](#top)\n```\n[not a link](nowhere.md)\n# not a heading\n```\n"
          "`[also not](nowhere.md)`\n")
    write(tmp_path / "results" / "fig.png", "png")
    write(tmp_path / "docs" / "a.md",
          "# A page\n\n## Which `machine`: made it?\n\n[b](sub/b.md) [up](../README.md#top)\n"
          "[self](#which-machine-made-it)\n")
    write(tmp_path / "docs" / "sub" / "b.md", "# B\n\n## Notes\n\n## Notes\n\n[n](#notes-1)\n")
    return tmp_path


def test_a_sound_repository_passes(repo: Path) -> None:
    assert broken_links(repo) == []
    assert orphan_pages(repo) == []


@pytest.mark.parametrize("link", [
    "[gone](docs/missing.md)",             # a missing page
    "![gone](results/missing.png)",        # a missing image
    "[bad anchor](docs/a.md#no-such-heading)",
    "[bad anchor here](#no-such-heading)",
    "[outside](../elsewhere.md)",          # outside the repository
    "[code heading](#not-a-heading)",      # a '#' line in a code block is no heading
])
def test_a_broken_link_is_reported(repo: Path, link: str) -> None:
    readme = repo / "README.md"
    readme.write_text(readme.read_text() + link + "\n")
    (repo.parent / "elsewhere.md").unlink(missing_ok=True)
    broken = broken_links(repo)
    assert len(broken) == 1 and broken[0].startswith("README.md: ("), broken


def test_a_page_nothing_links_to_is_an_orphan(repo: Path) -> None:
    write(repo / "docs" / "lonely.md", "# Lonely\n\n[a](a.md)\n")  # links out, none link in
    assert orphan_pages(repo) == [(repo / "docs" / "lonely.md").resolve()]


def test_a_page_linked_only_from_code_is_an_orphan(repo: Path) -> None:
    readme = repo / "README.md"
    readme.write_text(readme.read_text().replace("[a](docs/a.md#a-page)", "`docs/a.md`"))
    assert orphan_pages(repo) == [(repo / "docs" / p).resolve() for p in ("a.md", "sub/b.md")]


def test_differing_verdict_counts_are_caught(repo: Path) -> None:
    table = (f"{HEADLINE_HEADER} |\n|---|---|---|---|---|---|\n"
             "| Paper (2015) | 3 | 2 | 1 | 0 | 0 |\n")
    write(repo / "a.md", "# A\n\n" + table)
    write(repo / "b.md", "# B\n\n" + table.replace("| 2 | 1 |", "| 1 | 2 |") + "\nafter\n")
    assert headline_table(repo / "a.md") != headline_table(repo / "b.md")
    assert len(headline_table(repo / "b.md")) == 3

"""Every relative link and anchor in the repository's Markdown resolves, as GitHub renders them.

Anchors follow GitHub: the heading's text lowercased, punctuation other than `-` and `_` dropped, spaces
turned into hyphens, and a repeated heading gets -1, -2... Links inside code (fenced blocks, `spans`) and
links with a scheme (https:, mailto:) are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "node_modules", ".git"}

FENCE = re.compile(r"^\s{0,3}(```|~~~)")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(].*?)?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.IGNORECASE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.md") if not SKIP_DIRS.intersection(p.relative_to(root).parts))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], None
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match:
            if fenced is None:
                fenced = match.group(1)
            elif match.group(1) == fenced:
                fenced = None
            continue
        if fenced is None:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text (before the duplicate suffix)."""
    text = CODE_SPAN.sub(lambda m: m.group(2), heading)
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every anchor a Markdown file defines: its headings (with -1, -2 for repeats) and HTML name/id."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, line in prose_lines(text):
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def link_targets(text: str) -> list[tuple[int, str]]:
    """(line number, target) of every inline link, image and reference definition outside code."""
    targets = []
    for number, line in prose_lines(text):
        line = CODE_SPAN.sub("", line)
        for match in INLINE_LINK.finditer(line):
            targets.append((number, match.group(1).strip("<>")))
        match = REFERENCE_DEF.match(line)
        if match:
            targets.append((number, match.group(1).strip("<>")))
    return targets


def broken_links(root: Path) -> list[str]:
    """'file:line: target (why)' for every relative link or anchor that does not resolve."""
    cache: dict[Path, set[str]] = {}

    def anchors_of(path: Path) -> set[str]:
        if path not in cache:
            cache[path] = anchors(path.read_text(encoding="utf-8"))
        return cache[path]

    problems = []
    for md in markdown_files(root):
        for number, target in link_targets(md.read_text(encoding="utf-8")):
            if SCHEME.match(target) or target.startswith("//"):
                continue
            path_part, _, fragment = target.partition("#")
            where = f"{md.relative_to(root)}:{number}: {target}"
            dest = md if not path_part else (md.parent / path_part).resolve()
            if not dest.exists():
                problems.append(f"{where} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors_of(dest):
                problems.append(f"{where} (no heading with anchor #{fragment})")
    return problems


def test_every_relative_link_and_anchor_resolves() -> None:
    problems = broken_links(ROOT)
    assert not problems, "broken links in the docs:\n" + "\n".join(problems)


def test_the_repository_has_docs_to_check() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files(ROOT)}
    assert {"README.md", "README-isnet-tiny.md", "docs/api.md", "bench/README.md"} <= names


@pytest.mark.parametrize(("heading", "anchor"), [
    ("Quick start", "quick-start"),
    ("`GET /api/bg/openapi.json` and the API page at `/docs/`", "get-apibgopenapijson-and-the-api-page-at-docs"),
    ("Limits: what is refused and why", "limits-what-is-refused-and-why"),
    ("`image_url`", "image_url"),
    ("isnet-general-tiny: the recipe", "isnet-general-tiny-the-recipe"),
    ("Pre- and post-processing", "pre--and-post-processing"),
    ("Slow clients: the HTTP front", "slow-clients-the-http-front"),
    ("See [the API](docs/api.md) first", "see-the-api-first"),
])
def test_anchor_follows_github(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_the_check_reports_broken_links_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Usage\n\n## Errors\n\n## Errors\n\ntext\n")
    (tmp_path / "a.md").write_text(
        "# Title\n\n## Quick start\n\n"
        "[ok](docs/b.md) [ok](docs/b.md#errors) [ok](docs/b.md#errors-1) [ok](#quick-start) [ok](docs/)\n"
        "[ok](https://example.com/missing.md) [ok](mailto:x@example.com) `[code](nowhere.md)`\n"
        "[gone](missing.md)\n"
        "[bad anchor](docs/b.md#errors-2)\n"
        "[bad local](#quick-stat)\n"
        "![missing image](img/none.png)\n"
        "[ref]: docs/nothing.md\n"
        "```\n[in a fence](nowhere.md)\n```\n"
    )
    problems = broken_links(tmp_path)
    assert [p.split(": ", 1)[1] for p in problems] == [
        "missing.md (no such file)",
        "docs/b.md#errors-2 (no heading with anchor #errors-2)",
        "#quick-stat (no heading with anchor #quick-stat)",
        "img/none.png (no such file)",
        "docs/nothing.md (no such file)",
    ]
    assert problems[0].startswith("a.md:7:")

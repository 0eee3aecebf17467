"""Every relative link of the README and of docs/ leads somewhere: the file exists, and an
#anchor names a heading of the page it points at, as GitHub makes anchors of headings."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]

FENCE = re.compile(r"^ {0,3}(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)


def prose_lines(text: str) -> list[str]:
    """The page's lines outside fenced code blocks and HTML comments: links and headings in
    code are examples, not links."""
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: its text without markup, lowercased, every character but
    letters, digits, spaces, hyphens and underscores dropped, spaces made hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.lower()
    text = "".join(c for c in text if c.isalnum() or c in " -_")
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a page; a heading's slug used before gets -1, -2, ... as on GitHub."""
    seen: Counter = Counter()
    found = set()
    for line in prose_lines(page.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        found.add(base if not seen[base] else f"{base}-{seen[base]}")
        seen[base] += 1
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's links and images, outside code."""
    targets = []
    for line in prose_lines(page.read_text(encoding="utf-8")):
        targets += LINK.findall(CODE_SPAN.sub("", line))
    return targets


def broken(page: Path) -> list[str]:
    """What is wrong with the page's relative links, one line each."""
    faults = []
    for target in links(page):
        if SCHEME.match(target):
            continue  # http(s), mailto: not checked here (no network in tests)
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            faults.append(f"{target}: no such file")
        elif anchor and dest.suffix != ".md":
            faults.append(f"{target}: an anchor into a file that is no page")
        elif anchor and anchor not in anchors(dest):
            faults.append(f"{target}: no heading of {dest.name} has the anchor #{anchor}")
    return faults


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert broken(page) == []


def test_the_readme_links_to_every_page_of_docs():
    targets = {target.partition("#")[0] for target in links(ROOT / "README.md")}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in targets, f"README.md does not lead to docs/{page.name}"


def test_slugs_are_githubs():
    assert slug("`GpuId=auto`: Cylindria's own queue") == "gpuidauto-cylindrias-own-queue"
    assert slug("`GET /jobevents/<job_id>/`") == "get-jobeventsjob_id"
    assert slug("Assets — input files for workflows") == "assets--input-files-for-workflows"
    assert slug("From comfy-sdk (Comfy API v2)") == "from-comfy-sdk-comfy-api-v2"


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## A part\n\n## A part\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n[ok](other.md#a-part-1) [self](#page) [web](https://x.example/#no)\n"
                    "`[code](missing.md)`\n```\n[fenced](missing.md)\n```\n"
                    "[gone](missing.md) [bad](other.md#b-part) ![img](pic.png)\n", encoding="utf-8")
    assert broken(page) == ["missing.md: no such file",
                            "other.md#b-part: no heading of other.md has the anchor #b-part",
                            "pic.png: no such file"]

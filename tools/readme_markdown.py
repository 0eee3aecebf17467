"""The runnable blocks of a Markdown file, as marked for tools/readme_samples.py, and the
file with new shown outputs written in.

    <!-- run -->                                   the next ```bash block runs to completion
    <!-- run: background ready=<url> -->           it runs in the background until the end;
                                                   the next block waits until <url> answers
    <!-- output -->                                the next fenced block, right after a run
                                                   block, is what that block printed

A marker is on the line immediately before its fence, with the fence's indentation (a block
in a list item is indented). A marker anywhere else is an error, never ignored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = re.compile(
    r"^(?P<indent>\s*)<!--\s*(?P<kind>run|output)\b(?::\s*(?P<options>.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<ticks>`{3,})(?P<info>[^`]*)$")
RUNNABLE = ("bash", "sh", "shell")


class MarkupError(ValueError):
    """A marker that does not mark what it should; says where."""


@dataclass(frozen=True)
class Fenced:
    """One fenced block: where it is (0-based line indexes of its fences) and its text."""

    opening: int
    closing: int
    indent: str
    info: str  # what follows the opening backticks ("bash", "json", "")
    text: str  # its lines without the indentation, joined by newlines


@dataclass(frozen=True)
class Step:
    """A block to run, how, and the output shown after it (if any)."""

    line: int  # 1-based line of its marker, for messages
    block: Fenced
    background: bool = False
    ready: str | None = None
    output: Fenced | None = None


def steps(markdown: str, name: str = "README.md") -> list[Step]:
    """Every marked block in order; MarkupError for a marker that marks nothing runnable."""
    lines = markdown.splitlines()
    found: list[Step] = []
    at = 0
    while at < len(lines):
        marker = MARKER.match(lines[at])
        if marker is None:
            at += 1
            continue
        where = f"{name}:{at + 1}"
        if marker["kind"] == "output":
            raise MarkupError(f"{where}: <!-- output --> is not right after a run block")
        block = _fenced(lines, at + 1, marker["indent"], where)
        if block.info.strip().split(" ")[0] not in RUNNABLE:
            raise MarkupError(f"{where}: a run marker needs a ```bash block after it, "
                              f"not ```{block.info}")
        background, ready = _options(marker["options"], where)
        output, next_line = _output_after(lines, block.closing + 1, name)
        found.append(Step(at + 1, block, background, ready, output))
        at = next_line
    return found


def _options(text: str | None, where: str) -> tuple[bool, str | None]:
    """(background, ready URL) from `run: background ready=<url>`."""
    background, ready = False, None
    for word in (text or "").split():
        if word == "background":
            background = True
        elif word.startswith("ready="):
            ready = word[len("ready="):]
        else:
            raise MarkupError(f"{where}: unknown run option {word!r} "
                              "(known: background, ready=<url>)")
    if background != (ready is not None):
        raise MarkupError(f"{where}: a background block needs ready=<url>, and only it has one")
    return background, ready


def _fenced(lines: list[str], at: int, indent: str, where: str) -> Fenced:
    """The fenced block opening at line `at` (with this indentation)."""
    opening = FENCE.match(lines[at][len(indent):]) if at < len(lines) \
        and lines[at].startswith(indent) else None
    if opening is None:
        raise MarkupError(f"{where}: the marker is not immediately followed by a fenced block")
    ticks = opening["ticks"]
    for closing in range(at + 1, len(lines)):
        if lines[closing].strip() == ticks:
            body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
                    for line in lines[at + 1:closing]]
            return Fenced(at, closing, indent, opening["info"].strip(), "\n".join(body))
    raise MarkupError(f"{where}: the fenced block is never closed")


def _output_after(lines: list[str], at: int, name: str) -> tuple[Fenced | None, int]:
    """The `<!-- output -->` block right after a run block (blank lines between allowed),
    and the line to go on from."""
    ahead = at
    while ahead < len(lines) and not lines[ahead].strip():
        ahead += 1
    marker = MARKER.match(lines[ahead]) if ahead < len(lines) else None
    if marker is None or marker["kind"] != "output":
        return None, at
    block = _fenced(lines, ahead + 1, marker["indent"], f"{name}:{ahead + 1}")
    return block, block.closing + 1


def with_outputs(markdown: str, new: dict[int, str]) -> str:
    """The file with the text of the output blocks opening at these line indexes replaced."""
    lines = markdown.splitlines()
    for step in reversed([s for s in steps(markdown) if s.output and s.output.opening in new]):
        block = step.output
        body = [block.indent + line if line else line
                for line in new[block.opening].splitlines()]
        lines[block.opening + 1:block.closing] = body
    return "\n".join(lines) + ("\n" if markdown.endswith("\n") else "")

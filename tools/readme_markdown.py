"""The runnable blocks of a Markdown file, as marked for tools/readme_samples.py, and the
file with new shown outputs written in.

    <!-- run -->                                   the next ```bash block runs to completion
    <!-- run: background ready=<url> -->           it runs in the background until the end;
                                                   the next block waits until <url> answers
    <!-- output -->                                the next fenced block is what the run block
                                                   before it printed (prose may come between,
                                                   not another fenced block)

A marker is on the line immediately before its fence, with the fence's indentation (a block
in a list item is indented). A marker that marks nothing runnable is an error, never ignored;
markers inside an unmarked fenced block are text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

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
    """Every marked block in order; MarkupError for a marker that marks nothing runnable.
    Unmarked fenced blocks are skipped whole (one may show these markers as text)."""
    lines = markdown.splitlines()
    found: list[Step] = []
    last = None  # the run block an output may still follow (no fenced block since)
    at = 0
    while at < len(lines):
        marker = MARKER.match(lines[at])
        if marker is not None:
            where = f"{name}:{at + 1}"
            block = _fenced(lines, at + 1, marker["indent"], where)
            if marker["kind"] == "output":
                if last is None:
                    raise MarkupError(f"{where}: <!-- output --> does not follow a run block "
                                      "(or another fenced block comes between)")
                found[last] = replace(found[last], output=block)
                last = None
            else:
                found.append(_step(at + 1, block, marker["options"], where))
                last = len(found) - 1
            at = block.closing + 1
        elif FENCE.match(lines[at].strip()):
            at = _closing(lines, at) + 1
            last = None
        else:
            at += 1
    return found


def _step(line: int, block: Fenced, options: str | None, where: str) -> Step:
    """A run marker's step; its block must be a shell block."""
    if block.info.split(" ")[0] not in RUNNABLE:
        raise MarkupError(f"{where}: a run marker needs a ```bash block after it, "
                          f"not ```{block.info}")
    background, ready = _options(options, where)
    return Step(line, block, background, ready)


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
    closing = _closing(lines, at)
    if closing == len(lines):
        raise MarkupError(f"{where}: the fenced block is never closed")
    body = [line[len(indent):] if line.startswith(indent) else line.lstrip()
            for line in lines[at + 1:closing]]
    return Fenced(at, closing, indent, opening["info"].strip(), "\n".join(body))


def _closing(lines: list[str], at: int) -> int:
    """The line closing the fence opened at line `at` (len(lines) if none does)."""
    ticks = FENCE.match(lines[at].strip())["ticks"]
    return next((n for n in range(at + 1, len(lines)) if lines[n].strip() == ticks), len(lines))


def with_outputs(markdown: str, new: dict[int, str]) -> str:
    """The file with the text of the output blocks opening at these line indexes replaced."""
    lines = markdown.splitlines()
    for step in reversed([s for s in steps(markdown) if s.output and s.output.opening in new]):
        block = step.output
        body = [block.indent + line if line else line
                for line in new[block.opening].splitlines()]
        lines[block.opening + 1:block.closing] = body
    return "\n".join(lines) + ("\n" if markdown.endswith("\n") else "")

"""Does a shown output say what a real run printed? The masking rules, in one place, and the
shown outputs rewritten from a real run (tools/readme_samples.py --write).

An output is read as a sequence of items: JSON values (an object or array, possibly wrapped
over several lines, as the README shows answers) and text lines (a line may end in a JSON
object after a prefix, like an event stream's `data: {...}`). Shown and real must have the
same items in the same order, except:

- a text line `...` stands for any number of lines left out;
- in an object, a member `"..."` (its value any string: `"...": "..."`, `"...": "as in
  /jobstatus"`) stands for the members left out; in an array, a last element `"..."` for the
  elements left out;
- what differs from run to run is masked on both sides first (MASKS): times, ids, keys,
  secrets, key names, durations and counters.

JSON is compared as values, in the real key order (so a sample shows keys in the order an
answer has them), never as text: the README may wrap an answer as it likes. Headers and other
lines are compared as text, in order.
"""
from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass

ELIDED = "..."
WIDTH = 100  # a rewritten JSON answer is wrapped at this column

# (what, pattern, replacement): applied in order, to both sides, to every string and line.
MASKS = (
    ("ISO time", r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?Z?", "<time>"),
    ("HTTP date", r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT",
     "<date>"),
    ("clock time", r"\b\d\d:\d\d:\d\d\b", "<clock>"),
    ("UUID", r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<uuid>"),
    ("asset id", r"\b[0-9a-f]{32}\b", "<id>"),
    ("webhook secret", r"whsec_[A-Za-z0-9+/]+=*", "whsec_<secret>"),
    ("webhook signature", r"v1,[A-Za-z0-9+/]+=*", "v1,<signature>"),
    ("webhook message id", r"\bmsg_[A-Za-z0-9]+", "msg_<id>"),
    ("generated key", r"(?<![\w-])[A-Za-z0-9_-]{43}(?![\w-])", "<key>"),
    ("unnamed key's name", r"\bkey-[0-9a-f]{8}\b", "key-<hash>"),
    ("home folder", r"/home/[^/\s\"']+", "/home/<user>"),
    ("duration", r"\b\d+(?:\.\d+)? ?(?:ms|s)\b", "<duration>"),
    ("counter header", r"(?im)^((?:content-length|ratelimit-remaining|ratelimit-reset|"
                       r"retry-after|etag|last-modified|date|x-request-id):\s*).*$",
     r"\1<n>"),
    ("Prometheus sample", r"(?m)^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) [-+0-9.eE]+(?:inf|nan)?$",
     r"\1 <n>"),
)
_MASKS = tuple((re.compile(pattern), replacement) for _, pattern, replacement in MASKS)
JSON_START = re.compile(r"^[\[{]")
EMBEDDED = re.compile(r"^(?P<prefix>[^{\[\"]*?\S[:=] ?)(?P<json>\{.*)$")


def mask(text: str) -> str:
    """`text` with what differs from run to run replaced by placeholders."""
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


@dataclass(frozen=True)
class Item:
    """A JSON value (`prefix` is what precedes it on its line) or a text line (value None)."""

    text: str
    value: object = None
    is_json: bool = False
    prefix: str = ""


def items(output: str) -> list[Item]:
    """An output as JSON values and text lines (trailing spaces and blank lines dropped)."""
    text = "\n".join(line.rstrip() for line in output.replace("\r\n", "\n").split("\n")).strip("\n")
    found, at, decoder = [], 0, json.JSONDecoder()
    while at < len(text):
        end = text.find("\n", at)
        end = len(text) if end == -1 else end
        line = text[at:end]
        if JSON_START.match(line):
            try:
                value, stop = decoder.raw_decode(text, at)
            except ValueError:
                value, stop = None, -1
            if stop != -1 and (stop == len(text) or text[stop] == "\n"):
                found.append(Item(text[at:stop], value, True))
                at = stop + 1
                continue
        found.append(_line(line))
        at = end + 1
    return found


def _line(line: str) -> Item:
    """A text line; one ending in a JSON object after a prefix keeps that object as a value."""
    embedded = EMBEDDED.match(line)
    if embedded is not None:
        try:
            return Item(line, json.loads(embedded["json"]), True, embedded["prefix"])
        except ValueError:
            pass
    return Item(line)


def differences(shown: str, real: str, prefix_only: bool = False) -> list[str]:
    """Why `shown` is not what `real` printed, [] if it is. `prefix_only`: the shown items
    are the first ones printed (a background process goes on printing)."""
    want, got = items(shown), items(real)
    if prefix_only:
        want = want + [Item(ELIDED)]
    if _align(want, got)[0] == 0:
        return []
    first = _first_difference(want, got)
    shown_lines = mask(_canonical(want, prefix_only)).splitlines()
    real_lines = mask(rewritten(shown, real, prefix_only)).splitlines()
    diff = difflib.unified_diff(shown_lines, real_lines, "shown", "real", lineterm="", n=2)
    return ([first] if first else []) + list(diff)


def _canonical(want: list[Item], prefix_only: bool) -> str:
    """The shown items laid out as rewritten() lays them out, to diff with it."""
    kept = want[:-1] if prefix_only else want
    return "\n".join(_styled(item.value, item) if item.is_json else item.text for item in kept)


def _align(want: list[Item], got: list[Item]) -> tuple[int, list[tuple]]:
    """The cheapest way to read the real items as the shown ones: (cost, steps), cost 0 when
    they match. Steps: ("wild", i, j, k): `...` covers real items j..k-1; ("pair", i, j);
    ("drop", i): a shown item the run did not print; ("add", j): a real item not shown. A
    pair of items that differ, a dropped and an added item cost 1 each."""
    n, m = len(want), len(got)
    wild = [w.text == ELIDED and not w.is_json for w in want]
    inf = n + m + 1
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    cost[n][m] = 0
    for i in range(n, -1, -1):
        for j in range(m, -1, -1):
            if i == n and j == m:
                continue
            best = inf
            if i < n and wild[i]:
                best = min(cost[i + 1][j], cost[i][j + 1] if j < m else inf)
            elif i < n:
                best = cost[i + 1][j] + 1
                if j < m and want[i].is_json == got[j].is_json:
                    best = min(best, cost[i + 1][j + 1] + (0 if _same(want[i], got[j]) else 1))
            if j < m and not (i < n and wild[i]):
                best = min(best, cost[i][j + 1] + 1)
            cost[i][j] = best
    return cost[0][0], _steps(want, got, wild, cost)


def _steps(want, got, wild, cost) -> list[tuple]:
    """Walk the cheapest path through the cost table."""
    n, m = len(want), len(got)
    i = j = 0
    path: list[tuple] = []
    while i < n or j < m:
        here = cost[i][j]
        if i < n and wild[i]:
            start = j
            while j < m and cost[i][j + 1] == here and cost[i + 1][j] != here:
                j += 1
            path.append(("wild", i, start, j))
            i += 1
        elif i < n and j < m and want[i].is_json == got[j].is_json and \
                cost[i + 1][j + 1] + (0 if _same(want[i], got[j]) else 1) == here:
            path.append(("pair", i, j))
            i, j = i + 1, j + 1
        elif i < n and cost[i + 1][j] + 1 == here:
            path.append(("drop", i))
            i += 1
        else:
            path.append(("add", j))
            j += 1
    return path


def _same(want: Item, got: Item) -> bool:
    """One shown item says what one real item is."""
    if want.is_json != got.is_json:
        return False
    if not want.is_json:
        return mask(want.text) == mask(got.text)
    return mask(want.prefix) == mask(got.prefix) and not json_differences(want.value, got.value)


def json_differences(shown, real, path: str = "$") -> list[str]:
    """Where a shown JSON value differs from the real one (masked, elisions allowed)."""
    if isinstance(shown, dict) and isinstance(real, dict):
        return _dict_differences(shown, real, path)
    if isinstance(shown, list) and isinstance(real, list):
        return _list_differences(shown, real, path)
    if isinstance(shown, str) and isinstance(real, str):
        return [] if mask(shown) == mask(real) else [f"{path}: shown {shown!r}, real {real!r}"]
    if type(shown) is not type(real) or shown != real:
        return [f"{path}: shown {shown!r}, real {real!r}"]
    return []


def _dict_differences(shown: dict, real: dict, path: str) -> list[str]:
    """Members: the same keys (or a subset, with `"...": "..."`), in the real order."""
    elided = ELIDED in shown
    keys = [k for k in shown if k != ELIDED]
    problems = [f"{path}: shown key {k!r} is not in the answer" for k in keys if k not in real]
    if not elided:
        problems += [f"{path}: the answer's key {k!r} is not shown" for k in real if k not in shown]
    if not problems and keys != [k for k in real if k in shown]:
        problems.append(f"{path}: keys shown in the order {keys}, answered in the order "
                        f"{[k for k in real if k in shown]}")
    for key in keys:
        if key in real:
            problems += json_differences(shown[key], real[key], f"{path}.{key}")
    return problems


def _list_differences(shown: list, real: list, path: str) -> list[str]:
    """Elements: the same number (or the first ones, with a last `"..."`), each alike."""
    elided = bool(shown) and shown[-1] == ELIDED
    kept = shown[:-1] if elided else shown
    if len(kept) > len(real) or (not elided and len(kept) != len(real)):
        return [f"{path}: {len(kept)} elements shown, {len(real)} in the answer"]
    problems = []
    for index, value in enumerate(kept):
        problems += json_differences(value, real[index], f"{path}[{index}]")
    return problems


def _first_difference(want: list[Item], got: list[Item]) -> str:
    """The first JSON difference between items in the same places, for the message."""
    for shown, real in zip(want, got):
        if shown.is_json and real.is_json:
            problems = json_differences(shown.value, real.value)
            if problems:
                return problems[0]
    return ""


def rewritten(shown: str, real: str, prefix_only: bool = False) -> str:
    """The shown output as the real run printed it: its `...` lines and elisions kept where
    they still fit, JSON wrapped at WIDTH, everything else as printed."""
    want, got = items(shown), items(real)
    if prefix_only:
        want = want + [Item(ELIDED)]
    lines = []
    for step in _align(want, got)[1]:
        if step[0] == "wild" and not (prefix_only and step[1] == len(want) - 1):
            lines.append(ELIDED)
        elif step[0] == "pair":
            lines.append(_render(want[step[1]], got[step[2]]))
        elif step[0] == "add":
            lines.append(_render(None, got[step[1]]))
    return "\n".join(lines)


def _render(want: Item | None, got: Item) -> str:
    """One real item as written back: JSON shaped like the shown value (its elisions) and
    laid out as the shown one was (curl's compact line as printed, or wrapped at WIDTH); an
    item nothing was shown for, as printed."""
    if not got.is_json or want is None or not want.is_json:
        return got.text
    shaped = shape(want.value, got.value)
    if shaped == got.value and _is_compact(want) and _is_compact(got):
        return got.text
    return _styled(shaped, want)


def _styled(value, like: Item) -> str:
    """A JSON value laid out as `like` is: after its prefix on one line, compact, or wrapped."""
    if like.prefix:
        return like.prefix + compact(value)
    if _is_compact(like):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return wrap_json(value)


def _is_compact(item: Item) -> bool:
    """Shown as curl prints Cylindria's answers: one line, no spaces between items."""
    return item.text[len(item.prefix):] == json.dumps(item.value, ensure_ascii=False,
                                                      separators=(",", ":"))


def shape(shown, real):
    """The real value with the shown value's elisions (members and elements left out)."""
    if isinstance(shown, dict) and isinstance(real, dict):
        if ELIDED not in shown:
            return {k: shape(shown.get(k), v) for k, v in real.items()}
        keys = list(shown)
        after = keys[keys.index(ELIDED) - 1] if keys.index(ELIDED) else None
        result = {ELIDED: shown[ELIDED]} if after is None or after not in real else {}
        for key, value in real.items():
            if key in shown and key != ELIDED:
                result[key] = shape(shown[key], value)
            if key == after:
                result[ELIDED] = shown[ELIDED]
        return result
    if isinstance(shown, list) and isinstance(real, list):
        if shown and shown[-1] == ELIDED and len(real) >= len(shown) - 1:
            kept = len(shown) - 1
            return [shape(s, r) for s, r in zip(shown, real[:kept])] \
                + ([ELIDED] if len(real) > kept else [])
        return [shape(shown[i] if i < len(shown) else None, r) for i, r in enumerate(real)]
    return real


def compact(value) -> str:
    """One line of JSON, as the README shows values: `, ` and `: ` between items."""
    return json.dumps(value, ensure_ascii=False)


def wrap_json(value, column: int = 0, width: int = WIDTH) -> str:
    """JSON that starts at `column`, members filled into lines of at most `width` columns,
    a continuation line indented to just inside its bracket; a member too long for a line
    is wrapped the same way inside."""
    flat = compact(value)
    if column + len(flat) <= width or not isinstance(value, (dict, list)) or not value:
        return flat
    if isinstance(value, dict):
        members = [(compact(k) + ": ", v) for k, v in value.items()]
        opening, closing = "{", "}"
    else:
        members = [("", v) for v in value]
        opening, closing = "[", "]"
    inner = column + 1
    out, at, wrapped = opening, inner, False
    for index, (label, member) in enumerate(members):
        if index:
            one_line = label + compact(member)
            if not wrapped and at + 2 + len(one_line) + 1 <= width:  # 1: the "," or bracket
                out += ", " + one_line
                at += 2 + len(one_line)
                continue
            out += ",\n" + " " * inner
            at = inner
        text = label + wrap_json(member, at + len(label), width)
        wrapped = "\n" in text  # what follows a wrapped member starts a line of its own
        out += text
        at = len(text.rsplit("\n", 1)[1]) if wrapped else at + len(text)
    return out + closing

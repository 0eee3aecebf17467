"""Issue 26's move: the server's packages under one `cylindria` package, `comfy/` in folders.

Run from the top of a checkout (clean work tree), then review and commit:

    python tools/relayout.py            # git mv + rewrite every reference
    python tools/relayout.py --check    # exit 1 if anything is still to move or rewrite

Idempotent: a second run changes nothing, so it can be run again on a branch that was
merged with code written for the old layout (its imports, patch targets, `-m` modules,
paths in docs). Only the mechanical part is here; what needed judgement (the core that no
longer imports the web layer, the service installers' command line) is in later commits.
"""
from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path.cwd()
TOP = ("config", "service", "web", "webhooks", "storage")  # into cylindria/
FOLDERS = {  # comfy/<folder>/: what each holds (the map in comfy/__init__.py)
    "comfyui": ("one ComfyUI as Cylindria talks to it: HTTP, websocket, its /queue, "
                "/object_info, model files, outputs",
                ["client", "errors", "listener", "queue", "catalogue", "models", "outputs",
                 "status", "gpu"]),
    "jobs": ("the job record and its store, watchers, retention, the contract's view of a job",
             ["job", "store", "watch", "withheld", "retention", "view"]),
    "tracking": ("keeping each job's status true: websocket events, /queue polls, "
                 "reconciliation, outcomes",
                 ["tracker", "poller", "reconcile", "events", "outcome", "gone"]),
    "dispatch": ("Cylindria's own queue (held jobs) and sending jobs to a GPU or cancelling them",
                 ["dispatcher", "held", "submit", "cancel"]),
    "inputs": ("what a workflow brings: the workflow, its assets and file inputs, and their "
               "placing on a GPU", ["workflow", "assets", "placing", "fileinputs"]),
}
RENAMED = {"jobs": "job"}  # comfy/jobs.py -> comfy/jobs/job.py (jobs/ is the folder)
COMFY = {RENAMED.get(m, m): f for f, (_, ms) in FOLDERS.items() for m in ms}
OLD_COMFY = {old: COMFY[new] for old, new in
             [(m, m) for m in COMFY if m not in RENAMED.values()] + list(RENAMED.items())}
STAY = ("encoding", "private")  # comfy/ itself
PACKAGE_DOC = ('"""Cylindria\'s server: settings, the core and its service, the HTTP surface, '
               'webhooks, storage."""\n')
MAIN_DOC = ('"""`python -m cylindria`: the same as `python cylindria.py` and the installed '
            '`cylindria` command."""\n')
LAUNCHER = '''"""Cylindria: the authenticated door to a host's ComfyUI instances.

Run: python cylindria.py --port 8000 --numberOfGpus 2 (or `python -m cylindria`, or the
installed `cylindria` command). The code is the `cylindria` package's (cylindria/cli.py).
"""
import sys

# From the checkout `import cylindria` finds the package directory cylindria/, not this file:
# a package wins over a module of the same name in one folder, so this launcher never shadows
# it (and it is not installed: setup.py installs the package and a console script).
from cylindria.cli import main

if __name__ == "__main__":
    sys.exit(main())
'''
TEXT_SUFFIXES = {".py", ".md", ".txt", ".ini", ".toml", ".cfg", ".yml", ".yaml", ".sh", ""}
SELF = Path(__file__).resolve()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout


def old_submodules() -> dict[str, set[str]]:
    """Each moved package's first-level module and folder names (for dotted names, paths)."""
    found = {}
    for package in TOP:
        base = ROOT / package if (ROOT / package).is_dir() else ROOT / "cylindria" / package
        found[package] = {p.stem for p in base.iterdir()
                          if (p.suffix == ".py" or (p / "__init__.py").exists())
                          and p.name != "__init__.py"} if base.is_dir() else set()
    return found


SUBS = old_submodules()


def new_module(old: str) -> str:
    """The dotted module name in the new layout (unchanged if it is new already)."""
    parts = old.split(".")
    if parts[0] in TOP:
        return "cylindria." + old
    if parts[0] != "comfy" or len(parts) < 2:
        return old
    name = parts[1]
    if name == "jobs":  # the folder, or the old comfy/jobs.py
        if len(parts) > 2 and parts[2] in FOLDERS["jobs"][1]:
            return old
        return ".".join(["comfy", "jobs", "job", *parts[2:]])
    if name in OLD_COMFY:
        return ".".join(["comfy", OLD_COMFY[name], name, *parts[2:]])
    return old


# --- moving files -----------------------------------------------------------------------

def move(src: str, dst: str) -> bool:
    if not (ROOT / src).exists() or (ROOT / dst).exists():
        return False
    (ROOT / dst).parent.mkdir(parents=True, exist_ok=True)
    git("mv", src, dst)
    return True


def write_new(path: str, text: str) -> bool:
    if (ROOT / path).exists():
        return False
    (ROOT / path).parent.mkdir(parents=True, exist_ok=True)
    (ROOT / path).write_text(text, encoding="utf-8")
    git("add", path)
    return True


def comfy_map() -> str:
    lines = ['"""Everything that talks to or tracks ComfyUI, in folders named for what they hold:\n']
    for folder, (what, _) in FOLDERS.items():
        lines.append(f"- {folder}/: {what};\n")
    lines.append("- encoding.py: JSON on the hot paths (orjson); private.py: the data dir "
                 "and the files written private to the service's user.\n")
    return "".join(lines) + '"""\n'


def move_files() -> list[str]:
    """Every git mv, and the new packages' __init__ files; returns what it did."""
    done = []
    for package in TOP:
        if move(package, f"cylindria/{package}"):
            done.append(f"{package}/ -> cylindria/{package}/")
    if (ROOT / "cylindria.py").exists() and not (ROOT / "cylindria" / "cli.py").exists():
        git("mv", "cylindria.py", "cylindria/cli.py")
        (ROOT / "cylindria.py").write_text(LAUNCHER, encoding="utf-8")
        git("add", "cylindria.py")
        done.append("cylindria.py -> cylindria/cli.py (+ launcher)")
    write_new("cylindria/__init__.py", PACKAGE_DOC)
    write_new("cylindria/__main__.py", MAIN_DOC + "import sys\n\nfrom cylindria.cli import main"
              "\n\nsys.exit(main())\n")
    for folder, (what, modules) in FOLDERS.items():
        write_new(f"comfy/{folder}/__init__.py", f'"""{what[0].upper()}{what[1:]}."""\n')
        for module in modules:
            old = {v: k for k, v in RENAMED.items()}.get(module, module)
            if move(f"comfy/{old}.py", f"comfy/{folder}/{module}.py"):
                done.append(f"comfy/{old}.py -> comfy/{folder}/{module}.py")
    init = ROOT / "comfy" / "__init__.py"
    if "in folders named for" not in init.read_text(encoding="utf-8"):
        init.write_text(comfy_map(), encoding="utf-8")
        done.append("comfy/__init__.py: the map of its folders")
    return done


# --- rewriting references ---------------------------------------------------------------

NAME = r"[A-Za-z_][\w.]*"
IMPORT_FROM = re.compile(r"^(\s*from\s+)(" + NAME + r")(\s+import\s+)(\([^)]*\)|[^\n#]*)", re.M)
IMPORT = re.compile(r"^(\s*import\s+)(" + NAME + r")((?:\s+as\s+\w+)?)", re.M)


def dotted_pattern() -> re.Pattern:
    """Old dotted module names: `web.auth`, `comfy.store`, `config.options.X`, ..."""
    tops = "|".join(f"{p}\\.(?:{'|'.join(sorted(SUBS[p]))})" for p in TOP if SUBS[p])
    comfy = "|".join(sorted(OLD_COMFY))
    return re.compile(rf"(?<![\w.])((?:{tops})|comfy\.(?:{comfy}))(?![\w])((?:\.\w+)*)")


def path_pattern() -> re.Pattern:
    """Old paths: `web/auth.py`, `service/`, `comfy/store.py`."""
    tops = "|".join(TOP)
    return re.compile(rf"(?<![\w/.\-])(?:({tops})/(?=[\w]+(?:\.py|/)|[\s`'\"),:;*]|$)"
                      rf"|comfy/({'|'.join(sorted(OLD_COMFY))})\.py\b)", re.M)


DOTTED = dotted_pattern()
PATHS = path_pattern()


def rewrite_dotted(match: re.Match) -> str:
    name, rest = match.group(1), match.group(2)
    return new_module(name + rest)


def rewrite_path(match: re.Match) -> str:
    if match.group(1):
        top = match.group(1)
        tail = match.string[match.end():match.end() + 40]
        first = re.match(r"[\w]+", tail)
        if first and first.group(0) not in SUBS[top]:
            return match.group(0)  # a path of something else (service/unit, storage/...)
        return f"cylindria/{top}/"
    old = match.group(2)
    return f"comfy/{OLD_COMFY[old]}/{RENAMED.get(old, old)}.py"


def rewrite_text(text: str) -> str:
    """Dotted names and paths in prose, strings and comments."""
    return PATHS.sub(rewrite_path, DOTTED.sub(rewrite_dotted, text))


def rewrite_from(match: re.Match) -> str:
    head, module, mid, names = match.groups()
    if module == "comfy":  # from comfy import submit, store
        listed = [n.strip() for n in names.strip("() \n").split(",") if n.strip()]
        folders = {OLD_COMFY.get(n.split()[0]) for n in listed}
        if len(folders) == 1 and None not in folders:
            folder = folders.pop()
            renamed = [f"{RENAMED[n]} as {n}" if n in RENAMED else n for n in listed]
            return f"{head}comfy.{folder}{mid}{', '.join(renamed)}"
        return match.group(0)
    return f"{head}{new_module(module)}{mid}{names}"


LAUNCHER_NAMES = r"(?<![\w.])cylindria\.(main|run|exit_now|logger|_interrupt)\b"


def rewrite_launcher_use(text: str) -> str:
    """`import cylindria` then `cylindria.main(...)`: the launcher's code is cylindria/cli.py."""
    if not re.search(r"^import cylindria\s*$", text, re.M) or not re.search(LAUNCHER_NAMES, text):
        return text
    text = re.sub(r"^import cylindria\s*$", "import cylindria.cli", text, flags=re.M)
    return re.sub(LAUNCHER_NAMES, r"cylindria.cli.\1", text)


def rewrite_python(text: str) -> str:
    """Imports, then strings and comments (by token), then names bound by `import a.b`."""
    text = rewrite_launcher_use(text)
    text = IMPORT_FROM.sub(rewrite_from, text)
    text = re.sub(r"^from cylindria import (main|run|exit_now)\b", r"from cylindria.cli import \1",
                  text, flags=re.M)
    bound: dict[str, str] = {}  # module bound by `import a.b` -> the name it is used by now

    def plain_import(match: re.Match) -> str:
        old = match.group(2)
        new, parts = new_module(old), old.split(".")
        if new != old and not match.group(3):
            if parts[0] in TOP and len(parts) == 2:
                # `import web.routes` -> `from cylindria.web import routes as web_routes`: a
                # bare `cylindria.` prefix would be shadowed by anything named cylindria
                alias = "_".join(parts)
                bound[old] = alias
                return f"{match.group(1).replace('import', 'from', 1)}cylindria.{parts[0]} " \
                       f"import {parts[1]} as {alias}"
            bound[old] = new
        return f"{match.group(1)}{new}{match.group(3)}"

    text = IMPORT.sub(plain_import, text)
    text = rewrite_tokens(text)
    for old in sorted(bound, key=len, reverse=True):  # `import web.streams` then `web.streams.X`
        text = re.sub(rf"(?<![\w.]){re.escape(old)}(?![\w])", bound[old], text)
    return text


def rewrite_tokens(text: str) -> str:
    """rewrite_text on each string literal and comment of Python source."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    spans = []
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type in (tokenize.STRING, tokenize.COMMENT):
                start = offsets[token.start[0] - 1] + token.start[1]
                end = offsets[token.end[0] - 1] + token.end[1]
                spans.append((start, end))
    except (tokenize.TokenError, SyntaxError):
        return rewrite_text(text)
    out, last = [], 0
    for start, end in spans:
        out += [text[last:start], rewrite_text(text[start:end])]
        last = end
    return "".join(out + [text[last:]])


def rewrite_setup(text: str) -> str:
    """setup.py: the package list and the console script of the new layout."""
    text = re.sub(r'\n    py_modules=\["cylindria"\],', "", text)
    text = re.sub(r"packages=find_packages\(include=\[[^\]]*\]\)",
                  'packages=find_packages(include=["cylindria", "cylindria.*", "comfy", '
                  '"comfy.*", "tester", "tester.*"])', text)
    return text.replace('"cylindria=cylindria:main"', '"cylindria=cylindria.cli:main"')


def rewrite_all() -> list[str]:
    changed = []
    for name in git("ls-files", "-z").split("\0"):
        path = ROOT / name
        if not name or not path.is_file() or path.resolve() == SELF:
            continue
        if path.suffix not in TEXT_SUFFIXES and not name.startswith(".ci/"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        new = rewrite_python(text) if path.suffix == ".py" else rewrite_text(text)
        if name == "setup.py":
            new = rewrite_setup(new)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(name)
    return changed


def main(argv: list[str]) -> int:
    if not (ROOT / "comfy").is_dir() or not (ROOT / "setup.py").is_file():
        print("relayout: run it from the top of a Cylindria checkout", file=sys.stderr)
        return 2
    if "--check" in argv:
        pending = [p for p in TOP if (ROOT / p).is_dir()]
        pending += [f"comfy/{m}.py" for m in OLD_COMFY if (ROOT / "comfy" / f"{m}.py").exists()]
        if pending:
            print("to move:", ", ".join(pending))
        return 1 if pending else 0
    moved = move_files()
    changed = rewrite_all()
    git("add", "-A", "--", *[p for p in ("cylindria", "comfy") if (ROOT / p).exists()])
    for line in moved:
        print("moved", line)
    print(f"rewrote {len(changed)} files" + (": " + ", ".join(changed) if changed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

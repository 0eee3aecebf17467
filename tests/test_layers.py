"""The layering, read from every module's imports (ast): each layer imports only its own and
the layers below it, so the core never depends on the HTTP surface.

    cylindria (cli, __main__)  >  cylindria.service  >  cylindria.web
        >  cylindria.config, cylindria.webhooks, cylindria.fleet  >  comfy, cylindria.storage

comfy and cylindria.storage are one layer (the store's rows are comfy's records; comfy's
stores write through storage's interface). tester/ is a client over HTTP: it imports neither.
Nothing outside cylindria/storage/ runs SQL.
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [("cylindria.cli", "cylindria.__main__"), ("cylindria.service",), ("cylindria.web",),
          ("cylindria.config", "cylindria.webhooks", "cylindria.fleet"),
          ("comfy", "cylindria.storage")]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> list[Path]:
    return sorted(p for top in ("cylindria", "comfy", "tester") for p in (ROOT / top).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """The modules `path` imports at run time (anywhere in it, functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def layer(name: str) -> int | None:
    """The layer's index (0 the top), or None for a module of no layer (tester, libraries)."""
    for index, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return index
    return None


@pytest.mark.parametrize("path", modules(), ids=module_name)
def test_a_module_imports_only_its_layer_and_below(path):
    own = layer(module_name(path))
    ours = {n for n in imported(path) if n.split(".")[0] in ("cylindria", "comfy", "tester")}
    if own is None:  # tester: a client of the HTTP API only
        assert not {n for n in ours if not n.startswith("tester")}, ours
        return
    upward = sorted(n for n in ours if layer(n) is not None and layer(n) < own)
    assert not upward, f"{module_name(path)} imports a layer above its own: {upward}"


def test_the_core_is_built_without_the_web_layer():
    core = imported(ROOT / "cylindria" / "service" / "core.py")
    assert not [n for n in core if n == "cylindria.web" or n.startswith("cylindria.web.")]


def test_no_sql_outside_storage():
    """`.execute(` / `.executemany(` (a DB-API cursor or connection) only in cylindria/storage/."""
    found = []
    for path in modules():
        if path.is_relative_to(ROOT / "cylindria" / "storage"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("execute", "executemany",
                                                                 "executescript", "cursor"):
                found.append(f"{module_name(path)}:{node.lineno}")
    assert not found


def test_installed_names_are_cylindria_comfy_and_tester_only():
    tops = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    shipped = tops - {"tests", "bench", "tools"}
    assert shipped == {"cylindria", "comfy", "tester"}

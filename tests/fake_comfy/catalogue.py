"""What one fake instance has installed: node classes, checkpoint files, and its folders.

    Catalogue(custom_nodes=("CylCustomInvert",), without_nodes=("CylSleepProgress",),
              checkpoints=("sd15.safetensors",), load_seconds=1.0, files=FileStore())

Real GPUs of one gateway differ: a custom node pack installed on some only, other model
files, other input files. Each FakeComfy owns one Catalogue (never a module global), and its
/object_info, /object_info/{class}, POST /prompt validation and executor all read that one;
LoadImage's choices, checks and reads go to the Catalogue's FileStore (the instance's).
"""

from __future__ import annotations

from typing import Iterable

from .files import FileStore
from .nodes import LIBRARY, NodeDef

DEFAULT_CHECKPOINTS = ("sd15.safetensors", "sdxl.safetensors")


def _known(names: Iterable[str], what: str) -> tuple[str, ...]:
    """The names as a tuple; a class the fake does not know is a test's typo, said at once."""
    names = tuple(names)
    unknown = [name for name in names if name not in LIBRARY]
    if unknown:
        raise ValueError(f"{what}: unknown node classes {unknown}; known: {sorted(LIBRARY)}")
    return names


class Catalogue:
    """The node classes one instance serves (the defaults, plus custom_nodes, minus
    without_nodes), its checkpoint files, what loading one of them costs, and its folders
    (a FileStore of its own unless given one)."""

    def __init__(self, custom_nodes: Iterable[str] = (), without_nodes: Iterable[str] = (),
                 checkpoints: Iterable[str] = DEFAULT_CHECKPOINTS,
                 load_seconds: float = 0.0, files: FileStore | None = None) -> None:
        self.custom_nodes = _known(custom_nodes, "custom_nodes")
        self.without_nodes = _known(without_nodes, "without_nodes")
        self.checkpoints = tuple(str(name) for name in checkpoints)
        self.load_seconds = float(load_seconds)
        if self.load_seconds < 0:
            raise ValueError(f"load_seconds must not be negative, not {self.load_seconds}")
        self.files = files if files is not None else FileStore()
        self.nodes: dict[str, NodeDef] = {
            name: self._adopt(definition) for name, definition in LIBRARY.items()
            if self._serves(definition)}

    def _serves(self, definition: NodeDef) -> bool:
        """Whether this instance has the class installed."""
        installed = definition.default or definition.name in self.custom_nodes
        return installed and definition.name not in self.without_nodes

    def _adopt(self, definition: NodeDef) -> NodeDef:
        """The class with this instance's own values filled in (e.g. its checkpoints)."""
        return definition.adapt(definition, self) if definition.adapt else definition

    def object_info(self) -> dict:
        """GET /object_info: every served class's info."""
        return {name: definition.info() for name, definition in self.nodes.items()}

    def object_info_node(self, name: str) -> dict:
        """GET /object_info/{class}: {} for a class this instance does not serve."""
        return {name: self.nodes[name].info()} if name in self.nodes else {}

"""The tester's remembered fields (URL, port, GpuId, priority) in a small JSON file.

The API key is deliberately not part of ``Settings``: it is never written to disk.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import platformdirs

logger = logging.getLogger(__name__)

CONFIG_DIR_ENV = "CYLINDRIA_TESTER_CONFIG_DIR"
FILE_NAME = "tester.json"


@dataclass
class Settings:
    """What the tester remembers between runs."""

    url: str = "http://127.0.0.1"
    port: str = "8000"
    gpu_id: str = "0"
    priority: str = ""  # empty: not sent, the server's default applies


def config_dir() -> Path:
    """Return the settings directory: ``$CYLINDRIA_TESTER_CONFIG_DIR`` or the user's config dir."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir("Cylindria", appauthor=False))


def settings_path() -> Path:
    """Return the path of the settings file."""
    return config_dir() / FILE_NAME


def load(path: Path | None = None) -> Settings:
    """Read the settings; a missing or unreadable file gives the defaults."""
    path = path or settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable settings file %s: %s", path, exc)
        return Settings()
    if not isinstance(data, dict):
        return Settings()
    known = {f.name for f in fields(Settings)}
    values = {k: str(v) for k, v in data.items() if k in known and isinstance(v, (str, int))}
    return Settings(**values)


def save(settings: Settings, path: Path | None = None) -> Path:
    """Write the settings atomically (temp file + replace) and return the file's path."""
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(asdict(settings), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path

"""Cylindria as a systemd service on Linux: the unit file, and systemctl for the rest."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

UNIT_PATH = Path("/etc/systemd/system/cylindria.service")
STATE_DIRECTORY = "cylindria"  # systemd makes /var/lib/cylindria, owned by User=
DEFAULT_DATA_DIR = Path("/var/lib") / STATE_DIRECTORY
_SPECIAL = frozenset(' \t\n"\'\\;')


def quote(arg) -> str:
    """One ExecStart word, escaped for systemd: % specifiers, $ variables, quotes, spaces."""
    text = str(arg).replace("%", "%%").replace("$", "$$")
    if text and not _SPECIAL.intersection(text):
        return text
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"'


def render_unit(command: list[str], data_dir: Path, user: str | None = None) -> str:
    """The unit: run `command` at boot, restart it when it fails, as `user` when given."""
    owner = [f"User={user}"] if user else []
    # The default data dir is systemd's StateDirectory: created, and handed to User=, by systemd.
    state = [f"StateDirectory={STATE_DIRECTORY}", "StateDirectoryMode=0700"] \
        if Path(data_dir) == DEFAULT_DATA_DIR else []
    return "\n".join([
        "[Unit]",
        "Description=Cylindria: authenticated REST API in front of ComfyUI",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        "ExecStart=" + " ".join(quote(arg) for arg in command),
        *owner,
        *state,
        # "-": a missing dir is not fatal; Cylindria creates its data dir itself.
        "WorkingDirectory=-" + str(data_dir).replace("%", "%%"),
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=15",
        "NoNewPrivileges=true",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def systemctl(*args: str) -> int:
    """Run systemctl with `args`; a clear error where there is none (not a systemd host)."""
    exe = shutil.which("systemctl")
    if exe is None:
        print("cylindria: error: systemctl not found: this command needs a Linux host run by "
              "systemd (`service install --print` shows the unit to install by hand)",
              file=sys.stderr)
        return 1
    return subprocess.run([exe, *args], check=False).returncode


def install(unit: str, unit_path: Path = UNIT_PATH, run=systemctl) -> int:
    """Write the unit, then have systemd load it and start it at every boot."""
    unit_path = Path(unit_path)
    unit_path.parent.mkdir(parents=True, exist_ok=True)
    unit_path.write_text(unit, encoding="utf-8")
    unit_path.chmod(0o644)
    print(f"wrote {unit_path}")
    return run("daemon-reload") or run("enable", unit_path.name)


def remove(unit_path: Path = UNIT_PATH, run=systemctl) -> int:
    """Stop and disable the service, delete its unit; the data dir (jobs, key) stays."""
    unit_path = Path(unit_path)
    if not unit_path.exists():
        print(f"cylindria: error: {unit_path} does not exist: nothing to remove", file=sys.stderr)
        return 1
    code = run("disable", "--now", unit_path.name)
    unit_path.unlink()
    print(f"removed {unit_path}")
    return run("daemon-reload") or code


def control(action: str, unit_path: Path = UNIT_PATH, run=systemctl) -> int:
    """start, stop or status of the installed service, through systemctl."""
    extra = ("--no-pager",) if action == "status" else ()
    return run(action, *extra, Path(unit_path).name)

"""The run of tools/readme_samples.py (its docstring says what the run is): a copy of the
checkout in a temporary folder with a home, an environment, free ports and a .venv of its
own, where marked blocks run, in the foreground or in the background, in process groups
this module starts and stops."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlsplit
from urllib.request import ProxyHandler, build_opener

from tests.helpers import free_ports
from tools.readme_markdown import Step

REPO = Path(__file__).resolve().parents[1]
PORT_GROUP = 8  # ports a group may span: GPU n of a ComfyUI base port p is p + n
CYLINDRIA_PORT = 8000  # Cylindria's default --port: CYLINDRIA_PORT moves it when no flag does
COMFY_PORT = 8188  # GPU 0's ComfyUI by default: COMFYUI_BASE_URL moves it (the fake: --port)
HOST_PORT = re.compile(r"(?<=127\.0\.0\.1:)\d{2,5}\b|(?<=localhost:)\d{2,5}\b")
PORT_FLAG = re.compile(r"(?<=--port[ =])\d{2,5}\b")
LOOPBACK = ("127.0.0.1", "localhost")
STEP_TIMEOUT = 120  # seconds a block may run; installs for real get INSTALL_TIMEOUT
READY_TIMEOUT = 120  # a background block may install first (seconds; more on a busy machine)
INSTALL_TIMEOUT = 1800
STOP_TIMEOUT = 15
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
STATE_PRELUDE = r"""
__readme_save() {
    local rc=$? name
    {
        for name in $(compgen -v); do
            case $name in
                BASH*|EUID|PPID|UID|SHELLOPTS|PIPESTATUS|FUNCNAME|GROUPS|RANDOM|SRANDOM|\
SECONDS|LINENO|HISTCMD|EPOCHREALTIME|EPOCHSECONDS|_|PWD|OLDPWD|SHLVL|DIRSTACK|OPTIND|\
OPTERR|COLUMNS|LINES|__readme_*|rc|name) continue ;;
            esac
            [[ ${!name@a} == *r* ]] && continue
            declare -p "$name"
        done
        printf 'cd %q\n' "$PWD"
    } > "$__readme_state"
    exit $rc
}
source "$__readme_state"
trap __readme_save EXIT
"""
PYTHON3_SHIM = """#!/bin/sh
# tools/readme_samples.py: the .venv was made from the tests' environment; leave it.
if [ "$#" -eq 3 ] && [ "$1" = "-m" ] && [ "$2" = "venv" ] && [ "$3" = ".venv" ] \\
        && [ -f .venv/pyvenv.cfg ]; then
    exit 0
fi
exec "{python}" "$@"
"""


class RunFailed(Exception):
    """A block failed, or a background one never got ready: the run cannot go on."""


@dataclass
class Ports:
    """The README's ports and the free ones they stand for here."""

    mapping: dict[int, int]

    @classmethod
    def for_steps(cls, found: list[Step]) -> "Ports":
        """A free port for each port the blocks name (and the programs' defaults), but for
        a server not told its port (kept as the README has it)."""
        named = {CYLINDRIA_PORT, COMFY_PORT}
        for step in found:
            named |= {int(p) for p in _ports_in(step.block.text + " " + (step.ready or ""))}
        kept = _untold(found)
        mapping: dict[int, int] = {}
        for start in sorted(named - kept):
            if start in mapping:
                continue
            base = free_ports(PORT_GROUP)
            mapping.update({start + n: base + n for n in range(PORT_GROUP)
                            if start + n not in kept})
        return cls(mapping)

    def of(self, port: int) -> int:
        """This run's port for one of the README's."""
        return self.mapping.get(port, port)

    def here(self, text: str) -> str:
        """The README's ports in `text` replaced by this run's."""
        swap = lambda m: str(self.mapping.get(int(m[0]), m[0]))  # noqa: E731
        return PORT_FLAG.sub(swap, HOST_PORT.sub(swap, text))

    def as_shown(self, text: str) -> str:
        """This run's ports in an output named as the README names them."""
        back = {str(v): str(k) for k, v in self.mapping.items()}
        return HOST_PORT.sub(lambda m: back.get(m[0], m[0]), text)


def _ports_in(text: str) -> list[str]:
    return HOST_PORT.findall(text) + PORT_FLAG.findall(text)


def _untold(found: list[Step]) -> set[int]:
    """Ports of ready URLs whose block names no port near them: the server listens on its own
    default (the README's examples/webhook_receiver.py on 9000), which the run cannot move."""
    kept = set()
    for step in found:
        if step.ready is None:
            continue
        port = urlsplit(step.ready).port or 80
        told = [int(p) for p in _ports_in(step.block.text)]
        if port != CYLINDRIA_PORT and not any(0 <= port - p < PORT_GROUP for p in told):
            kept.add(port)
    return kept


class Sandbox:
    """The temporary copy of the checkout, its home, its environment and its processes."""

    def __init__(self, root: Path, ports: Ports, real_install: bool):
        self.root = root
        self.clone = root / "cylindria"
        self.home = root / "home"
        self.ports = ports
        self.real_install = real_install
        self.state = root / "shell-state"
        self.background: list[tuple[Step, subprocess.Popen, Path]] = []

    def prepare(self, source: Path) -> None:
        """Copy the checkout, make the home (and the .venv and python3 unless installing)."""
        copy_checkout(source, self.clone)
        for sub in (".local/share", ".config", ".cache", ".local/state"):
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        self.state.write_text("")
        if not self.real_install:
            make_venv(self.clone / ".venv")
            shims = self.root / "bin"
            shims.mkdir()
            shim = shims / "python3"
            shim.write_text(PYTHON3_SHIM.format(python=sys.executable))
            shim.chmod(0o755)

    def env(self) -> dict[str, str]:
        """The blocks' environment: nothing inherited but PATH."""
        path = os.environ.get("PATH", "/usr/bin:/bin")
        env = {"PATH": path if self.real_install else f"{self.root / 'bin'}:{path}",
               "HOME": str(self.home), "LC_ALL": "C.UTF-8", "TERM": "dumb",
               "TMPDIR": str(self.root), "XDG_DATA_HOME": str(self.home / ".local/share"),
               "XDG_CONFIG_HOME": str(self.home / ".config"),
               "XDG_CACHE_HOME": str(self.home / ".cache"),
               "XDG_STATE_HOME": str(self.home / ".local/state"),
               "CYLINDRIA_PORT": str(self.ports.of(CYLINDRIA_PORT)),
               "COMFYUI_BASE_URL": f"http://127.0.0.1:{self.ports.of(COMFY_PORT)}",
               "PIP_DISABLE_PIP_VERSION_CHECK": "1", "__readme_state": str(self.state)}
        if self.real_install:  # the machine's way to the packages (its mirror, proxy, CA)
            env.update({k: v for k, v in os.environ.items()
                        if k.startswith("PIP_") or k.lower() in PROXY_VARIABLES})
            local = ",".join(filter(None, (env.get("no_proxy"), *LOOPBACK)))
            env.update(no_proxy=local, NO_PROXY=local)  # curl to 127.0.0.1 never via a proxy
        else:  # everything is installed already: never an index, nor this machine's pip.conf
            env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
        return env

    def as_shown(self, output: str) -> str:
        """An output as a user's machine would print it: the README's ports, home and clone."""
        output = self.ports.as_shown(output)
        output = output.replace(str(self.clone), "/home/me/cylindria")
        return output.replace(str(self.home), "/home/me")

    def script(self, step: Step, number: int) -> Path:
        """The block as a bash script (the shell state carried from block to block)."""
        path = self.root / f"block-{number:02d}.sh"
        path.write_text(STATE_PRELUDE + self.ports.here(step.block.text) + "\n")
        return path

    def run(self, step: Step, number: int) -> str:
        """Run a block to completion; what it printed on stdout."""
        proc, log = self._spawn(step, number)
        timeout = INSTALL_TIMEOUT if self.real_install else STEP_TIMEOUT
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            raise RunFailed(f"{_where(step)}: still running after {timeout} s:\n"
                            f"{_printed(log)}") from None
        if code != 0:
            raise RunFailed(f"{_where(step)}: exited {code}:\n{step.block.text}\n"
                            f"{_printed(log)}")
        if _group_alive(proc):  # something it started with & outlives it: stopped, refused
            _stop_group(proc)
            raise RunFailed(f"{_where(step)}: left processes running (stopped now); a block "
                            "that starts a server is marked <!-- run: background ready=<url> -->")
        return log.read_text(errors="replace")

    def _spawn(self, step: Step, number: int) -> tuple[subprocess.Popen, Path]:
        """Start a block's bash in a process group of its own; stdout to block-NN.out (what
        is compared), stderr to block-NN.err."""
        log = self.root / f"block-{number:02d}.out"
        with open(log, "wb") as out, open(log.with_suffix(".err"), "wb") as err:
            proc = subprocess.Popen(_bash(self.script(step, number)), cwd=self.clone,
                                    env=self.env(), stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        return proc, log

    def start(self, step: Step, number: int) -> None:
        """Start a background block and wait until its ready URL answers."""
        url = self.ports.here(step.ready)
        if _listening(url):
            raise RunFailed(f"{_where(step)}: {url} (the README's {step.ready}) takes "
                            "connections before the block started: another program has the port")
        proc, log = self._spawn(step, number)
        self.background.append((step, proc, log))
        limit = INSTALL_TIMEOUT if self.real_install else READY_TIMEOUT
        deadline = time.monotonic() + limit
        while not _answers(url):
            if proc.poll() is not None:
                raise RunFailed(f"{_where(step)}: exited {proc.returncode} before {url} "
                                f"answered:\n{_printed(log)}")
            if time.monotonic() > deadline:
                raise RunFailed(f"{_where(step)}: {url} (the README's {step.ready}) did not "
                                f"answer within {limit} s:\n{_printed(log)}")
            time.sleep(0.1)

    def stop_all(self) -> dict[int, str]:
        """Stop the background blocks, newest first; what each printed (by its marker line)."""
        printed = {}
        for step, proc, log in reversed(self.background):
            _stop_group(proc)
            printed[step.line] = log.read_text(errors="replace")
        self.background.clear()
        return printed


def _bash(script: Path) -> list[str]:
    return ["bash", "--noprofile", "--norc", "-e", "-o", "pipefail", str(script)]


def _where(step: Step) -> str:
    return f"line {step.line}"


def _printed(log: Path, chars: int = 3000) -> str:
    """The end of what a block printed on stdout and on stderr, for a failure's message."""
    return "".join(f"---- its {name} ----\n{path.read_text(errors='replace')[-chars:]}"
                   for name, path in (("stdout", log), ("stderr", log.with_suffix(".err"))))


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at `url` (any status), asked directly (no proxy)."""
    try:
        with build_opener(ProxyHandler({})).open(url, timeout=1):
            return True
    except HTTPError:
        return True
    except (OSError, ValueError):
        return False


def _listening(url: str) -> bool:
    """Whether anything accepts TCP connections at the URL's host and port."""
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port or 80), timeout=1).close()
    except OSError:
        return False
    return True


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group this harness started (by its leader's PID), SIGKILL if
    it has not ended in STOP_TIMEOUT seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline and _group_alive(proc):
            time.sleep(0.05)
        if not _group_alive(proc):
            break
    proc.wait(STOP_TIMEOUT)


def _group_alive(proc: subprocess.Popen) -> bool:
    proc.poll()  # reap the leader, so it does not count as alive
    try:
        os.killpg(proc.pid, 0)
    except ProcessLookupError:
        return False
    return _runs_in(proc.pid)


def _runs_in(group: int) -> bool:
    """Whether a process of this group is more than a zombie. A block's program outlives its
    bash when both get SIGTERM: it is reparented to PID 1, and once it has exited it stays in
    the group (killpg still finds it) until PID 1 reaps it, which on some hosts takes a second
    or two. Without Linux's /proc every process found counts."""
    proc_dir = Path("/proc")
    if not proc_dir.is_dir():
        return True
    for stat in proc_dir.glob("[0-9]*/stat"):
        try:  # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
            state, _, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except (OSError, ValueError):
            continue  # ended meanwhile
        if int(pgrp) == group and state != "Z":
            return True
    return False


def copy_checkout(source: Path, target: Path) -> None:
    """The files git tracks (and the new ones it does not ignore), as in the working tree."""
    listed = subprocess.run(["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], capture_output=True, check=True).stdout
    for name in sorted(set(listed.decode().split("\0")) - {""}):
        origin, copy = source / name, target / name
        if not origin.exists() and not origin.is_symlink():  # deleted, not yet committed
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(origin, copy, follow_symlinks=False)


def make_venv(path: Path) -> None:
    """A virtualenv of this Python that sees this environment's packages, with a pip."""
    venv.EnvBuilder(symlinks=os.name != "nt", with_pip=False).create(path)
    purelib = sysconfig.get_path("purelib", vars={"base": str(path), "platbase": str(path)})
    own = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    Path(purelib, "_readme_samples.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(own)))
    pip = path / "bin" / "pip"
    pip.write_text(f"#!{path / 'bin' / 'python'}\nimport sys\n"
                   "from pip._internal.cli.main import main\nsys.exit(main())\n")
    pip.chmod(0o755)


@contextmanager
def sandbox(found: list[Step], real_install: bool, keep: bool = False):
    """A prepared Sandbox in a temporary folder, removed at the end unless `keep`."""
    root = Path(tempfile.mkdtemp(prefix="cylindria-readme-"))
    box = Sandbox(root, Ports.for_steps(found), real_install)
    try:
        box.prepare(REPO)
        yield box
    finally:
        box.stop_all()
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)



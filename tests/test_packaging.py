"""`pip install .` from a clean copy of the checkout gives working `cylindria` commands."""
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
BIN = "Scripts" if sys.platform == "win32" else "bin"


def clean_copy(target: Path) -> Path:
    """The files git would check out (tracked, plus new ones not ignored): no build leftovers."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True, timeout=60)
    for name in filter(None, listing.stdout.split("\0")):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    return target


def see_running_site_packages(python: Path) -> None:
    """Make a new venv import what this Python imports, after its own packages.

    `venv --system-site-packages` run from a venv gives the *base* interpreter's site-packages,
    not the running venv's, so the dependencies would be missing: a .pth file in the new venv's
    site-packages names this interpreter's library dirs instead."""
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    found = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True,
                           timeout=60)
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(found.stdout.strip()) / "running-python.pth").write_text("\n".join(ours) + "\n")


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh venv with the checkout pip-installed; dependencies come from this Python's
    site-packages (see_running_site_packages, --no-deps) so that only the build runs."""
    base = tmp_path_factory.mktemp("packaging")
    source = clean_copy(base / "src")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(base / "venv")],
                   check=True, timeout=300)
    python = base / "venv" / BIN / "python"
    see_running_site_packages(python)
    # PyPI's `config` first: a top-level name Cylindria once installed too (issue 26); the
    # commands below must run beside it, and it must stay PyPI's.
    subprocess.run([str(python), "-m", "pip", "install", "-q", "config"], check=True, timeout=300,
                   cwd=base)
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", str(source)],
                   check=True, timeout=600, cwd=base)
    shutil.rmtree(source)  # the installed commands must not need the source tree
    return base / "venv"


def run(venv: Path, *command: str) -> subprocess.CompletedProcess:
    """A command from the venv's bin dir, away from the checkout (so nothing imports from it)."""
    return subprocess.run([str(venv / BIN / command[0]), *command[1:]], cwd=venv.parent,
                          capture_output=True, text=True, timeout=120)


def test_cylindria_command_runs_from_the_venv(venv):
    result = run(venv, "cylindria", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: cylindria")
    assert "--numberOfGpus" in result.stdout and "--log-file" in result.stdout


def test_cylindria_tester_command_runs_from_the_venv(venv):
    result = run(venv, "cylindria-tester", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: cylindria-tester")


def test_installed_code_is_the_venvs_own(venv):
    result = run(venv, "python", "-c", "import cylindria, cylindria.service.server, comfy.jobs.store, tester.app; "
                 "print(cylindria.__file__)")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(venv)


def test_installed_service_runs_the_installed_entry_point(venv, tmp_path):
    result = run(venv, "cylindria", "service", "install", "--print", "--no-auth",
                 "--data-dir", str(tmp_path))
    exec_start = next(line for line in result.stdout.splitlines() if line.startswith("ExecStart="))
    python, *module = exec_start.removeprefix("ExecStart=").split()[:3]
    assert Path(python).is_relative_to(venv) and module == ["-m", "cylindria"]


def test_installed_beside_pypis_config_both_import(venv):
    result = run(venv, "python", "-c", "import config, cylindria.config.options; "
                 "print(config.__file__); print(cylindria.config.options.__file__)")
    assert result.returncode == 0, result.stderr
    theirs, ours = result.stdout.split()
    assert Path(theirs).parent.name == "config" and Path(ours).parts[-3:-1] == ("cylindria", "config")


def test_site_packages_gets_only_cylindria_comfy_and_tester(venv):
    code = ("import importlib.metadata as m; print('\\n'.join(sorted({f.parts[0] for f in "
            "m.files('cylindria') if f.suffix == '.py' and f.parts[0] != '..'})))")
    result = run(venv, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["comfy", "cylindria", "tester"]


def test_python_dash_m_cylindria_runs_from_the_checkout():
    result = subprocess.run([sys.executable, "-m", "cylindria", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: cylindria")


def test_pywin32_is_required_on_windows_only(venv):
    result = run(venv, "python", "-c", "import importlib.metadata as m; "
                 "print('\\n'.join(m.requires('cylindria')))")
    pywin32 = [line for line in result.stdout.splitlines() if line.startswith("pywin32")]
    assert pywin32 and 'sys_platform == "win32"' in pywin32[0]


def test_the_checkout_runs_without_installing():
    result = subprocess.run([sys.executable, "cylindria.py", "--help"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("usage: cylindria")


def requirements_in(path: Path) -> list[Requirement]:
    """The requirements a pip requirements file names, following its `-r` includes."""
    found = []
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r"):
            found += requirements_in(path.parent / line[2:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def test_the_lock_pins_every_requirement_within_its_range():
    """constraints.txt was refreshed after the last change of a range (README: Pinned versions)."""
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    pins = {canonicalize_name(name): version.strip() for name, version in pins.items()}
    wanted = requirements_in(ROOT / "requirements-test.txt") + requirements_in(
        ROOT / "bench" / "requirements.txt")
    for requirement in wanted:
        pin = pins.get(canonicalize_name(requirement.name))
        if requirement.marker is None:  # platform-only ones (pywin32) may go unpinned
            assert pin, f"{requirement.name} is not in constraints.txt"
        assert pin is None or requirement.specifier.contains(pin, prereleases=True), \
            f"constraints.txt pins {requirement.name}=={pin}, outside {requirement}"

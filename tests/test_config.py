"""The settings table: flags over env over defaults, and one clear line for a bad value."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cylindria.config.options import ConfigError, default_data_dir, load_config
from cylindria.service import cli
from cylindria.web.auth import KEY_FILE_NAME

ROOT = Path(__file__).resolve().parents[1]


def test_defaults(tmp_path):
    config = load_config([], {"CYLINDRIA_DATA_DIR": str(tmp_path)})
    assert (config.port, config.host, config.gpus) == (8000, "0.0.0.0", 1)
    assert config.comfy_base_url == "http://127.0.0.1:8188"
    assert (config.poll_interval, config.threads, config.dev) == (5.0, 16, False)
    assert config.data_dir == tmp_path


def test_flags_win_over_environment():
    env = {"CYLINDRIA_PORT": "9000", "CYLINDRIA_NUM_GPUS": "3", "CYLINDRIA_DEV_MODE": "1",
           "CYLINDRIA_API_KEY": "envkey-12345, other-key-678"}
    config = load_config(["--port", "9100"], env)
    assert (config.port, config.gpus, config.dev) == (9100, 3, True)
    assert config.api_keys == ("envkey-12345", "other-key-678")


@pytest.mark.parametrize("argv", [["--numberOfGpus", "0"], ["--numberOfGpus", "9"],
                                  ["--numberOfGpus", "two"], ["--port", "70000"],
                                  ["--comfy-base-url", "localhost:8188"], ["--threads", "0"],
                                  ["--poll-interval", "-1"], ["--log-level", "LOUD"],
                                  ["--api-key", "short"]])
def test_bad_values_raise_one_clear_line(argv):
    with pytest.raises(ConfigError) as info:
        load_config(argv, {})
    assert argv[0] in str(info.value) and "\n" not in str(info.value)


def test_a_bad_key_is_never_echoed():
    with pytest.raises(ConfigError) as info:
        load_config(["--api-key", "sekrit"], {})
    assert "sekrit" not in str(info.value)


def test_command_line_exits_2_without_traceback():
    result = subprocess.run([sys.executable, "cylindria.py", "--numberOfGpus", "9"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "cylindria: error: --numberOfGpus: invalid value '9': must be an integer from 1 to 8"]


def run_help(*args: str) -> subprocess.CompletedProcess:
    """cylindria.py with these arguments, help wide enough that no line wraps."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CYLINDRIA_")}
    return subprocess.run([sys.executable, "cylindria.py", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**env, "COLUMNS": "400"})


def test_help_shows_meaningful_defaults_or_none():
    result = run_help("--help")
    assert result.returncode == 0
    sections = result.stdout.split("\n  --")[1:]  # one per flag, its help may wrap below it
    lines = {"--" + section.split()[0]: " ".join(section.split()) for section in sections}
    assert "default ()" not in result.stdout and "default None" not in result.stdout
    assert lines["--api-key"].endswith("default a generated key kept in the data dir")
    assert lines["--data-dir"].endswith(f"default {default_data_dir()}")
    assert lines["--retention"].endswith("default 30d")
    assert lines["--port"].endswith("default 8000")
    for flag in ("--log-file", "--trusted-proxy"):
        assert "default" not in lines[flag]


def test_service_help_prints_the_actions_and_exits_0():
    result = run_help("service", "--help")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("usage: cylindria service {install,remove,start,stop,status}")
    assert "  status   Show whether the service runs." in result.stdout
    bare = run_help("service")
    assert bare.returncode == 2 and bare.stderr.startswith("usage: cylindria service")


@pytest.mark.parametrize("given, says", [
    ("env", "put the key(s) from CYLINDRIA_API_KEY there"),
    ("flag", "put the key(s) from --api-key there"),
    ("file", "reads its key from {key_file}, which holds one already"),
    ("none", "generates a key in {key_file} and prints it once")])
def test_service_print_says_where_the_key_goes(tmp_path, monkeypatch, capsys, given, says):
    for name in [name for name in os.environ if name.startswith("CYLINDRIA_")]:
        monkeypatch.delenv(name)
    data = tmp_path / "data"
    argv = ["install", "--print", "--data-dir", str(data)]
    if given == "env":
        monkeypatch.setenv("CYLINDRIA_API_KEY", "from-the-environment-1")
    elif given == "flag":
        argv += ["--api-key", "from-the-flag-12345"]
    elif given == "file":
        data.mkdir()
        (data / KEY_FILE_NAME).write_text("from-the-file-12345\n")
    assert cli.main(argv, windows=False) == 0
    err = capsys.readouterr().err
    assert says.format(key_file=data / KEY_FILE_NAME) in err
    assert "put the --api-key there" not in err and "from-the-" not in err

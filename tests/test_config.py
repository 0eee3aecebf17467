"""The settings table: flags over env over defaults, and one clear line for a bad value."""
import subprocess
import sys
from pathlib import Path

import pytest

from web.config import ConfigError, load_config

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

"""`cylindria service ...` on Linux: the systemd unit, the install step's files, systemctl."""
import getpass
import os
import re
import shlex
import stat
import sys
from pathlib import Path

import pytest

from cylindria.config.options import ConfigError, load_config
from cylindria.service import cli, systemd
from cylindria.service.server import announce_webhook_secret
from tests.helpers import API_KEY
from cylindria.web.auth import KEY_FILE_NAME, resolve_keys
from cylindria.webhooks.secret import SECRET_FILE_NAME, load_secret

ROOT = Path(__file__).resolve().parents[1]


class FakeSystemctl:
    """Records what would have been asked of systemctl (no systemd runs here)."""

    def __init__(self, code: int = 0):
        self.calls = []
        self.code = code

    def __call__(self, *args):
        self.calls.append(args)
        return self.code


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch):
    for name in [n for n in os.environ if n.startswith(("CYLINDRIA_", "COMFYUI_"))]:
        monkeypatch.delenv(name)


def service(argv, systemctl=None):
    """Run `cylindria service ...` as on Linux."""
    return cli.main(argv, windows=False, systemctl=systemctl or FakeSystemctl())


def unit_lines(text: str) -> dict:
    """key=value lines of a unit (one value per key is enough here)."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def exec_start(text: str) -> list[str]:
    return shlex.split(unit_lines(text)["ExecStart"])


def test_printed_unit_runs_the_same_flags_restarts_and_has_a_user(tmp_path, capsys):
    data = tmp_path / "data"
    assert service(["install", "--print", "--user", "comfy", "--port", "8001", "--numberOfGpus",
                    "2", "--api-key", API_KEY, "--data-dir", str(data), "--dev"]) == 0
    unit = capsys.readouterr().out
    fields = unit_lines(unit)
    command = exec_start(unit)
    assert command[:2] == [sys.executable, str(ROOT / "cylindria.py")]
    config = load_config(command[2:], {})
    assert (config.port, config.gpus, config.data_dir, config.dev) == (8001, 2, data, True)
    assert config.dev_save_dir == data / "workflows_dev"  # where the service may write
    assert (fields["Restart"], fields["User"], fields["WantedBy"]) == (
        "on-failure", "comfy", "multi-user.target")
    assert API_KEY not in unit and "--api-key" not in unit and "CYLINDRIA_API_KEY" not in unit
    assert not data.exists()  # --print writes nothing


def test_default_data_dir_is_systemds_state_directory(capsys):
    assert service(["install", "--print"]) == 0
    unit = capsys.readouterr().out
    assert load_config(exec_start(unit)[2:], {}).data_dir == Path("/var/lib/cylindria")
    assert unit_lines(unit)["StateDirectory"] == "cylindria"
    assert "User" not in unit_lines(unit)


def test_install_writes_the_unit_and_the_key_file_and_enables_it(tmp_path, capsys):
    unit_path, data = tmp_path / "units" / "cylindria.service", tmp_path / "data"
    user = getpass.getuser()
    systemctl = FakeSystemctl()
    assert service(["install", "--unit-path", str(unit_path), "--user", user, "--port", "8002",
                    "--api-key", API_KEY, "--data-dir", str(data)], systemctl) == 0
    unit = unit_path.read_text()
    assert API_KEY not in unit and unit_lines(unit)["User"] == user
    assert systemctl.calls == [("daemon-reload",), ("enable", "cylindria.service")]
    key_file = data / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.stat().st_uid == os.getuid()  # chowned to --user (here: ourselves)
    # What the service will do at its start: no key flag, so the key file's key is the key.
    configured = load_config(exec_start(unit)[2:], {}).api_keys
    assert resolve_keys(configured, False, data).keys == (API_KEY,)
    assert API_KEY not in capsys.readouterr().out


def test_key_from_the_environment_goes_to_the_key_file_not_the_unit(tmp_path, monkeypatch):
    monkeypatch.setenv("CYLINDRIA_API_KEY", API_KEY)
    monkeypatch.setenv("CYLINDRIA_PORT", "9100")  # other settings become flags
    unit_path, data = tmp_path / "cylindria.service", tmp_path / "data"
    assert service(["install", "--unit-path", str(unit_path), "--data-dir", str(data)]) == 0
    unit = unit_path.read_text()
    assert "CYLINDRIA_API_KEY" not in unit and API_KEY not in unit
    assert load_config(exec_start(unit)[2:], {}).port == 9100
    assert (data / KEY_FILE_NAME).read_text().strip() == API_KEY


def test_install_keeps_several_keys_in_the_key_file(tmp_path):
    data = tmp_path / "d"
    assert service(["install", "--unit-path", str(tmp_path / "c.service"), "--data-dir", str(data),
                    "--api-key", "first-key-123,second-key-456"]) == 0
    assert "first-key-123" not in (tmp_path / "c.service").read_text()
    assert resolve_keys((), False, data).keys == ("first-key-123", "second-key-456")


def test_install_without_a_key_generates_one_once(tmp_path, capsys):
    argv = ["install", "--unit-path", str(tmp_path / "c.service"),
            "--data-dir", str(tmp_path / "d")]
    assert service(argv) == 0
    key = (tmp_path / "d" / KEY_FILE_NAME).read_text().strip()
    assert capsys.readouterr().out.count(key) == 1
    assert service(argv) == 0
    assert key not in capsys.readouterr().out
    assert (tmp_path / "d" / KEY_FILE_NAME).read_text().strip() == key


def started_secret(unit: str, capsys):
    """What the service's first start does with the webhook secret: (the secret, its output)."""
    config = load_config(exec_start(unit)[2:], {})
    secret = load_secret(config.data_dir, config.webhook_secret_file)
    announce_webhook_secret(secret)
    return secret, capsys.readouterr().out


def test_install_generates_the_webhook_secret_and_shows_it_there_not_in_the_journal(tmp_path,
                                                                                      capsys):
    import pwd  # POSIX only, as systemd

    unit_path, data = tmp_path / "c.service", tmp_path / "data"
    user = "nobody" if os.getuid() == 0 else getpass.getuser()  # as root: chowned to another
    argv = ["install", "--unit-path", str(unit_path), "--user", user, "--data-dir", str(data),
            "--api-key", API_KEY]
    assert service(argv) == 0
    path = data / SECRET_FILE_NAME
    secret = path.read_text().strip()
    printed = capsys.readouterr().out
    shown = f"Generated webhook signing secret (shown once; stored in {path}):\n  {secret}\n"
    assert shown in printed
    assert printed.count(secret) == 1 and secret not in unit_path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.stat().st_uid == data.stat().st_uid == pwd.getpwnam(user).pw_uid
    assert [p.name for p in data.iterdir() if p.name.endswith(".unshown")] == []
    started, output = started_secret(unit_path.read_text(), capsys)
    assert started.secret == secret and not started.generated and secret not in output
    assert service(argv) == 0  # install again: the same secret, not shown again
    again = capsys.readouterr().out
    assert secret not in again and f"Webhook signing secret: kept in {path}" in again
    assert path.read_text().strip() == secret


def test_install_with_no_auth_still_makes_the_webhook_secret(tmp_path, capsys):
    data = tmp_path / "data"
    assert service(["install", "--no-auth", "--unit-path", str(tmp_path / "c.service"),
                    "--data-dir", str(data)]) == 0
    secret = (data / SECRET_FILE_NAME).read_text().strip()
    assert capsys.readouterr().out.count(secret) == 1
    assert not started_secret((tmp_path / "c.service").read_text(), capsys)[0].generated


def test_install_reads_an_operators_webhook_secret_file_and_refuses_a_bad_one(tmp_path, capsys):
    mine, data, unit_path = tmp_path / "mine", tmp_path / "data", tmp_path / "c.service"
    mine.write_text("whsec_" + "QUJD" * 8 + "\n")
    argv = ["install", "--unit-path", str(unit_path), "--data-dir", str(data)]
    assert service(argv + ["--webhook-secret-file", str(mine)]) == 0
    printed = capsys.readouterr().out
    assert "whsec_" not in printed and f"Webhook signing secret: kept in {mine}" in printed
    assert not (data / SECRET_FILE_NAME).exists()
    assert started_secret(unit_path.read_text(), capsys)[0].path == mine
    bad, elsewhere = tmp_path / "bad", tmp_path / "elsewhere"
    bad.write_text("not-a-secret")
    assert service(["install", "--unit-path", str(tmp_path / "b.service"), "--data-dir",
                    str(elsewhere), "--webhook-secret-file", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cylindria: error: the webhook secret file")
    assert len(err.splitlines()) == 1
    assert not elsewhere.exists() and not (tmp_path / "b.service").exists()


@pytest.mark.parametrize("argv, message", [
    (["--numberOfGpus", "9"], "--numberOfGpus: invalid value '9'"),
    (["--user", "no-such-user-cylindria"], "no such user"),
])
def test_bad_install_fails_with_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    unit_path = tmp_path / "c.service"
    assert service(["install", "--unit-path", str(unit_path), "--data-dir", str(tmp_path / "d"),
                    *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cylindria: error:") and message in err and len(err.splitlines()) == 1
    assert not unit_path.exists() and not (tmp_path / "d").exists()
    assert "first-key-123" not in err


def test_a_key_in_the_services_definition_is_refused():
    for text in ("--api-key x", "Environment=CYLINDRIA_API_KEY=x", f"--host {API_KEY}"):
        with pytest.raises(ConfigError):
            cli.refuse_key(text, (API_KEY,))
    cli.refuse_key("--port 8000", (API_KEY,))


def test_remove_start_stop_status_go_through_systemctl(tmp_path):
    unit_path = tmp_path / "cylindria.service"
    unit_path.write_text("[Unit]\n")
    systemctl = FakeSystemctl()
    for action in ("start", "status", "stop", "remove"):
        assert service([action, "--unit-path", str(unit_path)], systemctl) == 0
    assert systemctl.calls == [("start", "cylindria.service"),
                               ("status", "--no-pager", "cylindria.service"),
                               ("stop", "cylindria.service"),
                               ("disable", "--now", "cylindria.service"), ("daemon-reload",)]
    assert not unit_path.exists()
    assert service(["remove", "--unit-path", str(unit_path)], systemctl) == 1


def test_systemctl_missing_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty dir: no systemctl on it
    assert systemd.systemctl("status", "cylindria.service") == 1
    assert "systemctl not found" in capsys.readouterr().err


def test_unwritable_unit_path_is_one_clear_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert service(["install", "--no-auth", "--unit-path", str(blocker / "c.service"),
                    "--data-dir", str(tmp_path / "d")]) == 1
    assert re.match(r"cylindria: error: .+: .*file", capsys.readouterr().err)


@pytest.mark.parametrize("arg, word", [
    ("/plain/path", "/plain/path"),
    ("/with space/x", '"/with space/x"'),
    ("50%$HOME", "50%%$$HOME"),
    ('say "hi"\\', '"say \\"hi\\"\\\\"'),
])
def test_execstart_words_are_escaped_for_systemd(arg, word):
    assert systemd.quote(arg) == word

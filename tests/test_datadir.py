"""The data dir is private to the service's user: 0700, and 0600 for every file Cylindria
writes there (database, its -wal and -shm, the generated key, the log), whatever the umask."""
import logging
import os
import stat

import pytest

from comfy.private import private_dir
from cylindria.service.logs import remove_handlers, setup_logging
from cylindria.service.server import Service
from tests.conftest import make_config

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX modes (Windows: the per-user "
                                                            "data dir is already private)")


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def open_umask():
    """umask 000: every file and dir would be readable and writable by all without the fix."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_after_a_start_the_dir_is_0700_and_its_files_0600(fakes, tmp_path, open_umask):
    config = make_config(fakes, tmp_path, api_keys=(), log_file=tmp_path / "data" / "cylindria.log")
    pipeline = setup_logging("INFO", config.log_file, console=False)
    try:
        with Service(config):
            data = config.data_dir
            files = {p.name: mode(p) for p in data.iterdir()}
    finally:
        remove_handlers(pipeline)
    assert mode(data) == 0o700
    assert {"jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm", "api_key",
            "cylindria.log", "assets"} <= set(files)
    assert {name: m for name, m in files.items() if (data / name).is_dir()} == {"assets": 0o700}
    assert {m for name, m in files.items() if not (data / name).is_dir()} == {0o600}


def test_a_dir_and_files_left_open_by_an_older_start_are_tightened(fakes, tmp_path):
    config = make_config(fakes, tmp_path)
    with Service(config):
        pass
    data = config.data_dir
    os.chmod(data, 0o755)
    for path in data.iterdir():
        os.chmod(path, 0o644)
    with Service(config):
        assert mode(data) == 0o700
        assert {p.name: mode(p) for p in data.iterdir()} == {
            **{name: 0o600 for name in ("jobs.sqlite3", "jobs.sqlite3-wal", "jobs.sqlite3-shm",
                                        "webhook_secret", "cylindria.lock", "idempotency_secret")},
            "assets": 0o700}


def test_a_shared_dir_like_tmp_is_left_as_it_is(tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    caplog.set_level(logging.WARNING)
    private_dir(shared)
    assert mode(shared) == 0o1777 and "shared with other users" in caplog.text


def test_the_systemd_state_directory_is_made_private_by_systemd_too():
    from cylindria.service import systemd
    unit = systemd.render_unit(["python3", "cylindria.py"], systemd.DEFAULT_DATA_DIR, "cylindria")
    assert "StateDirectory=cylindria\nStateDirectoryMode=0700\n" in unit

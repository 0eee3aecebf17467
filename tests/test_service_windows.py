"""The Windows service class, run on Linux against a Dummy pywin32 and a real server.

Only the service manager is faked: the class's SvcDoRun/SvcStop run the real ServiceRunner
around a real cylindria.service.server.Service, as they do under pythonservice.exe.
"""
import importlib.util
import json
import os
import sys
import threading
import types
from pathlib import Path

import pytest

from cylindria.config.options import load_config
from cylindria.service import cli, winservice
from tests.helpers import API_KEY, Api, wait_for
from tests.test_service_lifecycle import no_cylindria_threads, service_flags

STOP_PENDING, AUTO_START = 3, 2


class ServiceManagerError(Exception):
    """win32service.error: carries a winerror code."""

    def __init__(self, winerror):
        super().__init__(winerror)
        self.winerror = winerror


def dummy_pywin32() -> dict:
    """The few pywin32 modules and names that cylindria.service.winservice uses, recording their calls."""
    util = types.ModuleType("win32serviceutil")
    util.options, util.installed = {}, []

    class ServiceFramework:
        def __init__(self, args):
            self.statuses = []

        def ReportServiceStatus(self, status):
            self.statuses.append(status)

    util.ServiceFramework = ServiceFramework
    util.GetServiceCustomOption = lambda name, option, default=None: util.options.get(
        (name, option), default)
    util.SetServiceCustomOption = lambda name, option, value: util.options.__setitem__(
        (name, option), value)
    util.InstallService = lambda cls, name, display, **kw: util.installed.append((cls, name, kw))
    service = types.ModuleType("win32service")
    service.SERVICE_STOP_PENDING, service.SERVICE_AUTO_START = STOP_PENDING, AUTO_START
    service.error = ServiceManagerError
    manager = types.ModuleType("servicemanager")
    manager.LogInfoMsg = lambda message: None
    errors = types.ModuleType("winerror")
    errors.ERROR_SERVICE_EXISTS = 1073
    return {"win32serviceutil": util, "win32service": service, "servicemanager": manager,
            "winerror": errors}


@pytest.fixture
def windows(monkeypatch):
    """cylindria.service.winservice loaded afresh (under another name) with the Dummy pywin32 importable."""
    modules = dummy_pywin32()
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("winservice_under_test", winservice.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, modules["win32serviceutil"]


def test_install_registers_the_class_and_the_flags_without_the_key(windows, tmp_path, capsys):
    module, util = windows
    flags = ["--port", "8000", "--data-dir", str(tmp_path)]
    module.install(flags)
    ((class_string, name, options),) = util.installed
    assert class_string == module.CLASS_STRING and name == "Cylindria"
    assert options["startType"] == AUTO_START  # starts at boot
    assert json.loads(util.options[("Cylindria", "Arguments")]) == flags


def test_the_service_class_serves_and_svcstop_stops_everything(windows, fakes, tmp_path):
    module, util = windows
    data = tmp_path / "data"
    flags = service_flags(fakes, data)
    cli.store_key(load_config(flags + ["--api-key", API_KEY], {}), None)
    util.SetServiceCustomOption("Cylindria", "Arguments", json.dumps(flags))
    service = module.CylindriaService(["Cylindria"])
    thread = threading.Thread(target=service.SvcDoRun, name="test-scm-run")
    thread.start()
    wait_for(lambda: service.runner.service is not None and service.runner.service.ready.is_set())
    assert Api(service.runner.service.url).get("/jobstatus/nope").status_code == 404
    service.SvcStop()
    thread.join(5)
    assert not thread.is_alive() and service.statuses == [STOP_PENDING]
    assert no_cylindria_threads()
    assert "Cylindria stopped" in (data / "cylindria.log").read_text()


def test_install_shows_the_webhook_secret_once_and_the_service_never(windows, fakes, tmp_path,
                                                                       monkeypatch, capsys):
    module, util = windows
    monkeypatch.setattr(module, "restart_on_failure", lambda: None)  # no sc.exe here
    monkeypatch.setattr(cli, "winservice", module)
    for name in [n for n in os.environ if n.startswith("CYLINDRIA_")]:
        monkeypatch.delenv(name)
    data = tmp_path / "data"
    assert cli.main(["install", *service_flags(fakes, data)], windows=True) == 0
    path = data / "webhook_secret"
    secret = path.read_text().strip()
    printed = capsys.readouterr().out
    shown = f"Generated webhook signing secret (shown once; stored in {path}):\n  {secret}\n"
    assert shown in printed
    assert printed.count(secret) == 1
    assert secret not in util.options[("Cylindria", "Arguments")]
    service = module.CylindriaService(["Cylindria"])
    thread = threading.Thread(target=service.SvcDoRun, name="test-scm-run")
    thread.start()
    try:
        wait_for(lambda: service.runner.service is not None
                 and service.runner.service.ready.is_set())
        assert service.runner.service.context.webhooks.secret.secret == secret
    finally:
        service.SvcStop()
        thread.join(5)
    assert secret not in capsys.readouterr().out  # shown at install, never by the service
    assert secret not in (data / "cylindria.log").read_text()


def install_args(*argv):
    return cli.parser_for("install").parse_args(list(argv))


def test_windows_flags_pin_the_installers_data_dir_and_a_log_file(monkeypatch):
    data = Path("C:/Users/op/AppData/Cylindria")
    monkeypatch.setattr(cli, "default_data_dir", lambda: data)
    planned = cli.plan(install_args("--port", "8000", "--api-key", API_KEY), True, {})
    flags = planned.flags
    assert flags[flags.index("--data-dir") + 1] == str(data)
    assert flags[flags.index("--log-file") + 1] == str(data / "cylindria.log")
    assert API_KEY not in " ".join(flags) and planned.config.api_keys == (API_KEY,)


def test_install_without_pywin32_says_so_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(winservice, "win32serviceutil", None)
    argv = ["install", "--data-dir", str(tmp_path / "d"), "--api-key", API_KEY]
    assert cli.main(argv, windows=True) == 1
    assert "pip install pywin32" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()

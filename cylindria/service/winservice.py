"""Cylindria as a Windows service (pywin32), around the same cylindria.service.server.Service as the console.

Imports cleanly anywhere: without pywin32 (Linux, or not installed) only ServiceRunner, the
part that runs and stops the server, is defined, and the tests drive it on Linux.
"""
from __future__ import annotations

import json
import logging
import subprocess
import threading
from pathlib import Path

from cylindria.config.options import load_config
from cylindria.service.logs import LOG_FILE_NAME, remove_handlers, setup_logging

try:
    import servicemanager
    import win32service
    import win32serviceutil
    import winerror
except ImportError:  # not Windows, or pywin32 missing: install/start/... say so clearly
    win32serviceutil = None

logger = logging.getLogger(__name__)

SERVICE_NAME = "Cylindria"
DISPLAY_NAME = "Cylindria"
DESCRIPTION = "Authenticated REST API in front of this host's ComfyUI instances"
ARGS_OPTION = "Arguments"  # registry value (the service's Parameters key): the flags, as JSON
# pythonservice.exe puts the class string's folder (the one holding the cylindria package: the
# checkout or site-packages) on sys.path and imports the dotted module after it.
ENTRY = Path(__file__).resolve().parents[2] / "cylindria.service.winservice"
CLASS_STRING = f"{ENTRY}.CylindriaService"
STATE_NAMES = {1: "stopped", 2: "starting", 3: "stopping", 4: "running",
               5: "continuing", 6: "pausing", 7: "paused"}


class ServiceRunner:
    """Runs Cylindria for a service host until stop() is called from another thread."""

    def __init__(self):
        self.service = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def run(self, argv: list[str]) -> None:
        """Serve with these flags, logging to their log file (else the data dir's), until stop()."""
        from cylindria.service.server import Service  # after logging is set up, as in cylindria

        config = load_config(argv)
        log_file = config.log_file or config.data_dir / LOG_FILE_NAME
        logs = setup_logging(config.log_level, log_file, console=False)  # no console here
        try:
            with self._lock:
                if self._stopping.is_set():
                    return
                self.service = Service(config)
            self.service.start()
            self.service.serve()
        except Exception:
            logger.exception("Cylindria service failed")
            raise
        finally:
            remove_handlers(logs)

    def stop(self) -> bool:
        """Stop serving and tracking and close the store; True once all of it is down."""
        with self._lock:
            self._stopping.set()
            service = self.service
        return True if service is None else service.stop()


if win32serviceutil is not None:
    class CylindriaService(win32serviceutil.ServiceFramework):
        """The service the Windows service manager starts and stops."""

        _svc_name_ = SERVICE_NAME
        _svc_display_name_ = DISPLAY_NAME
        _svc_description_ = DESCRIPTION

        def __init__(self, args):
            super().__init__(args)
            self.runner = ServiceRunner()

        def SvcDoRun(self):
            """Run until SvcStop; an exception ends the service as failed (then restarted)."""
            stored = win32serviceutil.GetServiceCustomOption(SERVICE_NAME, ARGS_OPTION, "[]")
            argv = json.loads(stored)
            servicemanager.LogInfoMsg(f"{SERVICE_NAME}: starting")
            self.runner.run(argv)

        def SvcStop(self):
            """The service manager's stop request: the same stop as everywhere else."""
            self.ReportServiceStatus(win32service.SERVICE_STOP_PENDING)
            self.runner.stop()
else:
    CylindriaService = None


def require_pywin32() -> None:
    """A clear error where pywin32 (so the Windows service manager's API) is missing."""
    if win32serviceutil is None:
        raise OSError("the Windows service needs pywin32: pip install pywin32")


def install(argv: list[str]) -> None:
    """Install (or update) the service: starts at boot, restarts after a crash, runs `argv`."""
    require_pywin32()
    try:
        win32serviceutil.InstallService(CLASS_STRING, SERVICE_NAME, DISPLAY_NAME,
                                        startType=win32service.SERVICE_AUTO_START,
                                        description=DESCRIPTION)
    except win32service.error as exc:
        if exc.winerror != winerror.ERROR_SERVICE_EXISTS:
            raise
        win32serviceutil.ChangeServiceConfig(CLASS_STRING, SERVICE_NAME,
                                             startType=win32service.SERVICE_AUTO_START,
                                             description=DESCRIPTION)
    win32serviceutil.SetServiceCustomOption(SERVICE_NAME, ARGS_OPTION, json.dumps(argv))
    restart_on_failure()
    print(f"installed the Windows service {SERVICE_NAME} (starts at boot)")


def restart_on_failure() -> None:
    """Restart 5 s after a failure (twice), then after 60 s; the count resets after a day."""
    # failureflag 1: a start that fails cleanly (port taken: SvcDoRun raises, and pywin32
    # reports "stopped" with an error) counts as a failure too, not only a crash.
    for args in (["failure", SERVICE_NAME, "reset=", "86400",
                  "actions=", "restart/5000/restart/5000/restart/60000"],
                 ["failureflag", SERVICE_NAME, "1"]):
        try:
            subprocess.run(["sc.exe", *args], check=True, stdout=subprocess.DEVNULL)
        except (OSError, subprocess.CalledProcessError) as exc:
            print(f"warning: could not set the service's restart on failure (sc.exe): {exc}")


def remove() -> None:
    """Stop the service if it runs, then delete it; the data dir (jobs, key, logs) stays."""
    require_pywin32()
    if win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1] != win32service.SERVICE_STOPPED:
        stop()
    win32serviceutil.RemoveService(SERVICE_NAME)
    print(f"removed the Windows service {SERVICE_NAME}")


def start() -> None:
    """Start the service and wait until it runs."""
    require_pywin32()
    win32serviceutil.StartService(SERVICE_NAME)
    win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_RUNNING, 60)
    print(f"{SERVICE_NAME}: running")


def stop() -> None:
    """Stop the service and wait until it has stopped."""
    require_pywin32()
    win32serviceutil.StopService(SERVICE_NAME)
    win32serviceutil.WaitForServiceStatus(SERVICE_NAME, win32service.SERVICE_STOPPED, 60)
    print(f"{SERVICE_NAME}: stopped")


def status() -> int:
    """Print the service's state; 0 when it runs, 3 otherwise (as systemctl status)."""
    require_pywin32()
    state = win32serviceutil.QueryServiceStatus(SERVICE_NAME)[1]
    print(f"{SERVICE_NAME}: {STATE_NAMES.get(state, state)}")
    return 0 if state == win32service.SERVICE_RUNNING else 3


def errors() -> tuple:
    """The exceptions pywin32 raises for a refused or failed service operation."""
    return (OSError,) if win32serviceutil is None else (OSError, win32service.error)

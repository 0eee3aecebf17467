"""Debian's chromium, headless, as a real browser for pages Cylindria serves (GET /docs).

It may reach loopback only: every other host name resolves to nothing and every other request
goes to a dead loopback proxy, and its background services (updates, sync, metrics) are off.

It always runs with --no-sandbox: chromium refuses to start as root without it ("Running as
root without --no-sandbox is not supported"), and so does it where unprivileged user
namespaces are off (containers, Ubuntu 24.04's AppArmor rule). The sandbox guards against
hostile pages; the only pages loaded here are Cylindria's own, from loopback.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser")
RENDER_BUDGET_MS = 15000  # virtual time the page gets to fetch and render (not a wait on a clock)
TIMEOUT_S = 120  # the process is killed after this (a hung browser fails the caller)


def find_chromium() -> str | None:
    """The chromium executable, or None where it is not installed."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(url: str, *action: str, size: tuple[int, int] = (1280, 900)) -> subprocess.CompletedProcess:
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="cylindria-chromium-") as profile:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
             "--proxy-server=http://127.0.0.1:9",  # anything not loopback: a dead port
             "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-domain-reliability", "--no-first-run",
             "--no-pings", f"--virtual-time-budget={RENDER_BUDGET_MS}", *action, url],
            capture_output=True, text=True, timeout=TIMEOUT_S, cwd=profile)


def rendered_dom(url: str) -> str:
    """The page's DOM once its scripts have run and its fetches are answered."""
    done = _run(url, "--dump-dom")
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def screenshot(url: str, path: Path, size: tuple[int, int] = (1280, 900)) -> Path:
    """A PNG of the rendered page at `path`."""
    path = Path(path).resolve()
    done = _run(url, f"--screenshot={path}", size=size)
    if done.returncode != 0 or not path.exists():
        raise RuntimeError(f"chromium made no screenshot ({done.returncode}): {done.stderr[-2000:]}")
    return path

"""`cylindria service install|remove|start|stop|status`: Windows service or systemd unit.

The service runs `python cylindria.py` (installed: `python -m cylindria`) with the flags given at install (and the CYLINDRIA_*
settings of the installing shell, written out as flags), pinned to absolute paths and an
explicit data dir. The API key never goes into the unit or the service's command line: it is
written to the data dir's key file, which Cylindria reads when no key is configured. A key
and a webhook signing secret that install generates are shown on the installing terminal,
never by the service (whose console is the journal, or nothing on Windows).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from comfy.private import show_once, write_private
from cylindria.config.options import (OPTIONS, SWITCHES, Config, ConfigError, build_parser, default_data_dir,
                            load_config)
from cylindria.service import systemd, winservice
from cylindria.service.logs import LOG_FILE_NAME
from cylindria.web.auth import KEY_FILE_NAME, resolve_keys
from cylindria.webhooks.secret import BadSecret, WebhookSecret, load_secret

DESCRIPTIONS = {
    "install": "Install Cylindria as a service that starts at boot and runs with these flags "
               "(Windows: a Windows service; Linux: a systemd unit). The API key goes to the "
               "data dir's key file, never into the service's definition; a generated key and "
               "webhook signing secret are shown here, once.",
    "remove": "Stop and remove the service; the data dir (jobs, key, logs) stays.",
    "start": "Start the installed service.",
    "stop": "Stop the running service.",
    "status": "Show whether the service runs.",
}
ACTIONS = tuple(DESCRIPTIONS)
LAUNCHER = Path(__file__).resolve().parents[2] / "cylindria.py"  # the checkout's, if run from one


def launch_command() -> list[str]:
    """How a service starts this Cylindria: the checkout's launcher, else the installed package."""
    if LAUNCHER.is_file():
        return [sys.executable, str(LAUNCHER)]
    return [sys.executable, "-m", "cylindria"]  # installed: cylindria.py is not in site-packages
KEY_FLAG = "--api-key"
KEY_ENV = "CYLINDRIA_API_KEY"


@dataclass(frozen=True)
class Plan:
    """What install sets up: the settings, and the flags the service runs with (no key)."""

    config: Config
    flags: list


def parser_for(action: str) -> argparse.ArgumentParser:
    """install takes Cylindria's own flags and the service options; the rest only the latter."""
    parser = build_parser() if action == "install" else argparse.ArgumentParser()
    parser.prog = f"cylindria service {action}"
    parser.description = DESCRIPTIONS[action]
    parser.epilog = "See the 'Deploying' section of README.md."
    parser.allow_abbrev = False  # a service option must never swallow a server flag
    if action == "install":
        parser.add_argument("--print", dest="print_only", action="store_true",
                            help="Linux: print the systemd unit instead of installing it")
        parser.add_argument("--user", help="Linux: the (non-root) user the service runs as")
    parser.add_argument("--unit-path", type=Path, default=systemd.UNIT_PATH,
                        help=f"Linux: the unit file; default {systemd.UNIT_PATH}")
    return parser


def given_flags(args: argparse.Namespace) -> list[str]:
    """The server flags given on the command line, as argv again."""
    argv = []
    for option in OPTIONS:
        for value in _values(option, getattr(args, option.dest)):
            argv += [option.flag, value]
    return argv + [option.flag for option in SWITCHES if getattr(args, option.dest)]


def _values(option, raw) -> list:
    """The values a setting was given: a repeatable flag's each (its variable's comma-separated
    items), another's one, or none."""
    if raw is None:
        return []
    if option.many:
        return list(raw) if isinstance(raw, list) else [i.strip() for i in raw.split(",") if i.strip()]
    return [raw]


def raw_settings(args: argparse.Namespace, environ) -> dict:
    """Each setting given as a flag, else by a CYLINDRIA_* variable: {option: text or True}."""
    settings = {}
    for option in OPTIONS + SWITCHES:
        raw = getattr(args, option.dest)
        if raw is None and option.env and environ.get(option.env) not in (None, ""):
            raw = environ[option.env]
        if raw is not None:
            settings[option] = raw
    return settings


def service_flags(settings: dict, data_dir: Path, windows: bool) -> list[str]:
    """The service's command-line flags: no key, absolute paths, an explicit data dir."""
    flags = []
    for option, raw in settings.items():
        if option.dest in ("api_keys", "data_dir"):
            continue
        if option in SWITCHES:
            if raw is True or option.convert(str(raw)):
                flags.append(option.flag)
            continue
        for value in _values(option, raw):
            flags += [option.flag, os.path.abspath(value) if option.convert is Path else str(value)]
    flags += ["--data-dir", str(data_dir)]
    if "--dev" in flags and "--dev-save-dir" not in flags:  # somewhere the service may write
        flags += ["--dev-save-dir", str(data_dir / Config().dev_save_dir)]
    if windows and "--log-file" not in flags:  # a service has no console to log to
        flags += ["--log-file", str(data_dir / LOG_FILE_NAME)]
    return flags


def plan(args: argparse.Namespace, windows: bool, environ=os.environ) -> Plan:
    """Validate the settings as a start would, and derive the service's flags."""
    load_config(given_flags(args), environ)  # one clear line naming the bad flag or variable
    settings = raw_settings(args, environ)
    by_dest = {option.dest: option for option in settings}
    if "data_dir" in by_dest:
        data_dir = Path(os.path.abspath(settings[by_dest["data_dir"]]))
    else:  # the installing user's dir on Windows (LocalSystem can read it, others cannot)
        data_dir = default_data_dir() if windows else systemd.DEFAULT_DATA_DIR
    flags = service_flags(settings, data_dir, windows)
    key_flags = [KEY_FLAG, settings[by_dest["api_keys"]]] if "api_keys" in by_dest else []
    config = load_config(flags + key_flags, {})
    refuse_key(" ".join(flags), config.api_keys)
    if config.webhook_secret_file is not None:  # a bad one stops install before any write
        webhook_secret(config)
    return Plan(config, flags)


def refuse_key(text: str, keys: tuple) -> None:
    """Raise if an API key (or the flag or variable that carries one) is in `text`."""
    if KEY_FLAG in text or KEY_ENV in text or any(key in text for key in keys):
        raise ConfigError("refusing to put an API key into the service's definition")


def store_key(config: Config, user: str | None) -> None:
    """Put the key where the service reads it: the data dir's owner-only key file."""
    path = config.data_dir / KEY_FILE_NAME
    if config.no_auth:
        return
    if config.api_keys:
        write_private(path, "\n".join(config.api_keys))
        print(f"API key{'s' if len(config.api_keys) > 1 else ''} written to {path} (owner-only)")
    else:
        setup = resolve_keys((), False, config.data_dir)
        if setup.generated:
            show_once("API key", path, setup.keys[0])
        else:
            print(f"API key: kept in {path}")
    give_to(user, config.data_dir, path)


def store_secret(config: Config, user: str | None) -> None:
    """Make the webhook signing secret the service signs with, here, so that it is shown on
    this terminal and never by the service (an operator's --webhook-secret-file is only read)."""
    secret = webhook_secret(config)
    if secret.generated:
        show_once("webhook signing secret", secret.path, secret.secret)
    else:
        print(f"Webhook signing secret: kept in {secret.path}")
    if config.webhook_secret_file is None:
        give_to(user, config.data_dir, secret.path)


def webhook_secret(config: Config) -> WebhookSecret:
    """The secret the service will sign with (generated in the data dir when there is none)."""
    try:
        return load_secret(config.data_dir, config.webhook_secret_file)
    except BadSecret as exc:
        raise ConfigError(str(exc)) from None


def give_to(user: str | None, *paths: Path) -> None:
    """The service's user must own its data (no user: it runs as the installing one)."""
    if user:
        for path in paths:
            shutil.chown(path, user=user)


def key_note(args: argparse.Namespace, config: Config) -> str:
    """Where the printed unit's service finds its key (never in the unit), and what to do."""
    key_file = config.data_dir / KEY_FILE_NAME
    if config.no_auth:
        return "the service runs without keys (--no-auth)"
    if config.api_keys:
        given = "--api-key" if args.api_keys is not None else KEY_ENV
        return (f"the service reads its key from {key_file}: put the key(s) from {given} there, "
                "one per line, readable by the service's user only; install without --print "
                "does that")
    if key_file.exists():
        return f"the service reads its key from {key_file}, which holds one already"
    return (f"at its first start the service generates a key in {key_file} and prints it "
            "once (journalctl -u cylindria shows it)")


def check_user(user: str) -> None:
    """A clear error before anything is written when --user names no account here."""
    import pwd  # POSIX only; --user is for systemd

    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--user: no such user {user!r} on this host") from None


def describe(exc: BaseException) -> str:
    """An OS or service-manager error as one line, with the file it concerns."""
    text = getattr(exc, "strerror", None) or str(exc)
    filename = getattr(exc, "filename", None)
    return f"{text}: {filename}" if filename else text


def install(args: argparse.Namespace, windows: bool, systemctl) -> int:
    """Write the key file and the webhook secret, then the Windows service or the systemd unit."""
    planned = plan(args, windows)
    if windows:
        if args.user or args.print_only:
            raise ConfigError("--user and --print are for systemd: on Windows the service runs "
                              "as LocalSystem (change it in services.msc)")
        winservice.require_pywin32()  # before anything is written
        store_key(planned.config, None)
        store_secret(planned.config, None)
        winservice.install(planned.flags)
        return 0
    unit = systemd.render_unit([*launch_command(), *planned.flags],
                               planned.config.data_dir, args.user)
    refuse_key(unit, planned.config.api_keys)
    if args.print_only:
        print(unit, end="")
        print(f"(--print: nothing written; {key_note(args, planned.config)})", file=sys.stderr)
        return 0
    if args.user:
        check_user(args.user)
    else:
        print("note: the service will run as root; --user NAME runs it as that user")
    store_key(planned.config, args.user)
    store_secret(planned.config, args.user)
    code = systemd.install(unit, args.unit_path, systemctl)
    if code == 0:
        print(f"enabled at boot; start it now with: {' '.join(launch_command())} service start")
    return code


def control(action: str, args: argparse.Namespace, windows: bool, systemctl) -> int:
    """remove, start, stop or status, on the platform's service manager."""
    if not windows:
        if action == "remove":
            return systemd.remove(args.unit_path, systemctl)
        return systemd.control(action, args.unit_path, systemctl)
    if action == "status":
        return winservice.status()
    {"remove": winservice.remove, "start": winservice.start, "stop": winservice.stop}[action]()
    return 0


def usage(full: bool) -> str:
    """The service command's usage line; `full` adds what each action does."""
    text = (f"usage: cylindria service {{{','.join(ACTIONS)}}} [options]\n"
            "  install takes the same flags as a normal start (see cylindria --help)\n")
    if full:
        text += "\nactions:\n" + "".join(
            textwrap.fill(DESCRIPTIONS[action], 79, initial_indent=f"  {action:9}",
                          subsequent_indent=" " * 11) + "\n" for action in ACTIONS)
        text += "\n'cylindria service ACTION --help' shows an action's options.\n"
    return text


def main(argv: list[str], windows: bool = sys.platform == "win32",
         systemctl=systemd.systemctl) -> int:
    """Run one service action; 2 for a bad command line, 1 when the action failed."""
    if argv[:1] in (["-h"], ["--help"]):
        print(usage(full=True), end="")
        return 0
    if not argv or argv[0] not in ACTIONS:
        print(usage(full=False), end="", file=sys.stderr)
        return 2
    action = argv[0]
    args = parser_for(action).parse_args(argv[1:])
    try:
        if action == "install":
            return install(args, windows, systemctl)
        return control(action, args, windows, systemctl)
    except ConfigError as exc:
        print(f"cylindria: error: {exc}", file=sys.stderr)
        return 2
    except winservice.errors() as exc:
        print(f"cylindria: error: {describe(exc)}", file=sys.stderr)
        return 1

"""All settings from one table: flag, environment variable, converter, default."""
from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import platformdirs

from cylindria.config.values import (algorithms, api_keys, claim_value, comfy_url, database_url, duration,
                           flag_bool, gpu_count, integer_in, ip_address, log_level, mebibytes,
                           node_name, origin, port,
                           positive_float, rate_limit, seconds, thread_count)
from cylindria.webhooks.schedule import DELAYS, GIVE_UP_AFTER


MAX_BODY_MB = 8  # the default --max-body-mb: API workflows are far smaller; big media go to /assets


class ConfigError(ValueError):
    """A setting that cannot be used; the message is the one line shown to the operator."""


def default_data_dir() -> Path:
    """The per-user data dir (platformdirs knows Windows, macOS and Linux conventions)."""
    return Path(platformdirs.user_data_dir("Cylindria", appauthor=False))


def default_node() -> str:
    """This host's name as a node name (characters a node name may not have become '-')."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63] or "cylindria"


def advertise_url(config: "Config") -> str:
    """Where the other nodes reach this one: --advertise-url, or this host's name and port."""
    return config.advertise_url or f"http://{socket.gethostname()}:{config.port}"


@dataclass(frozen=True)
class Option:
    """One row of the table."""

    flag: str
    dest: str
    env: str | None
    convert: Callable
    default: object
    help: str
    shown: str | None = None  # the default as --help says it ("": say nothing); None: `default`
    many: bool = False  # repeatable flag (its env variable: comma separated); a tuple


OPTIONS = (
    Option("--port", "port", "CYLINDRIA_PORT", port, 8000, "port Cylindria listens on"),
    Option("--host", "host", "CYLINDRIA_HOST", str, "0.0.0.0", "address Cylindria listens on"),
    Option("--numberOfGpus", "gpus", "CYLINDRIA_NUM_GPUS", gpu_count, 1,
           "GPUs (ComfyUI instances) on consecutive ports, 1..8"),
    Option("--comfy-base-url", "comfy_base_url", "COMFYUI_BASE_URL", comfy_url,
           "http://127.0.0.1:8188", "GPU 0's ComfyUI; GPU n is this URL with port + n"),
    Option("--api-key", "api_keys", "CYLINDRIA_API_KEY", api_keys, (),
           "API key(s), comma separated", shown="a generated key kept in the data dir"),
    Option("--data-dir", "data_dir", "CYLINDRIA_DATA_DIR", Path, None,
           "where the job database and the generated key live", shown=str(default_data_dir())),
    Option("--database", "database", "CYLINDRIA_DATABASE_URL", database_url, None,
           "the store of record: postgresql://user:pass@host:port/db (libpq parameters and "
           "PG* variables too)", shown="jobs.sqlite3 in the data dir"),
    Option("--node", "node", "CYLINDRIA_NODE", node_name, None,
           "this Cylindria's name in a fleet (letters, digits, . _ -; unique among the nodes "
           "on one database)", shown="this host's name"),
    Option("--advertise-url", "advertise_url", "CYLINDRIA_ADVERTISE_URL", comfy_url, None,
           "the URL at which the other nodes of a fleet reach this node's API",
           shown="http://<this host's name>:<--port>"),
    Option("--node-lease", "node_lease", "CYLINDRIA_NODE_LEASE", duration, 10.0,
           "how long a node's lease lasts unrenewed (renewed every 2s) before the other "
           "nodes of the fleet take its jobs over: 10s, 1m", shown="10s"),
    Option("--poll-interval", "poll_interval", None, positive_float, 5.0,
           "seconds between /queue polls"),
    Option("--threads", "threads", "CYLINDRIA_THREADS", thread_count, 16,
           "waitress worker threads"),
    Option("--dev-save-dir", "dev_save_dir", "CYLINDRIA_DEV_SAVE_DIR", Path,
           Path("workflows_dev"), "where --dev saves incoming workflows"),
    Option("--log-level", "log_level", "CYLINDRIA_LOG_LEVEL", log_level, "INFO", "log level"),
    Option("--connection-limit", "connection_limit", "CYLINDRIA_CONNECTION_LIMIT",
           integer_in(10, 10000), 100, "most client connections open at once"),
    Option("--log-file", "log_file", "CYLINDRIA_LOG_FILE", Path, None,
           "also write the log to this file, rotated at 10 MiB, 5 old files kept"),
    Option("--retention", "retention", "CYLINDRIA_RETENTION", duration, 30 * 86400.0,
           "how long finished jobs are kept before they are removed: 90s, 12h, 30d", shown="30d"),
    Option("--gpu-queue-depth", "gpu_queue_depth", "CYLINDRIA_GPU_QUEUE_DEPTH", integer_in(1, 64),
           2, "prompts (anyone's, running included) a ComfyUI may hold before Cylindria sends "
           "it another GpuId=auto job"),
    Option("--max-queued", "max_queued", "CYLINDRIA_MAX_QUEUED", integer_in(1, 1_000_000), 1000,
           "GpuId=auto jobs Cylindria may hold in its own queue; beyond: 429 queue_full"),
    Option("--max-attempts", "max_attempts", "CYLINDRIA_MAX_ATTEMPTS", integer_in(1, 100), 3,
           "times a job may be sent to a ComfyUI; a job whose ComfyUI died goes back to the "
           "queue until then"),
    Option("--requeue-wait", "requeue_wait", "CYLINDRIA_REQUEUE_WAIT", seconds, 300.0,
           "seconds a job pinned to a GPU waits for that GPU's ComfyUI to come back before it "
           "is lost", shown="300"),
    Option("--webhook-secret-file", "webhook_secret_file", "CYLINDRIA_WEBHOOK_SECRET_FILE", Path,
           None, "the webhook signing secret (whsec_...), instead of the one generated in the "
           "data dir", shown=""),
    Option("--rate-limit", "rate_limit", "CYLINDRIA_RATE_LIMIT", rate_limit, None,
           "requests per API key (per address where no key is needed), like 120/minute; "
           "/health and /ready are exempt", shown="off"),
    Option("--cors-origin", "cors_origins", "CYLINDRIA_CORS_ORIGINS", origin, (),
           "a browser origin allowed to call the API (repeatable; * for any, never with "
           "credentials)", shown="none", many=True),
    Option("--jwt-jwks-url", "jwt_jwks_url", "CYLINDRIA_JWT_JWKS_URL", comfy_url, None,
           "accept Bearer JWTs signed by the keys of this JWKS URL, beside API keys", shown=""),
    Option("--jwt-jwks-file", "jwt_jwks_file", "CYLINDRIA_JWT_JWKS_FILE", Path, None,
           "the same, from a JWKS file (hosts without network)", shown=""),
    Option("--jwt-issuer", "jwt_issuer", "CYLINDRIA_JWT_ISSUER", str, None,
           "the `iss` a JWT must have", shown=""),
    Option("--jwt-audience", "jwt_audience", "CYLINDRIA_JWT_AUDIENCE", str, None,
           "the `aud` a JWT must have", shown=""),
    Option("--jwt-algorithms", "jwt_algorithms", "CYLINDRIA_JWT_ALGORITHMS", algorithms,
           ("EdDSA",), "signature algorithms a JWT may use, comma separated", shown="EdDSA"),
    Option("--jwt-own-claim", "jwt_own_claim", "CYLINDRIA_JWT_OWN_CLAIM", claim_value, None,
           "claim=value (like scope=cylindria:own): a JWT whose claim holds the value (a word "
           "of a space-separated string, or an item of a list) sees only its own jobs, as a "
           "key marked :own", shown=""),
    Option("--max-asset-mb", "max_asset_mb", "CYLINDRIA_MAX_ASSET_MB", integer_in(1, 100_000), 100,
           "largest asset upload, in MiB (beyond: 413 asset_too_large)"),
    Option("--max-streams", "max_streams", "CYLINDRIA_MAX_STREAMS", integer_in(1, 1024), None,
           "event streams and long-polls (?wait=) open at once; each holds a worker thread",
           shown="threads / 4"),
    Option("--max-streams-per-client", "max_streams_per_client",
           "CYLINDRIA_MAX_STREAMS_PER_CLIENT", integer_in(1, 1024), None,
           "event streams and long-polls one client (key name or JWT subject) may hold at once",
           shown="max-streams / 4"),
    Option("--max-downloads-per-client", "max_downloads_per_client",
           "CYLINDRIA_MAX_DOWNLOADS_PER_CLIENT", integer_in(1, 1000), 4,
           "downloads (assets, outputs) one client may have in flight at once; beyond: 429 "
           "too_many_downloads"),
    Option("--send-timeout", "send_timeout", "CYLINDRIA_SEND_TIMEOUT", seconds, 30.0,
           "seconds an unsent answer (a download) may wait for its client to read any of it "
           "before the connection is cut",
           shown="30"),
    Option("--body-timeout", "body_timeout", "CYLINDRIA_BODY_TIMEOUT", seconds, 30.0,
           "seconds a client gets to send a request's whole body; then its connection is "
           "closed", shown="30"),
    Option("--max-body-mb", "max_body_bytes", "CYLINDRIA_MAX_BODY_MB", mebibytes(1, 1024),
           MAX_BODY_MB << 20, "largest workflow body, in MiB (beyond: 413 payload_too_large)",
           shown=str(MAX_BODY_MB)),
    Option("--max-inflight-body-mb", "max_inflight_body_mb", "CYLINDRIA_MAX_INFLIGHT_BODY_MB",
           integer_in(1, 1_000_000), 256, "memory request bodies being received and parsed "
           "may take at once, in MiB (beyond: 503 busy)"),
    Option("--trusted-proxy", "trusted_proxy", "CYLINDRIA_TRUSTED_PROXY", ip_address, None,
           "address of the reverse proxy (TLS) in front: client addresses come from its "
           "X-Forwarded-For (for the failure throttle and the log)"),
)
SWITCHES = (
    Option("--no-auth", "no_auth", None, flag_bool, False, "serve without API keys (warned at start)"),
    Option("--metrics-public", "metrics_public", "CYLINDRIA_METRICS_PUBLIC", flag_bool, False,
           "serve GET /metrics without a key (for a Prometheus scraper on a trusted network)"),
    Option("--dev", "dev", "CYLINDRIA_DEV_MODE", flag_bool, False,
           "save each incoming workflow to --dev-save-dir"),
    Option("--docs-public", "docs_public", "CYLINDRIA_DOCS_PUBLIC", flag_bool, False,
           "serve GET /docs (Swagger UI) and /openapi.json without a key"),
    Option("--webhook-allow-private", "webhook_allow_private", "CYLINDRIA_WEBHOOK_ALLOW_PRIVATE",
           flag_bool, False, "let webhooks call loopback, private and link-local addresses "
           "(never ComfyUI's own ports)"),
)


@dataclass(frozen=True)
class Config:
    """Cylindria's settings, validated."""

    port: int = 8000
    host: str = "0.0.0.0"
    gpus: int = 1
    comfy_base_url: str = "http://127.0.0.1:8188"
    api_keys: tuple = ()
    no_auth: bool = False
    metrics_public: bool = False
    data_dir: Path = field(default_factory=default_data_dir)
    database: str | None = None  # None: SQLite in the data dir; else a PostgreSQL URL
    node: str = field(default_factory=default_node)  # this Cylindria's name in a fleet
    advertise_url: str | None = None  # None: http://<node>:<port>
    node_lease: float = 10.0  # seconds a node's lease lasts unrenewed
    poll_interval: float = 5.0
    threads: int = 16
    dev: bool = False
    dev_save_dir: Path = Path("workflows_dev")
    log_level: str = "INFO"
    log_file: Path | None = None
    trusted_proxy: str | None = None
    connection_limit: int = 100
    retention: float = 30 * 86400.0  # seconds a finished job is kept
    gpu_queue_depth: int = 2
    max_queued: int = 1000
    max_attempts: int = 3
    requeue_wait: float = 300.0
    max_asset_mb: int = 100
    max_streams: int | None = None  # None: a quarter of the worker threads (at least 1)
    max_streams_per_client: int | None = None  # None: a quarter of max_streams (at least 1)
    max_downloads_per_client: int = 4
    send_timeout: float = 30.0  # seconds an answer may wait for its client to read
    header_timeout: float = 10.0  # seconds a client gets to send a request's headers
    idle_timeout: float = 30.0  # seconds an idle keep-alive connection is kept
    max_body_bytes: int = MAX_BODY_MB << 20  # --max-body-mb, in bytes
    body_timeout: float = 30.0  # seconds a client gets to send a request's body
    max_inflight_body_mb: int = 256  # memory budget of the request bodies in flight
    websocket: bool = True  # off only in benchmarks that measure poll-only tracking
    rate_limit: str | None = None
    cors_origins: tuple = ()
    jwt_jwks_url: str | None = None
    jwt_jwks_file: Path | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: tuple = ("EdDSA",)
    jwt_own_claim: tuple | None = None  # (claim, value) giving a token's subject the own role
    docs_public: bool = False
    webhook_allow_private: bool = False
    webhook_secret_file: Path | None = None
    # Seconds between a webhook's tries, and after which it is given up: tests shorten them.
    webhook_delays: tuple = DELAYS
    webhook_give_up: float = GIVE_UP_AFTER


def stream_limit(config: "Config") -> int:
    """Streams and long-polls allowed at once: --max-streams, or a quarter of the threads."""
    return config.max_streams or max(1, config.threads // 4)


def stream_share(config: "Config") -> int:
    """Streams and long-polls one client may hold: --max-streams-per-client, or a quarter of
    the streams (so one client can never hold every slot while another waits)."""
    return config.max_streams_per_client or max(1, stream_limit(config) // 4)


def build_parser() -> argparse.ArgumentParser:
    """The command line, from the table."""
    parser = argparse.ArgumentParser(
        prog="cylindria", description="Authenticated REST API in front of ComfyUI GPU instances.",
        epilog="As a service: cylindria service install|remove|start|stop|status "
               "(install takes the flags above; see 'Deploying' in README.md).")
    for option in OPTIONS:
        env = f" (env {option.env}{', comma separated' if option.many else ''})" \
            if option.env else ""
        parser.add_argument(option.flag, dest=option.dest, default=None,
                            action="append" if option.many else "store",
                            help=f"{option.help}{env}{_default_text(option)}".replace("%", "%%"))
    for option in SWITCHES:
        env = f" (env {option.env}=1)" if option.env else ""
        parser.add_argument(option.flag, dest=option.dest, action="store_true", default=None,
                            help=f"{option.help}{env}")
    return parser


def _default_text(option: Option) -> str:
    """'; default X' for --help, or nothing where there is no default worth showing."""
    shown = option.default if option.shown is None else option.shown
    return "" if shown in (None, "", ()) else f"; default {shown}"


def load_config(argv: list[str] | None = None, environ: dict | None = None) -> Config:
    """Flags win over environment variables, which win over defaults; bad values raise ConfigError."""
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values = {}
    for option in OPTIONS + SWITCHES:
        raw, source = getattr(args, option.dest), option.flag
        if raw is None and option.env and environ.get(option.env) not in (None, ""):
            raw, source = environ[option.env], option.env
        if raw is None or raw is True:
            values[option.dest] = option.default if raw is None else True
            continue
        try:
            if option.many:  # every use of the flag, or the variable's comma-separated items
                items = raw if isinstance(raw, list) else [i for i in raw.split(",") if i.strip()]
                values[option.dest] = tuple(dict.fromkeys(option.convert(i) for i in items))
            else:
                values[option.dest] = option.convert(raw)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: invalid value {_shown(option, raw)}: {exc}") from None
    values["data_dir"] = values["data_dir"] or default_data_dir()
    values["node"] = values["node"] or default_node()
    if values["max_streams"] is not None and values["max_streams"] >= values["threads"]:
        raise ConfigError(f"--max-streams {values['max_streams']} must be below --threads "
                          f"{values['threads']}: every stream holds a worker thread")
    if values["jwt_jwks_url"] and values["jwt_jwks_file"]:
        raise ConfigError("--jwt-jwks-url and --jwt-jwks-file: give one of them")
    jwks = values["jwt_jwks_url"] or values["jwt_jwks_file"]
    if (values["jwt_issuer"] or values["jwt_audience"]) and not jwks:
        raise ConfigError("--jwt-issuer and --jwt-audience need --jwt-jwks-url or --jwt-jwks-file")
    if values["jwt_own_claim"] and not jwks:
        raise ConfigError("--jwt-own-claim needs --jwt-jwks-url or --jwt-jwks-file")
    return Config(**values)


def _shown(option: Option, raw: str) -> str:
    """The value as an error may show it: never an API key nor a database password."""
    return "(hidden)" if option.dest in ("api_keys", "database") else repr(raw)

"""Cylindria: the authenticated door to a host's ComfyUI instances.

Run: python cylindria.py --port 8000 --numberOfGpus 2
"""
from __future__ import annotations

import logging
import sys

from web.config import ConfigError, configure_logging, load_config

logger = logging.getLogger("cylindria")


def announce_keys(service) -> None:
    """Tell the operator where the key is; print a newly generated key exactly once."""
    config, keys = service.config, service.context.keys
    if config.no_auth:
        logger.warning("AUTHENTICATION IS OFF (--no-auth): anyone who can reach port %d can "
                       "run workflows on these GPUs", config.port)
    elif keys.generated:
        print(f"Generated API key (shown once; stored in {keys.key_file}):\n  {keys.keys[0]}",
              flush=True)
    elif keys.key_file is not None:
        logger.info("API key: read from %s", keys.key_file)
    else:
        logger.info("API keys: %d configured", len(keys.keys))


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the service, serve until Ctrl+C, stop everything in `finally`."""
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"cylindria: error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    from web.server import Service  # after logging is set up, so import-time logs are formatted

    try:
        service = Service(config)
    except OSError as exc:
        print(f"cylindria: error: cannot use data dir {config.data_dir}: {exc}", file=sys.stderr)
        return 2
    announce_keys(service)
    try:
        service.start()
    except OSError as exc:
        print(f"cylindria: error: cannot listen on {config.host}:{config.port}: {exc}",
              file=sys.stderr)
        service.context.close()
        return 2
    try:
        service.serve()
    except KeyboardInterrupt:
        logger.info("Ctrl+C: stopping")
    finally:
        service.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

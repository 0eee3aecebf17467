"""Cylindria as a process: the core built from the settings (`core.py`), waitress and the
lifecycle (`server.py`), logging (`logs.py`), and running as a service (`cli.py`, `systemd.py`,
`winservice.py`)."""

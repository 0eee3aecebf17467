"""Cylindria's web side: config, the Flask app, auth, errors, and the server's lifecycle."""
from web.app import create_app  # noqa: F401

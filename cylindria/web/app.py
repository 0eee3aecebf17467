"""The Flask app factory."""
from __future__ import annotations

import logging

from flask import Flask
from flask.sessions import NullSession, SecureCookieSessionInterface
from werkzeug.routing import PathConverter

from cylindria.web import assets as web_assets
from cylindria.web import models as web_models
from cylindria.web import (auth, cors, docs, errors, fleet, internal, metrics, openapi, ratelimit,
                           results, routes, status, streams, v2)
from cylindria.web.context import Context, WebState, build_web_state
from cylindria.web.jsonprovider import FastJSONProvider
from cylindria.web.tokens import verifier_for

logger = logging.getLogger(__name__)

# The interactive API docs and the document they read: public with --docs-public.
DOCS_ENDPOINTS = docs.ENDPOINTS | {"openapi.openapi_json"}


class PathNormalizer:
    """WSGI wrapper: endpoint names are case-insensitive and the trailing slash is optional.

    Only the first path segment (the endpoint name) is lowered; job ids keep their case.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        environ["PATH_INFO"] = normalize_path(environ.get("PATH_INFO", ""))
        return self.wsgi_app(environ, start_response)


class CylindriaFlask(Flask):
    """Flask with hooks resolved once: Flask asks `inspect` on every call of every hook and
    view whether it is a coroutine (about 4 us of the 98 us a /jobstatus took in-process)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._sync: dict = {}

    def ensure_sync(self, func):
        """Flask's answer for `func`, computed on its first call (functions do not change)."""
        try:
            return self._sync[func]
        except KeyError:
            wrapped = self._sync[func] = super().ensure_sync(func)
            return wrapped


class NoSessions(SecureCookieSessionInterface):
    """Cylindria keeps no sessions (it has no secret key): every request is given the same
    null session, which refuses writes, instead of Flask looking for a key and building one."""

    def __init__(self):
        self.null = NullSession()

    def open_session(self, app, request):
        """The shared null session."""
        return self.null


class AnyPath(PathConverter):
    """The rest of the path, newlines included, so a bad job id gets its 400 from
    job_id_param instead of matching no rule (werkzeug's path stops at a newline)."""

    regex = "[^/](?s:.*?)"


def normalize_path(path: str) -> str:
    """'/StartJob/MyJob/' -> '/startjob/MyJob'."""
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    head, sep, rest = path[1:].partition("/")
    return "/" + head.lower() + sep + rest


def create_app(core, web: WebState | None = None) -> Flask:
    """The HTTP surface over a built core (cylindria/service/core.py's build_core), with the web
    layer's state (built from the core's config unless given); starts no thread and opens no
    socket."""
    context = Context(core, web or build_web_state(core.config))
    app = CylindriaFlask("cylindria")
    app.config["MAX_CONTENT_LENGTH"] = context.config.max_body_bytes
    app.json = FastJSONProvider(app)
    app.session_interface = NoSessions()
    app.url_map.strict_slashes = False
    # werkzeug looks, on every match, for an earlier rule of the endpoint whose defaults would
    # build the URL (`/jobstatus` with job_id="" before `/jobstatus/<job_id>`) to redirect to
    # it; no request can match an id argument with an empty id, so that never redirects.
    app.url_map.redirect_defaults = False
    app.url_map.converters["anypath"] = AnyPath
    app.wsgi_app = PathNormalizer(app.wsgi_app)
    app.extensions["cylindria"] = context
    config = context.config
    errors.init_app(app)
    metrics.init_app(app, context)  # before auth, so refused requests are timed too
    cors.init_app(app, config.cors_origins)  # before auth: a browser's preflight has no key
    auth.init_app(app, context.keys, config.no_auth, config.metrics_public, tokens=verifier_for(config),
                  public_extra=DOCS_ENDPOINTS if config.docs_public else frozenset(),
                  fleet=context.peers.credential if context.peers is not None else None)
    ratelimit.init_app(app, config.rate_limit)  # after auth: it limits per checked key
    openapi.init_app(app)
    docs.init_app(app)
    for blueprint in (routes.bp, results.bp, status.bp, streams.bp, web_assets.bp,
                      web_models.bp, fleet.bp, internal.bp):
        app.register_blueprint(blueprint)
    v2.init_app(app)
    return app

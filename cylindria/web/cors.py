"""--cors-origin: browsers on these origins may call the API, by Flask-Cors.

Auth is by header (X-API-Key or Authorization: Bearer), never by cookie, so credentials are
never allowed: a `*` origin is answered with a literal `*`, and no origin is ever told it may
send cookies. A browser's preflight carries no key: it is answered here, before the key
check, with Flask's own OPTIONS answer (the route's methods), to which Flask-Cors adds the
headers. Any other OPTIONS is left to the key check.
"""
from __future__ import annotations

from flask import Flask, current_app, request
from flask_cors import CORS

METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"]
# What a browser may send beyond the safelisted headers: the key, JSON bodies, v2's
# Idempotency-Key, and ranged or conditional downloads.
ALLOW_HEADERS = ["X-API-Key", "Authorization", "Content-Type", "Idempotency-Key", "Range",
                 "If-Range", "If-None-Match", "If-Modified-Since"]
# What a script may read beyond the safelisted headers.
EXPOSE_HEADERS = ["Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset",
                  "Idempotency-Replayed", "Content-Range", "Accept-Ranges", "Content-Disposition",
                  "ETag", "WWW-Authenticate"]
PREFLIGHT_CACHE_SECONDS = 3600  # browsers cap it lower (Chromium: 2 h); saves a round trip a call


def answer_preflight():
    """A preflight to an existing route: Flask's OPTIONS answer (200, Allow); else None."""
    if request.method != "OPTIONS" or "Origin" not in request.headers \
            or "Access-Control-Request-Method" not in request.headers \
            or request.routing_exception is not None:
        return None
    return current_app.make_default_options_response()


def init_app(app: Flask, origins: tuple) -> CORS | None:
    """Add CORS headers for `origins` (a tuple of origins, or `*`); none: add nothing.

    Call before auth.init_app: preflights are answered before the key check."""
    if not origins:
        return None
    app.before_request(answer_preflight)
    return CORS(app, origins=list(origins), methods=METHODS, allow_headers=ALLOW_HEADERS,
                expose_headers=EXPOSE_HEADERS, max_age=PREFLIGHT_CACHE_SECONDS,
                supports_credentials=False,
                send_wildcard="*" in origins,  # a literal *, not the caller's origin echoed
                always_send=False,  # no Origin, no CORS headers (and no list of our origins)
                intercept_exceptions=False)  # every error has a handler: after_request sees it

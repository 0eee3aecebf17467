"""GET /fleet: every node of the fleet (on SQLite, this one), read from the database."""
from __future__ import annotations

from flask import Blueprint, jsonify

from cylindria.fleet.view import fleet_view
from cylindria.web.context import ctx

bp = Blueprint("fleet", __name__)


@bp.get("/fleet")
def fleet():
    """The nodes with their leases, GPUs and held jobs (503 database_unavailable when the
    database cannot be read)."""
    context = ctx()
    return jsonify(fleet_view(context.storage.nodes.all(), context.config.node))

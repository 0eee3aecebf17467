"""Cylindria's HTTP surface: the Flask app (app.py) and its blueprints (the contract's
endpoints, assets, results, streams, status, metrics, the Comfy API v2 in v2/), with the
auth, errors and limits every request passes. The process around it lives in service/."""

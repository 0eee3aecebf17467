"""Flask's JSON answers (jsonify, error bodies) through the hot-path encoder."""
from __future__ import annotations

from flask.json.provider import DefaultJSONProvider

from comfy.encoding import to_json


class FastJSONProvider(DefaultJSONProvider):
    """Compact UTF-8 from comfy.encoding, keys in the order the code builds them; Flask's
    default provider (json.dumps) stays for pretty-printing in debug mode."""

    sort_keys = False

    def response(self, *args, **kwargs):
        """What jsonify() returns: the value, compact, with a final newline as Flask gives."""
        if self._app.debug or self.compact is False:
            return super().response(*args, **kwargs)
        value = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(to_json(value) + b"\n", mimetype=self.mimetype)

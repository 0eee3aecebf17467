"""A webhook receiver to try Cylindria's webhooks with: it checks each call's signature with the
standardwebhooks package and prints the event.

    python examples/webhook_receiver.py <the webhook_secret file Cylindria printed> [port]

It listens on 127.0.0.1 (port 9000 unless given), so Cylindria must be started with
--webhook-allow-private to call it. A call whose signature is not Cylindria's answers 400.
"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

secret_file, port = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 9000
with open(secret_file, encoding="utf-8") as file:
    hook = Webhook(file.read().strip())  # the whsec_... secret, read from the path Cylindria printed


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        try:
            event = hook.verify(body, dict(self.headers))
        except WebhookVerificationError:  # not signed with Cylindria's secret, or too old
            self.send_response(400)
        else:
            print(event["type"], event["data"]["job_id"], event["data"]["status"], flush=True)
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        """Print the events only, not a line per request."""


HTTPServer(("127.0.0.1", port), Receiver).serve_forever()

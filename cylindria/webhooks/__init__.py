"""Signed webhooks: the address check, the durable outbox and its sender."""

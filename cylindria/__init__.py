"""Cylindria's server: settings, the core and its service, the HTTP surface, webhooks, storage."""

"""Cylindria's own queue (held jobs) and sending jobs to a GPU or cancelling them."""

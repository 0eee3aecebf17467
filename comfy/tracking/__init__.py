"""Keeping each job's status true: websocket events, /queue polls, reconciliation, outcomes."""

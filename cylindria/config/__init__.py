"""Cylindria's settings: one table of flags and environment variables (`options.py`) and the
converters that check each value (`values.py`). Every package may read them; they import
nothing of Cylindria's but the webhook schedule's defaults."""

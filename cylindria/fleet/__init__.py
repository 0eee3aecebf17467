"""The fleet: several Cylindria nodes on one PostgreSQL database (on SQLite, a fleet of one)."""

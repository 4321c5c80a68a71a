"""Persistence: tables, sessions, migrations and the query functions the deployables share."""

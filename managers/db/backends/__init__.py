"""The ``db`` manager's backends: SQLite, PostgreSQL (both over one SQL layer) and
MongoDB."""

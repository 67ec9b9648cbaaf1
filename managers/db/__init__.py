"""The ``db`` manager (``ctx.db``): documents on SQLite, PostgreSQL or MongoDB, chosen by
``database.url``; the backends are in ``backends/``.
"""

from managers.db.manager import DatabaseManager

__all__ = ["DatabaseManager"]

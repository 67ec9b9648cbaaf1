"""The ``redis`` manager (``ctx.cache``): the key-value store behind ``redis.url``
(``memory://`` in process, or a Redis server); the backends are in ``backends/``.
"""

from managers.redis.manager import RedisManager

__all__ = ["RedisManager"]

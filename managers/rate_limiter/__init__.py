"""The ``rate_limiter`` manager: GCRA limits, bans and the call's gate; the algorithm and
where its state lives (in process, or one Lua script on Redis) are in ``backends/``.
"""

from managers.rate_limiter.manager import RateLimiterManager

__all__ = ["RateLimiterManager"]

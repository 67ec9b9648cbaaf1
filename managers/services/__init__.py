"""The ``services`` manager (``ctx.services``): declared upstreams through one guarded
client each (``client.py``), with the address rules and the breaker in ``rules.py``.
"""

from managers.services.manager import ServicesManager

__all__ = ["ServicesManager"]

"""The ``realtime`` manager (``ctx.realtime``): Socket.IO on the port that serves HTTP,
rooms (``rooms.py``) and presence (``presence.py``).
"""

from managers.realtime.manager import WebSocketManager

__all__ = ["WebSocketManager"]

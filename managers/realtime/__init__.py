"""The ``realtime`` manager (``ctx.realtime``): rooms and pushes (``manager.py``), the
Socket.IO transport on the port that serves HTTP (``transport.py``), rooms (``rooms.py``)
and presence (``presence.py``).
"""

from managers.realtime.manager import WebSocketManager

__all__ = ["WebSocketManager"]

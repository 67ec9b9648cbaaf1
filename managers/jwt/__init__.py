"""The ``jwt`` manager: access and refresh tokens, their keys (``keys.py``) and
revocations.
"""

from managers.jwt.manager import JWTManager

__all__ = ["JWTManager"]

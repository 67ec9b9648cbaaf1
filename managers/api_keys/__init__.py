"""The ``api_keys`` manager: API keys (HMAC of their secret), and ``python app.py keys``
(``commands.py``).
"""

from managers.api_keys.manager import ApiKeyManager

__all__ = ["ApiKeyManager"]

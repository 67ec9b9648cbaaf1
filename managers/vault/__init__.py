"""The ``vault`` manager (``ctx.secrets``): Vault KV v2 through hvac (``client.py``), and
``vault://`` references in the config.
"""

from managers.vault.manager import VaultManager

__all__ = ["VaultManager"]

"""The ``modules`` manager: discovers, loads (``loading.py``) and initializes the modules
in dependency order (``ctx.modules``).
"""

from managers.modules.manager import ModuleManager

__all__ = ["ModuleManager"]

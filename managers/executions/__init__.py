"""The ``executions`` manager: records of background actions (``store.py``), their secret
params sealed (``sealing.py``), and the embedded runner (``runner.py``)."""

from managers.executions.manager import ExecutionsManager

__all__ = ["ExecutionsManager"]

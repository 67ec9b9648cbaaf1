"""The call chain, built once at boot: its order (``chain``), the built-in steps and
their rules (identify, authorize, validate, rate limit, idempotency, the gate, run, audit),
and ``build_pipeline``, which fills them from the app's capabilities.
"""

"""The runtime: the ``Manager`` contract (settings, capabilities, facades, middleware,
commands, routes, mounts), the ``AppManager`` that boots managers in order, and the
``config`` manager.
"""

"""The bottom layer: what every other layer may name and that imports nothing else of
core — the error tree, logging, YAML and JSON input, retry, durations, the client's IP, and
the small shared types and Protocols (``Health``, ``KeyValueStore``, ``HookBus``,
``Instruments``).
"""

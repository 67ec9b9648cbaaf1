"""The transports and the edge: the ASGI app and the server that runs it, the action
endpoint, the Flask app and its routes, OpenAPI and the docs page, the CLI, the dev reload
and the test harness. They translate requests into ``CallRequest`` and answers back, and
nothing below imports them.
"""

"""What handlers see and transports hand in: ``Context`` and the facades' Protocols,
``CallRequest`` / ``CallResult`` / ``WithMeta``, documents, the cache, services, state
machines, rate-limit types, and the module contract (``BaseModule``). A lower layer that
must name something higher does it through a Protocol here.
"""

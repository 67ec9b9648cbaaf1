"""Configuration: the settings' declarations, the chain of sources that resolves them
(secret files, Vault, environment, YAML, defaults), what production refuses, and the
development secrets generated once into ``var/dev-secrets/``.
"""

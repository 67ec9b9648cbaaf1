"""Actions: their declarations and meta-schema, params and their validators, the
code-free types (database, http) and their templates.
"""

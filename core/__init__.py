"""Switchboard's kernel: contracts, config, pipeline and HTTP glue."""

__version__ = "0.1.0"

"""hierarcaps: build HierarCaps-style caption-hierarchy datasets and benchmark RE alignment."""

__version__ = "0.1.0"

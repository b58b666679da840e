"""hierarcaps: build HierarCaps-style caption-hierarchy datasets and benchmark RE alignment."""

__version__ = "0.1.0"
N_TIERS = 4
TIER_SEP = " => "

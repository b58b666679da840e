"""Model resolution: tiny offline models for tests (``tiny/...`` ids), anything else unchanged."""

from .tiny import (
    NLI_ID2LABEL,
    T5_CHAIN_SEP,
    T5_GENERALIZE,
    T5_GENERALIZE_TARGET,
    T5_SPECIFY,
    TINY_IDS,
    build_tiny,
    resolve_model,
    weights_hash,
)

__all__ = [
    "NLI_ID2LABEL",
    "T5_CHAIN_SEP",
    "T5_GENERALIZE",
    "T5_GENERALIZE_TARGET",
    "T5_SPECIFY",
    "TINY_IDS",
    "build_tiny",
    "resolve_model",
    "weights_hash",
]

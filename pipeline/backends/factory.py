"""Build the configured text generator: the engine in this process, or in its own."""

from __future__ import annotations

from .generation import GeneratorConfig, TextGenerator, engine_class
from .subprocess_engine import SubprocessGenerator


def make_generator(cfg: GeneratorConfig) -> TextGenerator:
    """``cfg.engine`` on ``cfg.model``; ``cfg.subprocess=True`` runs the engine in its own process."""
    if not cfg.model:
        raise ValueError("GeneratorConfig.model (id or path) is required")
    cls = engine_class(cfg.engine)   # unknown engine: a clear error before any process starts
    return SubprocessGenerator(cfg) if cfg.subprocess else cls(cfg)

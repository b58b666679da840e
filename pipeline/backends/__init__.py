"""Model engines behind small interfaces; a stage never knows which engine runs it.

- :mod:`.generation`: ``TextGenerator`` (``make_generator("transformers"|"vllm", model, cfg)``)
- :mod:`.nli`: ``NliScorer`` (``score(premises, hypotheses) -> [N, 3]`` entail/neutral/contra)
- :mod:`.common`: device/dtype helpers, length buckets, ``run_in_subprocess``

Heavy imports (torch, transformers, vllm) happen when an engine is built, not on import.
"""

from .generation import (
    GeneratorConfig,
    GenRequest,
    SamplingConfig,
    SubprocessGenerator,
    TextGenerator,
    TransformersGenerator,
    make_generator,
)
from .nli import NLI_COLUMNS, NliConfig, NliScorer, resolve_label_indices

__all__ = [
    "GenRequest",
    "GeneratorConfig",
    "NLI_COLUMNS",
    "NliConfig",
    "NliScorer",
    "SamplingConfig",
    "SubprocessGenerator",
    "TextGenerator",
    "TransformersGenerator",
    "make_generator",
    "resolve_label_indices",
]

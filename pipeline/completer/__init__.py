"""The completer H: a fine-tuned seq2seq model (Flan-T5) that walks a chain in both directions.

- :mod:`.format`: the two directions' input / target text (:class:`PairFormat`), training pairs
- :mod:`.train`: fine-tuning (:func:`train_completer`), resumable from checkpoints
- :mod:`.engine`: batched generation with a trained H (:class:`Completer`)

The judge of what H writes lives in :mod:`pipeline.judge`; chain rules in :mod:`pipeline.chain`.
"""

from .engine import Completer, GenConfig
from .format import PairFormat, make_training_pairs
from .train import TrainConfig, train_completer

__all__ = ["Completer", "GenConfig", "PairFormat", "TrainConfig", "make_training_pairs", "train_completer"]

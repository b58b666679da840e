"""Imported once by the stage forkserver (:mod:`pipeline.startup`): the libraries every model stage
loads, so a forked stage process finds them in memory. Imports only: nothing here may start a
worker pool or touch a device before the fork. A library that is not installed is skipped."""

import importlib
import os

# a library that asks whether CUDA is available asks NVML, not the CUDA runtime, which would not
# survive the fork (the stage process takes the parent's environment over, so this stays here)
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"

for _name in ("pyarrow.parquet", "torch", "transformers", "pipeline.execute",
              "pipeline.registry", "pipeline.backends.transformers_engine", "pipeline.backends.nli",
              "pipeline.completer"):
    try:
        importlib.import_module(_name)
    except Exception:  # an optional backend missing or broken: the stage imports (and reports) it itself
        pass

try:   # transformers resolves these lazily; touching them imports the model code and generation
    import transformers as _t

    for _cls in ("AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSeq2SeqLM",
                 "AutoModelForSequenceClassification", "LlamaForCausalLM", "T5ForConditionalGeneration"):
        getattr(_t, _cls)
except Exception:
    pass

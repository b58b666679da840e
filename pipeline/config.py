"""Typed pipeline configuration, YAML-loadable, validated with clear errors.

Every construction choice the paper leaves open (prompts, thresholds, sizes, sample counts,
seeds) is a field here. Presets live in pipeline/presets/<name>.yaml; a user file or
``--set section.field=value`` overrides apply on top.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .align.config import AlignConfig

PRESETS_DIR = Path(__file__).parent / "presets"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    """A configuration problem, with the file and field that caused it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RunSection(Section):
    root: Path = Path("artifacts")        # output root; runs go to <root>/runs/<run_id>
    seed: int = 0
    model_cache: Path | None = None       # where tiny models are built (default ~/.cache/hierarcaps)


class GeneratorModel(Section):
    engine: Literal["transformers", "vllm"] = "transformers"
    model: str = "tiny/llama-chat"
    revision: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    batch_size: int = Field(32, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    max_model_len: int | None = None
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)   # vLLM (on CPU: share of RAM for the KV cache)
    engine_args: dict[str, Any] = {}      # vLLM: more vllm.LLM keyword arguments
    static_cache: bool = False
    compile: bool = False


class NliModel(Section):
    model: str = "tiny/nli"
    revision: str | None = None
    backend: Literal["transformers", "cross-encoder"] = "transformers"
    batch_size: int = Field(64, ge=1)
    max_length: int = Field(256, ge=8)
    device: str = "auto"
    dtype: str = "auto"
    label_map: dict[str, int] | None = None


class CompleterModel(Section):
    model: str = "tiny/t5"                # base checkpoint that distill fine-tunes into H
    revision: str | None = None


class ModelsSection(Section):
    generator: GeneratorModel = GeneratorModel()
    nli: NliModel = NliModel()
    completer: CompleterModel = CompleterModel()


class SourceConfig(Section):
    name: str
    path: Path
    format: Literal["auto", "cc_tsv", "coco_json", "hierarcaps_csv", "csv", "jsonl", "parquet"] = "auto"
    split: str = "train"
    columns: dict[str, str] = {}          # generic formats: {"text": "caption", "image_url": "url", "id": "id"}
    limit: int | None = Field(None, ge=1)


class IngestSection(Section):
    sources: list[SourceConfig] = []
    unit_rows: int = Field(50_000, ge=1)  # input rows per committed shard
    min_chars: int = Field(3, ge=1)
    max_chars: int = Field(1000, ge=10)   # longer captions are rejected, not truncated
    dedup: Literal["normalized", "exact", "none"] = "normalized"
    limit: int | None = Field(None, ge=1)  # cap on rows read from each source (the flow's `limit`)
    clean_chains: bool = False            # given chains (HierarCaps CSVs) are curated: kept verbatim


class SamplingSection(Section):
    n: int = Field(1, ge=1)
    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(64, ge=1)
    stop: list[str] = []
    structured: bool = False              # vLLM: constrain output to the prompt template's `regex`


class SeedSection(Section):
    strategy: Literal["tier", "chain"] = "chain"
    prompt_tier: str = "seed_tier"
    prompt_chain: str = "seed_chain"
    n_exemplars: int = Field(4, ge=0)
    max_captions: int | None = Field(200, ge=1)   # captions seeded by the LLM (from train split)
    splits: list[str] = ["train"]
    unit_rows: int = Field(256, ge=1)
    max_words: list[int] = [3, 8, 16]
    sampling: SamplingSection = SamplingSection()


class NliFilterSection(Section):
    entail_threshold: float = Field(0.5, ge=0, le=1)
    transitive: bool = False              # also judge non-adjacent pairs
    unit_rows: int = Field(1024, ge=1)


class AugmentSection(Section):
    prompt: str = "augment"
    k: int = Field(4, ge=1)               # demonstrations per prompt
    max_captions: int | None = Field(200, ge=1)
    splits: list[str] = ["train"]
    unit_rows: int = Field(256, ge=1)
    sampling: SamplingSection = SamplingSection()


class DistillSection(Section):
    include_exemplars: bool = False       # also learn from prompts/exemplars.jsonl (hand-written chains)
    generalize_prefix: str = "generalize: "
    specify_prefix: str = "specify: "
    lr: float = Field(3e-4, gt=0)
    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = None
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    bf16: Literal["auto", "on", "off"] = "auto"
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    save_every_steps: int = Field(200, ge=1)
    max_source_len: int = 96
    max_target_len: int = 64


class BulkSection(Section):
    splits: dict[str, str] = {"train": "train", "test": "test"}   # caption split -> output split
    max_captions: int | None = None
    unit_rows: int = Field(2048, ge=1)
    batch_size: int = Field(64, ge=1)
    num_beams: int = Field(1, ge=1)
    max_new_tokens: int = Field(48, ge=1)


class NegativesSection(Section):
    tries: int = Field(4, ge=1)           # candidate samples per tier before giving up
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    entail_threshold: float = Field(0.5, ge=0, le=1)
    contradict_threshold: float = Field(0.5, ge=0, le=1)
    unit_rows: int = Field(1024, ge=1)
    batch_size: int = Field(64, ge=1)


class ExportSection(Section):
    name: str = "hierarcaps"
    train_splits: list[str] = ["train"]
    test_splits: list[str] = ["test"]
    require_negatives_for_train: bool = True


class AlignSection(AlignConfig):
    """RE / cone / CLEAR GLASS fine-tuning (every AlignConfig field) plus where the chains come from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    chains: str = "export"                 # "export" (this run's dataset) or a HierarCaps CSV / Parquet path


class BenchSection(Section):
    model: str | None = None               # default: align.model
    kind: Literal["clip", "sentence-transformers"] | None = None   # default: align.encoder_kind
    test_csv: Path | None = None           # the curated 1K test set (hierarcaps_test.csv)
    images_dir: Path | None = None         # its images (CLIP only; text encoders get d_corr only)
    finetuned: str = "auto"                # "auto": this run's align output when it exists; "none"; or a path
    device: str = "cpu"


class PipelineConfig(Section):
    preset: str | None = None
    run: RunSection = RunSection()
    models: ModelsSection = ModelsSection()
    ingest: IngestSection = IngestSection()
    seed: SeedSection = SeedSection()
    nli_filter: NliFilterSection = NliFilterSection()
    augment: AugmentSection = AugmentSection()
    distill: DistillSection = DistillSection()
    bulk: BulkSection = BulkSection()
    negatives: NegativesSection = NegativesSection()
    export: ExportSection = ExportSection()
    align: AlignSection = AlignSection()
    bench: BenchSection = BenchSection()

    def section(self, name: str) -> dict:
        return getattr(self, name).model_dump(mode="json") if hasattr(self, name) else {}


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.field=value")
    key, raw = item.split("=", 1)
    value: Any = yaml.safe_load(raw) if raw != "" else ""
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: list[str] | dict | None = None, base: dict | None = None) -> PipelineConfig:
    """Defaults < preset < base (a run's saved config) < file < overrides."""
    data: dict = {}
    origin = "defaults"
    if preset:
        ppath = PRESETS_DIR / f"{preset}.yaml"
        if not ppath.exists():
            raise ConfigError(f"unknown preset '{preset}'; choose one of {list_presets()}")
        data = _read_yaml(ppath)
        data["preset"] = preset
        origin = str(ppath)
    if base:
        data = _deep_merge(data, base)
        origin = "saved run config"
    if path:
        data = _deep_merge(data, _read_yaml(Path(path)))
        origin = str(path)
    if isinstance(overrides, dict):
        data = _deep_merge(data, overrides)
    else:
        for item in overrides or []:
            data = _deep_merge(data, parse_override(item))
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"invalid config ({origin}):"]
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  {loc}: {err['msg']}")
        raise ConfigError("\n".join(lines)) from None

"""Typed pipeline configuration, YAML-loadable, validated with clear errors.

Every construction choice the paper leaves open (prompts, thresholds, sizes, sample counts,
seeds) is a field here. The sections *are* the configs of the code that reads them: the engine
configs (``models.generator`` is a :class:`GeneratorConfig`, ``models.nli`` an :class:`NliConfig`),
the chain rules, the judge, H's training and generation settings. A stage is constructed with
the objects it declares (``Stage.params``), so it cannot read a field its cache key omits.

Presets live in pipeline/presets/<name>.yaml; a user file or ``--set section.field=value``
overrides apply on top. Renamed keys are still accepted, with a deprecation message, for one release.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .align.config import AlignConfig
from .backends.generation import GeneratorConfig, SamplingConfig
from .backends.nli import NliConfig
from .chain import ChainRules
from .completer.engine import GenConfig
from .completer.format import PairFormat
from .completer.train import TrainConfig
from .executors.config import RayConfig
from .judge import JudgeConfig
from .testset import TestSection

PRESETS_DIR = Path(__file__).parent / "presets"
REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("hierarcaps")


class ConfigError(ValueError):
    """A configuration problem, with the file and field that caused it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class RunSection(Section):
    root: Path = Path("artifacts")        # output root; runs go to <root>/runs/<run_id>
    random_seed: int = 0                  # every sample, shuffle and split of the run derives from it
    model_cache: Path | None = None       # where tiny models are built (default ~/.cache/hierarcaps)
    executor: Literal["local", "ray"] = "local"   # where model stages' units run (not in any key or the run id)
    ray: RayConfig = RayConfig()          # executor "ray": the cluster and each stage's actor pool


class ModelRef(Section):
    model: str
    revision: str | None = None


class ModelsSection(Section):
    generator: GeneratorConfig = GeneratorConfig(model="tiny/llama-chat")
    nli: NliConfig = NliConfig(model="tiny/nli")
    completer_base: ModelRef = ModelRef(model="tiny/t5")   # the checkpoint distill fine-tunes into H


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
    dedup_scope: Literal["image", "global"] = "image"   # the same caption on two images: two items, or one
    limit: int | None = Field(None, ge=1)  # cap on rows read from each source (the flow's `limit`)
    clean_chains: bool = False            # given chains (HierarCaps CSVs) are curated: kept verbatim


class StageSampling(SamplingConfig):
    """A generating stage's sampling: the engine's settings plus ``structured`` (vLLM holds the
    output to ``regex``, or to the prompt template's regex when ``regex`` is unset). The stage adds
    the template's stop strings, and ``random_seed`` defaults to the run's."""

    structured: bool = False


class SeedSection(Section):
    strategy: Literal["tier", "chain"] = "chain"
    prompt_tier: str = "seed_tier"
    prompt_chain: str = "seed_chain"
    n_exemplars: int = Field(4, ge=0)
    max_captions: int | None = Field(200, ge=1)   # captions seeded by the LLM (from train split)
    splits: list[str] = ["train"]
    unit_rows: int = Field(256, ge=1)
    sampling: StageSampling = StageSampling()


class NliFilterSection(JudgeConfig):
    model_config = ConfigDict(extra="forbid")
    unit_rows: int = Field(1024, ge=1)


class AugmentSection(Section):
    prompt: str = "augment"
    k: int = Field(4, ge=1)               # demonstrations per prompt
    max_captions: int | None = Field(200, ge=1)
    splits: list[str] = ["train"]
    unit_rows: int = Field(256, ge=1)
    sampling: StageSampling = StageSampling()


class DistillSection(TrainConfig, PairFormat):
    """H's training (every TrainConfig field) and input format (PairFormat), plus its data."""

    model_config = ConfigDict(extra="forbid")
    include_exemplars: bool = False       # also learn from prompts/exemplars.jsonl (hand-written chains)
    heldout_fraction: float = Field(0.02, ge=0, lt=1)   # chains held out for the eval loss and the check of H
    heldout_max: int = Field(200, ge=1)


class BulkSection(GenConfig):
    """H over the captions: how it generates (every GenConfig field) and over what."""

    model_config = ConfigDict(extra="forbid")
    splits: dict[str, str] = {"train": "train", "test": "test"}   # caption split -> output split
    max_captions: int | None = None
    unit_rows: int = Field(2048, ge=1)


class NegativesSection(GenConfig):
    """H samples candidates (every GenConfig field; sampling on), the judge keeps true contradictions."""

    model_config = ConfigDict(extra="forbid")
    do_sample: bool = True
    temperature: float = Field(1.0, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    tries: int = Field(4, ge=1)           # candidate samples per tier before giving up
    select: Literal["best", "first"] = "best"   # best: max min(P(entail tier k-1), P(contradict tier k))
    entail_threshold: float = Field(0.5, ge=0, le=1)
    contradict_threshold: float = Field(0.5, ge=0, le=1)
    unit_rows: int = Field(1024, ge=1)


class ExportSection(Section):
    name: str = Field("hierarcaps", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")   # file names: stays in export/
    train_splits: list[str] = ["train"]
    test_splits: list[str] = ["test"]
    require_negatives_for_train: bool = True
    unit_rows: int = Field(20_000, ge=1)   # upstream rows per committed export unit (what a resume keeps)


class AlignSection(AlignConfig):
    """RE / cone / CLEAR GLASS fine-tuning (every AlignConfig field) plus where the chains come from."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    chains: str = "export"                 # "export" (this run's dataset) or a HierarCaps CSV / Parquet path
    exclude_bench_test: bool = True        # exclude_test_csv unset: leave out bench.test_csv's captions and images


class BenchSection(Section):
    model: str | None = None               # default: align.model
    kind: Literal["clip", "sentence-transformers"] | None = None   # default: align.encoder_kind
    test_csv: Path | None = None           # the curated 1K test set (hierarcaps_test.csv)
    images_dir: Path | None = None         # its images (CLIP only; text encoders get d_corr only)
    finetuned: str = "auto"                # "auto": this run's align output when it exists; "none"; or a path
    device: str = "cpu"
    threads: int | None = None             # torch CPU threads (None: torch's default)
    allow_test_overlap: bool = False       # score a fine-tuned model trained on test captions/images (recorded)


# old key -> new key (one release of grace)
RENAMED = {
    "run.seed": "run.random_seed",
    "models.completer": "models.completer_base",
    "seed.max_words": "rules.max_words",
    "distill.eval_fraction": "distill.heldout_fraction",
    "align.n_heldout_images": "align.n_val_images",
}


def _pop(d: dict, path: list[str]):
    for k in path[:-1]:
        d = d.get(k)
        if not isinstance(d, dict):
            return None, False
    return (d.pop(path[-1]), True) if path[-1] in d else (None, False)


def migrate(data: dict) -> dict:
    """Move renamed keys to their new place, saying so; the new key wins when both are given."""
    data = _deep_merge({}, data)
    for old, new in RENAMED.items():
        value, found = _pop(data, old.split("."))
        if not found:
            continue
        log.warning("config: '%s' is deprecated, use '%s' (the old name goes in the next release)", old, new)
        *parents, leaf = new.split(".")
        d = data
        for k in parents:
            d = d.setdefault(k, {})
        d.setdefault(leaf, value)
    return data


class PipelineConfig(Section):
    preset: str | None = None
    run: RunSection = RunSection()
    models: ModelsSection = ModelsSection()
    rules: ChainRules = ChainRules()
    ingest: IngestSection = IngestSection()
    seed: SeedSection = SeedSection()
    nli_filter: NliFilterSection = NliFilterSection()
    augment: AugmentSection = AugmentSection()
    distill: DistillSection = DistillSection()
    bulk: BulkSection = BulkSection()
    negatives: NegativesSection = NegativesSection()
    test: TestSection = TestSection()
    export: ExportSection = ExportSection()
    align: AlignSection = AlignSection()
    bench: BenchSection = BenchSection()

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        return migrate(data) if isinstance(data, dict) else data

    def at(self, path: str) -> Any:
        """The object at a dotted path (``models.nli``, ``run.random_seed``)."""
        obj: Any = self
        for part in path.split("."):
            if not hasattr(obj, part):
                raise KeyError(f"config has no '{path}'")
            obj = getattr(obj, part)
        return obj


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else \
            (_deep_merge({}, v) if isinstance(v, dict) else v)
    return out


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a YAML config file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; value parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: must look like section.field=value")
    key, raw = item.split("=", 1)
    if not key.strip() or any(not p for p in key.strip().split(".")):
        raise ConfigError(f"--set {item!r}: '{key}' is not a dotted config field")
    try:
        value: Any = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from None
    for part in reversed(key.strip().split(".")):
        value = {part: value}
    return value


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def _has(d: dict, loc: tuple) -> bool:
    for k in loc:
        if not isinstance(d, dict) or k not in d:
            return False
        d = d[k]
    return True


def load_config(preset: str | None = None, path: str | Path | None = None,
                overrides: list[str] | dict | None = None, base: dict | None = None) -> PipelineConfig:
    """Defaults < preset < base (a run's saved config) < file < overrides. An invalid field is
    reported with the layer that set it (the ``--set`` argument, the file, the preset)."""
    layers: list[tuple[str, dict]] = []
    if preset:
        ppath = PRESETS_DIR / f"{preset}.yaml"
        if not ppath.exists():
            raise ConfigError(f"unknown preset '{preset}'; choose one of {list_presets()}")
        layers.append((str(ppath), {**_read_yaml(ppath), "preset": preset}))
    if base:
        layers.append(("saved run config", base))
    if path:
        layers.append((str(path), _read_yaml(Path(path))))
    if isinstance(overrides, dict):
        layers.append(("overrides", overrides))
    else:
        layers += [(f"--set {item!r}", parse_override(item)) for item in overrides or []]
    layers = [(origin, migrate(d)) for origin, d in layers]
    data: dict = {}
    for _, d in layers:
        data = _deep_merge(data, d)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = tuple(str(x) for x in err["loc"])
            origin = next((o for o, d in reversed(layers) if _has(d, loc) or len(loc) > 1 and _has(d, loc[:-1])),
                          "defaults")
            lines.append(f"{origin}: {'.'.join(loc)}: {err['msg']}")
        raise ConfigError("invalid config: " + lines[0] if len(lines) == 1 else
                          "invalid config:\n  " + "\n  ".join(lines)) from None

"""What the model stages share: engines from config, unit iteration, chain rows, key material."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Callable, Iterator

from ..config import PipelineConfig
from ..hashing import digest, file_digest
from ..schemas import CHAINS, REJECTS, conform
from ..stage import StageContext, StageError

if TYPE_CHECKING:
    from ..prompts import PromptTemplate


def model_path(model_id: str, config: PipelineConfig) -> str:
    """Tiny ids build offline on demand; anything else goes to from_pretrained unchanged."""
    from ..models.tiny import resolve_model

    return resolve_model(model_id, config.run.model_cache)


def model_key(config: PipelineConfig, *which: str) -> dict:
    m = config.models
    return {"models": {w: {"model": getattr(m, w).model, "revision": getattr(m, w).revision} for w in which}}


def prompt_key(*prompt_ids: str) -> dict:
    from ..prompts import load_prompt, prompt_files

    files = {p.name: file_digest(p) for p in prompt_files() if p.suffix == ".jsonl"}
    return {"prompts": {pid: load_prompt(pid).hash for pid in prompt_ids}, "exemplars": files}


def make_generator(config: PipelineConfig, sampling, prompt: PromptTemplate | None = None) -> "object":
    """The configured engine. The prompt template's ``stop`` strings add to the config's, so
    generation ends where the answer format ends instead of running to max_tokens; with
    ``sampling.structured`` its ``regex`` constrains the output (vLLM)."""
    from ..backends.generation import GeneratorConfig, SamplingConfig, make_generator as _make

    g = config.models.generator
    stop = prompt.stop if prompt is not None else ()
    regex = prompt.regex if prompt is not None and sampling.structured else None
    if sampling.structured and not regex:
        raise StageError(f"sampling.structured is set but prompt template "
                         f"{getattr(prompt, 'path', None) or prompt!r} has no 'regex'")
    path = model_path(g.model, config)
    cfg = GeneratorConfig(model=path, revision=g.revision, dtype=g.dtype, device=g.device, batch_size=g.batch_size,
                          tensor_parallel_size=g.tensor_parallel_size, max_model_len=g.max_model_len,
                          gpu_memory_utilization=g.gpu_memory_utilization, static_cache=g.static_cache,
                          compile=g.compile, engine_args=g.engine_args,
                          sampling=SamplingConfig(n=sampling.n, temperature=sampling.temperature,
                                                  top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                                                  stop=list(dict.fromkeys([*sampling.stop, *stop])),
                                                  seed=config.run.seed, regex=regex))
    return _make(g.engine, path, cfg)


def make_scorer(config: PipelineConfig):
    from ..backends.nli import NliConfig, NliScorer

    n = config.models.nli
    return NliScorer(NliConfig(model=model_path(n.model, config), revision=n.revision, backend=n.backend,
                               batch_size=n.batch_size, max_length=n.max_length, device=n.device, dtype=n.dtype,
                               label_map=n.label_map))


def sample_rows(rows: list[dict], n: int | None, seed: int, salt: str) -> list[dict]:
    """A deterministic sample (order by a seeded hash of the id), stable across reruns."""
    ordered = sorted(rows, key=lambda r: digest([seed, salt, r["caption_id"]]))
    return ordered[:n] if n else ordered


def units(rows: list, size: int) -> Iterator[tuple[int, list]]:
    for i in range(0, len(rows), size):
        yield i // size, rows[i:i + size]


def run_units(ctx: StageContext, rows: list, size: int,
              fn: Callable[[int, list], tuple[list[dict], list[dict]]], note: str = "") -> None:
    """Process rows in fixed units, skipping units already committed (resume)."""
    done = ctx.done_units()
    total = len(rows)
    if not rows and 0 not in done:  # an empty result is still a result downstream stages can read
        ctx.commit(0, CHAINS.empty_table(), REJECTS.empty_table(), rows_in=0)
    for index, chunk in units(rows, size):
        if index in done:
            continue
        out, rejects = fn(index, chunk)
        ctx.commit(index, conform(out, CHAINS), conform(rejects, REJECTS), rows_in=len(chunk))
        ctx.progress(min(total, (index + 1) * size), total, note, force=True)
    ctx.progress(total, total, "done", force=True)


def reject(stage: str, source: str, key: str, reason: str, raw: str = "", row: int = -1) -> dict:
    return dict(stage=stage, source=source, row=row, key=key, reason=reason, raw=(raw or "")[:2000])


def chain_id(caption_id: str, positive: list[str]) -> str:
    return digest([caption_id, positive])


def rng_for(seed: int, *salt) -> random.Random:
    return random.Random(digest([seed, *salt]))


def caption_rows(ctx: StageContext, splits: list[str]) -> list[dict]:
    """Captions of the given splits that do not already carry a chain."""
    t = ctx.upstream("ingest").read()
    return [r for r in t.to_pylist() if r["split"] in splits and not r["positive"]]


def completer_config(config: PipelineConfig, model: str, **gen):
    """The completer H's config from the distill section (formats, lengths, training)."""
    from ..backends.completer import CompleterConfig, GenConfig, PairFormat

    d = config.distill
    return CompleterConfig(
        model=model, revision=config.models.completer.revision,
        format=PairFormat(generalize_prefix=d.generalize_prefix, specify_prefix=d.specify_prefix),
        max_source_len=d.max_source_len, max_target_len=d.max_target_len, lr=d.lr, epochs=d.epochs,
        max_steps=d.max_steps, batch_size=d.batch_size, grad_accum=d.grad_accum, warmup=d.warmup_ratio,
        weight_decay=d.weight_decay, lora=d.lora, lora_r=d.lora_r, lora_alpha=d.lora_alpha,
        lora_dropout=d.lora_dropout, bf16={"auto": "auto", "on": True, "off": False}[d.bf16],
        seed=config.run.seed, eval_fraction=d.eval_fraction, save_every_steps=d.save_every_steps,
        gen=GenConfig(**gen))


def trained_completer(ctx: StageContext, **gen):
    """Load H as distill saved it in this run."""
    from ..backends.completer import Completer

    path = ctx.upstream("distill").path / "h" / "model"
    return Completer(path, completer_config(ctx.config, str(path), **gen))

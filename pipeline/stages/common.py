"""What the stages share: engines from their configs, key material, unit iteration, sampling."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import pyarrow.compute as pc

from ..hashing import digest, file_digest
from ..schemas import CHAINS, REJECTS
from ..stage import StageContext, StageError
from .units import CAPTION_COLUMNS, Units, all_of, has_no_chain, is_in, stream_units

if TYPE_CHECKING:
    from ..backends.generation import GeneratorConfig, SamplingConfig
    from ..backends.nli import NliConfig
    from ..completer import Completer, GenConfig
    from ..config import StageSampling
    from ..prompts import PromptTemplate


def model_revision(model_id: str, revision: str | None = None) -> str | None:
    """What identifies a model's weights beyond its id: the revision asked for; for a tiny id its
    build key (a hash of what it is built from); for a local folder a digest of its file names,
    sizes and small config files."""
    from ..models.tiny import TINY_IDS, build_key

    if revision:
        return revision
    if model_id in TINY_IDS:
        return build_key(model_id)
    p = Path(model_id)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        return digest([[str(f.relative_to(p)), f.stat().st_size,
                        file_digest(f) if f.suffix == ".json" and f.stat().st_size < 1 << 20 else None]
                       for f in files])
    return None


def model_key(**models) -> dict:
    """``{"models": {name: {model, revision}}}`` for configs with ``model`` / ``revision`` fields."""
    return {"models": {name: {"model": m.model, "revision": model_revision(m.model, getattr(m, "revision", None))}
                       for name, m in models.items()}}


def prompt_key(*prompt_ids: str) -> dict:
    from ..prompts import load_prompt, prompt_files

    files = {p.name: file_digest(p) for p in prompt_files() if p.suffix == ".jsonl"}
    return {"prompts": {pid: load_prompt(pid).hash for pid in prompt_ids}, "exemplars": files}


# what a subprocess engine's child reports when its model will not load (the loaders' OSErrors)
CHILD_LOAD_ERRORS = ("OSError", "FileNotFoundError", "LocalEntryNotFoundError", "RepositoryNotFoundError")


def refuse_missing(field: str, model_id: str) -> None:
    """Refuse, before anything loads, a model that cannot exist: an unknown tiny id, or a local path
    (absolute, ``./``, ``~``, or with more than one ``/``, which no hub id has) that is missing or
    a file, or (offline) a hub id with no snapshot in the hub cache. What else cannot load (a folder
    without config.json, a revision not cached) surfaces as the loader's OSError, which
    :func:`_load` words the same way."""
    from ..models.tiny import TINY_IDS

    if model_id.startswith("tiny/") and model_id not in TINY_IDS:
        raise StageError(f"{field}: unknown tiny model {model_id!r}; tiny models are {sorted(TINY_IDS)}")
    p = Path(model_id).expanduser()
    local = model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1
    if local and not p.exists():
        raise StageError(f"{field}: {model_id!r}: no such model folder")
    if p.is_file() and p.suffix != ".gguf":
        raise StageError(f"{field}: {model_id!r} is a file, not a model folder")
    if not local and not model_id.startswith("tiny/") and not p.exists() and _offline_and_uncached(model_id):
        raise StageError(f"{field}: {model_id!r} is not in the local model cache and the hub is offline "
                         "(HF_HUB_OFFLINE=1); download it first or name a local folder")


def _offline_and_uncached(repo_id: str) -> bool:
    """A hub id that no offline load can find: no snapshot of it, at any revision, in the hub cache."""
    from huggingface_hub import constants

    if not (constants.HF_HUB_OFFLINE or os.environ.get("TRANSFORMERS_OFFLINE", "").lower() in ("1", "true", "yes")):
        return False
    return not (Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "snapshots").is_dir()


def _load(field: str, model_id: str, build: Callable):
    """``build()``, with a model that will not load (not found offline, unreadable) as a StageError
    naming the config field and the id; the child of a subprocess engine reports it as text."""
    from ..backends.common import SubprocessError

    try:
        return build()
    except (OSError, SubprocessError) as e:
        if isinstance(e, SubprocessError) and not str(e).startswith(CHILD_LOAD_ERRORS):
            raise
        why = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
        hint = " (HF_HUB_OFFLINE is set: only local folders and models already in the cache load)" \
            if offline and not Path(model_id).exists() else ""
        raise StageError(f"{field}: cannot load {model_id!r}: {why}{hint}") from e


def open_generator(ctx: StageContext, cfg: GeneratorConfig):
    from ..backends.factory import make_generator

    field = "models.generator.model"           # every stage that opens a generator reads it there
    if cfg.engine == "openai":                 # the model is the server's name for it: nothing loads here
        return make_generator(cfg)
    refuse_missing(field, cfg.model)
    return _load(field, cfg.model, lambda: make_generator(cfg.model_copy(update={"model": ctx.model_path(cfg.model)})))


def open_scorer(ctx: StageContext, cfg: NliConfig):
    from ..backends.nli import NliScorer

    field = "models.nli.model"                 # every stage that opens a scorer reads it there
    refuse_missing(field, cfg.model)
    return _load(field, cfg.model, lambda: NliScorer(cfg.model_copy(update={"model": ctx.model_path(cfg.model)})))


def base_model(ctx: StageContext, model_id: str) -> str:
    """The checkpoint distill fine-tunes, refused early when it cannot exist."""
    refuse_missing("models.completer_base.model", model_id)
    return ctx.model_path(model_id)


def open_h(ctx: StageContext, gen: GenConfig) -> Completer:
    """H as distill saved it in this run (its input format travels with it)."""
    from ..completer import Completer

    path = ctx.upstream("distill").path / "h" / "model"
    if not (path / "config.json").is_file():
        raise StageError(f"distill's H model {path} is missing or incomplete; rerun distill with --force")
    return _load(f"H ({path})", str(path), lambda: Completer(path, gen))


def call_sampling(sampling: StageSampling, prompt: PromptTemplate, random_seed: int) -> SamplingConfig:
    """The engine's sampling for a stage's calls: the template's ``stop`` strings join the config's,
    so generation ends where the answer format ends; with ``structured`` the output is held to
    ``regex`` (or the template's); unseeded requests take the run's seed."""
    from ..backends.generation import SamplingConfig

    regex = (sampling.regex or prompt.regex) if sampling.structured else None
    if sampling.structured and not regex:
        raise StageError(f"sampling.structured is set but prompt template {prompt.path or prompt.id!r} has no 'regex'")
    fields = sampling.model_dump(include=set(SamplingConfig.model_fields))
    fields.update(stop=list(dict.fromkeys([*sampling.stop, *prompt.stop])), regex=regex,
                  random_seed=sampling.random_seed if sampling.random_seed is not None else random_seed)
    return SamplingConfig.model_validate(fields)


def request_seed(run_seed: int, caption_id: str, step: int = 0) -> int:
    """A request's sampling seed, hashed: vLLM seeds completion k of an n > 1 request with seed + k,
    so neighbouring seeds would make one request replay another's random stream."""
    return int(digest([run_seed, caption_id, step])[:8], 16) & 0x7FFF_FFFF


def run_units(ctx: StageContext, work: Units, fn: Callable[[int, list], tuple[list[dict], list[dict]]],
              note: str = "") -> None:
    """Process the units, skipping those already committed (resume); only a unit still to do
    becomes Python rows. The run's executor (``run.executor``) processes them, here or on Ray
    actors; this process commits each one it hands back (the single writer)."""
    from ..executors import executor_for

    done = ctx.done_units()
    if not work.total and 0 not in done:  # an empty result is still a result downstream stages can read
        ctx.commit(0, CHAINS.empty_table(), REJECTS.empty_table(), rows_in=0)
    finished = sum(1 for i in done if i * work.size < work.total)
    for unit in executor_for(ctx).map(ctx, ((i, t) for i, t in work if i not in done), fn):
        ctx.commit(unit.index, unit.data, unit.rejects, rows_in=unit.rows_in)
        finished += 1
        ctx.progress(min(work.total, finished * work.size), work.total, note, force=True)
    ctx.progress(work.total, work.total, "done", force=True)


def rng_for(seed: int, *salt) -> random.Random:
    return random.Random(digest([seed, *salt]))


def caption_units(ctx: StageContext, splits: list[str], size: int, n: int | None, seed: int, salt: str,
                  exclude: set[str] = frozenset()) -> Units:
    """Captions of the given splits that do not already carry a chain (nor have an id in
    ``exclude``), a seeded sample of ``n`` of them, as units."""
    where = [is_in("split", splits), has_no_chain]
    if exclude:
        excluded = is_in("caption_id", exclude)
        where.append(lambda b: pc.invert(pc.fill_null(excluded(b), False)))
    return stream_units(ctx.upstream("ingest"), size, all_of(*where), ["split", "positive", "caption_id"],
                        columns=CAPTION_COLUMNS, n=n, seed=seed, salt=salt)

"""Prompt templates and few-shot exemplars.

Templates are YAML files in the repo's ``prompts/`` folder (or an explicit folder), each with
``id``, ``description``, ``system``, ``user`` (Python ``str.format`` fields) and optional ``stop``;
extra keys (``example_format``, ``tier_instructions``...) are kept in ``PromptTemplate.extra``.
A template's ``hash`` is ``sha256(file bytes)[:16]`` and is recorded as provenance.

Few-shot exemplars come from ``prompts/exemplars.jsonl`` (one ``{"positive": [t1..t4],
"negative": [n1..n4]}`` per line); seed prompts use the first N (deterministic), skipping any
exemplar whose caption is the caption being prompted.

Every ``render_*`` helper returns chat messages
``[{"role": "system", "content": ...}, {"role": "user", "content": ...}]``.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from .chain import join_tiers

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
EXEMPLARS_FILE = "exemplars.jsonl"
REQUIRED_FIELDS = ("id", "system", "user")

SEED_TIER_ID = "seed_tier"
SEED_CHAIN_ID = "seed_chain"
AUGMENT_ID = "augment"
DEFAULT_N_EXAMPLES = 3

_DEFAULT_TIER_INSTRUCTIONS = {
    3: "Tier 3 is a short clause.",
    2: "Tier 2 is a short noun phrase.",
    1: "Tier 1 is a one- or two-word category.",
}
_DEFAULT_SEED_TIER_EXAMPLE = "Text: {text}\nTier {target_tier}: {answer}\n\n"
_DEFAULT_SEED_CHAIN_EXAMPLE = "Caption: {caption}\n1. {t1}\n2. {t2}\n3. {t3}\n\n"
_DEFAULT_AUGMENT_DEMO = "Caption: {caption}\nChain: {t1} => {t2} => {t3}\n\n"


class PromptError(ValueError):
    """A template or exemplar file is unusable; the message names the file."""


@dataclass(frozen=True)
class PromptTemplate:
    id: str
    hash: str
    system: str
    user: str
    stop: tuple[str, ...] = ()
    regex: str | None = None  # the answer's format, for structured output (sampling.structured)
    description: str = ""
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def fields(self) -> set[str]:
        """The ``str.format`` field names used by ``system`` and ``user``."""
        out: set[str] = set()
        for text in (self.system, self.user):
            for _, name, _, _ in string.Formatter().parse(text):
                if name:
                    out.add(name.split(".")[0].split("[")[0])
        return out

    def format(self, **values: Any) -> list[dict[str, str]]:
        """Fill the template; a missing field raises ``PromptError`` naming file and field."""
        missing = sorted(self.fields() - set(values))
        if missing:
            raise PromptError(
                f"{self.path or self.id}: prompt {self.id!r} needs field(s) {missing}; "
                f"got {sorted(values)}"
            )
        try:
            system = self.system.format(**values)
            user = self.user.format(**values)
        except (KeyError, IndexError, ValueError) as e:
            raise PromptError(f"{self.path or self.id}: cannot format prompt {self.id!r}: {e!r}") from e
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def _resolve_dir(prompts_dir: str | Path | None) -> Path:
    return Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR


def load_prompt(prompt_id: str, prompts_dir: str | Path | None = None) -> PromptTemplate:
    """Load ``<prompts_dir>/<prompt_id>.yaml`` (default dir: the repo's ``prompts/``).

    ``prompt_id`` may also be a path to a ``.yaml`` file.
    """
    if prompt_id.endswith((".yaml", ".yml")) and Path(prompt_id).is_file():
        path = Path(prompt_id)
    else:
        d = _resolve_dir(prompts_dir)
        path = d / f"{prompt_id}.yaml"
        if not path.is_file() and (d / f"{prompt_id}.yml").is_file():
            path = d / f"{prompt_id}.yml"
    if not path.is_file():
        raise PromptError(f"{path}: prompt template {prompt_id!r} not found")
    data_bytes = path.read_bytes()
    try:
        data = yaml.safe_load(data_bytes.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise PromptError(f"{path}: invalid YAML: {e}") from e
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a mapping with fields {list(REQUIRED_FIELDS)}")
    for key in REQUIRED_FIELDS:
        if key not in data or data[key] is None or (isinstance(data[key], str) and not data[key].strip()):
            raise PromptError(f"{path}: template is missing required field {key!r}")
        if not isinstance(data[key], str):
            raise PromptError(f"{path}: field {key!r} must be a string")
    stop = data.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not all(isinstance(s, str) for s in stop):
        raise PromptError(f"{path}: field 'stop' must be a string or a list of strings")
    regex = data.get("regex")
    if regex is not None:
        try:
            re.compile(regex)
        except (re.error, TypeError) as e:
            raise PromptError(f"{path}: field 'regex' is not a valid regular expression: {e}") from e
    known = set(REQUIRED_FIELDS) | {"description", "stop", "regex"}
    return PromptTemplate(
        id=str(data["id"]),
        hash=hashlib.sha256(data_bytes).hexdigest()[:16],
        system=data["system"],
        user=data["user"],
        stop=tuple(stop),
        regex=regex,
        description=str(data.get("description") or "").strip(),
        path=str(path),
        extra={k: v for k, v in data.items() if k not in known},
    )


def load_exemplars(path: str | Path | None = None) -> list[dict]:
    """Read exemplar chains (``positive``/``negative``, 4 tiers each, general -> specific)."""
    p = Path(path) if path is not None else PROMPTS_DIR / EXEMPLARS_FILE
    if not p.is_file():
        raise PromptError(f"{p}: exemplars file not found")
    out: list[dict] = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptError(f"{p}: line {lineno}: invalid JSON: {e}") from e
            pos = rec.get("positive") if isinstance(rec, dict) else None
            if not (isinstance(pos, list) and len(pos) == 4 and all(isinstance(t, str) and t.strip() for t in pos)):
                raise PromptError(f"{p}: line {lineno}: 'positive' must be a list of 4 non-empty strings")
            neg = rec.get("negative")
            if neg is not None and not (isinstance(neg, list) and len(neg) == 4):
                raise PromptError(f"{p}: line {lineno}: 'negative' must be a list of 4 strings or absent")
            out.append({"positive": list(pos), "negative": list(neg) if neg is not None else None})
    if not out:
        raise PromptError(f"{p}: no exemplars")
    return out


def select_exemplars(exemplars: Sequence[dict], n: int, exclude: str | Iterable[str] | None = None) -> list[dict]:
    """First ``n`` exemplars in file order, skipping those whose caption (tier 4) is excluded."""
    if exclude is None:
        excl: set[str] = set()
    elif isinstance(exclude, str):
        excl = {exclude.strip().lower()}
    else:
        excl = {e.strip().lower() for e in exclude}
    out = []
    for ex in exemplars:
        if len(out) >= n:
            break
        if ex["positive"][3].strip().lower() in excl:
            continue
        out.append(ex)
    return out


def format_chain_numbered(tiers: Sequence[str]) -> str:
    """``1. t1\\n2. t2\\n3. t3``: the completion format of ``seed_chain``."""
    return "\n".join(f"{i}. {t}" for i, t in enumerate(tiers[:3], 1))


def format_chain_arrows(tiers: Sequence[str]) -> str:
    """``t1 => t2 => t3``: the completion format of ``augment``."""
    return join_tiers(tiers[:3])


def _template(template: PromptTemplate | str | None, default_id: str, prompts_dir) -> PromptTemplate:
    if isinstance(template, PromptTemplate):
        return template
    return load_prompt(template or default_id, prompts_dir)


def _exemplars(exemplars: Sequence[dict] | None) -> Sequence[dict]:
    return exemplars if exemplars is not None else load_exemplars()


def render_seed_tier(
    text: str,
    target_tier: int,
    exemplars: Sequence[dict] | None = None,
    n_examples: int = DEFAULT_N_EXAMPLES,
    template: PromptTemplate | str | None = None,
    prompts_dir: str | Path | None = None,
    exclude_caption: str | None = None,
) -> list[dict[str, str]]:
    """One tier-by-tier step: from ``text`` (tier ``target_tier + 1``) ask for tier ``target_tier``.

    Few-shot examples show exemplar tier ``target_tier + 1`` -> tier ``target_tier``.
    """
    if target_tier not in (1, 2, 3):
        raise ValueError(f"target_tier must be 1, 2 or 3, got {target_tier!r}")
    tpl = _template(template, SEED_TIER_ID, prompts_dir)
    instr = dict(_DEFAULT_TIER_INSTRUCTIONS)
    for k, v in (tpl.extra.get("tier_instructions") or {}).items():
        instr[int(k)] = str(v)
    fmt = tpl.extra.get("example_format") or _DEFAULT_SEED_TIER_EXAMPLE
    chosen = select_exemplars(_exemplars(exemplars), n_examples, exclude=exclude_caption or text)
    examples = "".join(
        fmt.format(text=ex["positive"][target_tier], target_tier=target_tier, answer=ex["positive"][target_tier - 1])
        for ex in chosen
    )
    return tpl.format(text=text, target_tier=target_tier, tier_instruction=instr[target_tier], examples=examples)


def render_seed_chain(
    caption: str,
    exemplars: Sequence[dict] | None = None,
    n_examples: int = DEFAULT_N_EXAMPLES,
    template: PromptTemplate | str | None = None,
    prompts_dir: str | Path | None = None,
) -> list[dict[str, str]]:
    """Whole chain in one completion; the answer is ``1. t1\\n2. t2\\n3. t3``."""
    tpl = _template(template, SEED_CHAIN_ID, prompts_dir)
    fmt = tpl.extra.get("example_format") or _DEFAULT_SEED_CHAIN_EXAMPLE
    chosen = select_exemplars(_exemplars(exemplars), n_examples, exclude=caption)
    examples = "".join(_fill_chain(fmt, ex["positive"]) for ex in chosen)
    return tpl.format(caption=caption, examples=examples)


def render_augment(
    caption: str,
    demonstrations: Sequence[dict | Sequence[str]],
    template: PromptTemplate | str | None = None,
    prompts_dir: str | Path | None = None,
) -> list[dict[str, str]]:
    """Few-shot completion with the given demonstrations (exemplar dicts or 4-tier lists)."""
    tpl = _template(template, AUGMENT_ID, prompts_dir)
    fmt = tpl.extra.get("demonstration_format") or _DEFAULT_AUGMENT_DEMO
    chains = [d["positive"] if isinstance(d, dict) else list(d) for d in demonstrations]
    for c in chains:
        if len(c) != 4:
            raise ValueError(f"a demonstration needs 4 tiers (general -> specific), got {c!r}")
    demos = "".join(_fill_chain(fmt, c) for c in chains)
    return tpl.format(caption=caption, demonstrations=demos, k=len(chains))


def _fill_chain(fmt: str, tiers: Sequence[str]) -> str:
    return fmt.format(t1=tiers[0], t2=tiers[1], t3=tiers[2], caption=tiers[3])


def prompt_files(prompts_dir: str | Path | None = None) -> list[Path]:
    """All template and exemplar files, sorted (used to key caches of things built from them)."""
    d = _resolve_dir(prompts_dir)
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml"), *d.glob("*.jsonl")])

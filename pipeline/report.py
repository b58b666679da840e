"""Dataset card (a Hugging Face dataset README) and the quality report (markdown + PNG plots).

Both hold only what the data and the config determine, never timings or run ids, so the same
config and seed give byte-identical files (timings live in the manifests). Both are computed from
:class:`ChainStats`, fed the exported chains a table at a time, never from a list of every chain."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .chain import N_TIERS, join_tiers
from .registry import stage_names


def lineage(store, names) -> dict[str, dict]:
    """The manifests of ``names`` and of every stage they were made from (their upstream, and so on),
    in run order: what a dataset card may report without reading anything its key does not cover."""
    found: dict[str, dict] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        m = store.stage(name).manifest()
        if m is None:
            continue
        found[name] = m
        todo += list(m.get("upstream") or {})
    return {n: found[n] for n in stage_names() if n in found}


def _table(headers: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *["| " + " | ".join(str(x) for x in r) + " |" for r in rows]]


BINS = 20            # score histograms: 20 bins over [0, 1]


def _bin(values: np.ndarray) -> np.ndarray:
    return np.histogram(values.astype(np.float64), BINS, range=(0, 1))[0]


def _field(structs, name: str) -> np.ndarray:
    return pc.struct_field(structs, name).to_numpy(zero_copy_only=False)


class ChainStats:
    """What the card and the quality report say about the exported chains, fed a table at a time
    in export order (train, then test) so that no list of every chain is held: the count, the
    first chain, tier-1 concepts (ties in first-seen order), items with a negative per tier, words
    per tier as a count per value (the box plot needs no more), NLI scores as histogram bins."""

    def __init__(self) -> None:
        self.n, self.example = 0, None
        self.concepts: Counter = Counter()
        self.negatives: Counter = Counter()                  # tier -> negatives found there
        self.words = [Counter() for _ in range(N_TIERS)]     # per tier: word count -> chains
        self.links: dict[str, np.ndarray] = {}               # "premise->hypothesis" -> P(entailment) bins
        self.contradicts = np.zeros(BINS, np.int64)          # P(contradiction | pos_k, neg_k)
        self.entails_prev = np.zeros(BINS, np.int64)         # P(entailment | neg_k, pos_k-1), k > 1

    def add(self, table: pa.Table) -> "ChainStats":
        positive = table.column("positive").to_pylist()
        for p in positive:
            self.concepts[p[0].lower()] += 1
            for k, words in enumerate(self.words):
                words[len(p[k].split())] += 1
        if positive and self.example is None:
            self.example = join_tiers(positive[0])
        self.n += len(positive)
        if "link_scores" in table.column_names:
            s = pc.list_flatten(table.column("link_scores"))
            prem, hyp, ent = _field(s, "premise_tier"), _field(s, "hypothesis_tier"), _field(s, "entailment")
            for p, h in sorted(set(zip(prem.tolist(), hyp.tolist()))):
                key = f"{p}->{h}"
                self.links[key] = self.links.get(key, 0) + _bin(ent[(prem == p) & (hyp == h)])
        if "neg_scores" in table.column_names:
            s = pc.list_flatten(table.column("neg_scores"))
            tier = _field(s, "tier")
            self.negatives.update(Counter(tier.tolist()))
            self.contradicts += _bin(_field(s, "contradicts_pos"))
            self.entails_prev += _bin(_field(s, "entails_prev")[tier > 1])
        return self

    def top_concepts(self, n: int = 15) -> list[tuple[str, int]]:
        return self.concepts.most_common(n)


def box_stats(counts: Counter, label: str) -> dict:
    """``matplotlib.cbook.boxplot_stats`` (whis=1.5) of the values ``counts`` holds (value -> how
    often), from the counts alone: quartiles as numpy's linear percentile, whiskers at the furthest
    values within 1.5 IQR of the box, every value beyond them a flier (in value order)."""
    values = sorted(counts)
    cum = np.cumsum([counts[v] for v in values])
    n = int(cum[-1])

    def at(j: int) -> int:                                   # the j-th smallest value, 0-based
        return values[int(np.searchsorted(cum, j, side="right"))]

    def pct(q: float) -> float:
        v = q / 100 * (n - 1)
        lo = math.floor(v)
        t, a, b = v - lo, at(lo), at(min(lo + 1, n - 1))
        return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)

    q1, med, q3 = pct(25), pct(50), pct(75)
    iqr = q3 - q1
    hi = max((v for v in values if v <= q3 + 1.5 * iqr), default=q3)
    lo = min((v for v in values if v >= q1 - 1.5 * iqr), default=q1)
    hi, lo = (q3 if hi < q3 else hi), (q1 if lo > q1 else lo)
    out = [v for v in values if v < lo or v > hi]
    fliers = np.repeat(np.array(out, dtype=np.int64), [counts[v] for v in out])
    return {"label": label, "mean": sum(v * c for v, c in counts.items()) / n, "med": med, "q1": q1, "q3": q3,
            "iqr": iqr, "cilo": med - 1.57 * iqr / np.sqrt(n), "cihi": med + 1.57 * iqr / np.sqrt(n),
            "whislo": lo, "whishi": hi, "fliers": fliers}


# table -> (split, file, what it holds), in card order; the first declared is the default config
# (what ``load_dataset(folder)`` gives)
TABLES = {
    "train": ("train", "{name}_train.csv", "train chains, each with a full negative chain"),
    "test": ("test", "{name}_test.csv", "the test set to curate (one chain per test image, the format curation edits)"),
    "test_pool": ("test", "{name}_test_expanded.csv.gz", "the test pool: test chains with a full negative chain"),
    "chains": ("train", "{name}.parquet", "every exported chain (train and test) with NLI scores and provenance"),
}

COLUMNS = {
    "positive": "the chain, 4 tiers general -> specific (the Parquet: a list; the CSVs: joined by ` => `); "
                "tier 4 is the source caption",
    "negative": "the negative chain: its tier k contradicts positive tier k and entails positive tier k-1",
    "captions": "the chain, as `positive`",
    "id": "the test item's id (0..N-1 when the test set was drawn, else its id in its source)",
    "image_url": "the image's URL (empty when the source gave none)",
    "chain_id": "this chain's id", "caption_id": "the source caption's id (stable across runs)",
    "source": "the `ingest.sources` entry it came from", "split": "train or test",
    "image_id": "the image's id in its source", "orig_id": "the item's id in its source",
    "link_scores": "NLI probabilities of each positive link (premise = the more specific tier)",
    "neg_scores": "per negative tier: P(contradicts positive tier k), P(entails positive tier k-1)",
    "neg_missing_reason": "why the item has no full negative chain",
    "neg_select": "how the negatives were chosen among the candidates that passed",
    "test_id": "its `id` in the test CSV (test chains drawn into the set to curate), else empty",
    "stage": "the stage that wrote the chain", "model": "the model that wrote it",
    "prompt_id": "the prompt template", "prompt_hash": "its hash", "random_seed": "the run's seed",
    "llm_output": "the generator's raw output (for audit)",
}

# source format -> licence to check; the tiers are generated by the models named in the card
LICENCES = {
    "cc_tsv": "Conceptual Captions format: Conceptual Captions is under Google's terms for the dataset "
              "(https://github.com/google-research-datasets/conceptual-captions); the images stay with "
              "their owners",
    "coco_json": "COCO captions format: COCO captions are CC BY 4.0 (https://cocodataset.org/#termsofuse); "
                 "the images are under the Flickr terms of use of each photo",
    "hierarcaps_csv": "HierarCaps format: check the terms of the release it came from (its captions come "
                      "from COCO and Conceptual Captions, see above)",
}

CITATION = """@inproceedings{alper2024emergent,
  title     = {Emergent Visual-Semantic Hierarchies in Image-Text Representations},
  author    = {Alper, Morris and Averbuch-Elor, Hadar},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024},
  eprint    = {2407.08521},
  archivePrefix = {arXiv}
}"""


def table_file(name: str, config: str) -> str:
    return TABLES[config][1].format(name=name)


def _source_format(src: dict) -> str:
    """A source's format as configured, or as ``auto`` would read it from the file name."""
    fmt = src.get("format") or "auto"
    if fmt != "auto":
        return fmt
    suffix = str(src.get("path", "")).lower().removesuffix(".gz")
    return {".tsv": "cc_tsv", ".json": "coco_json"}.get(Path(suffix).suffix, "other")


def _models(manifest: dict) -> str:
    """``name: model (revision)`` of each model a stage ran; H when it ran distill's model."""
    out = [f"{k}: `{m['model']}`" + (f" ({m['revision'][:12]})" if m.get("revision") else "")
           for k, m in sorted((manifest.get("models") or {}).items())]
    if "distill" in (manifest.get("upstream") or {}):
        out.append("H: the distill stage's model")
    return "; ".join(out) or "-"


def declared_configs(name: str, tables) -> list[str]:
    """The tables the card declares as configs. ``datasets`` reads a whole folder with one builder,
    the one the first config's files call for, so the Parquet is a config only when no CSV exists
    (else it loads with ``load_dataset("parquet", data_files=...)``)."""
    csvs = [c for c in tables if not table_file(name, c).endswith(".parquet")]
    return csvs or list(tables)


def _front_matter(name: str, tables: dict[str, tuple[list[str], int]]) -> list[str]:
    """YAML: one config per declared table, CSV columns read as text (so ids keep their zeros and a
    tier such as ``NA`` stays a word)."""
    lines = ["---", "language: [en]", "license: other", f"pretty_name: {json.dumps(name)}",
             "task_categories: [text-retrieval, zero-shot-image-classification]",
             "tags: [hierarchy, captions, hierarcaps]", "configs:"]
    for i, config in enumerate(declared_configs(name, tables)):
        split, columns = TABLES[config][0], tables[config][0]
        lines += [f"  - config_name: {config}", *(["    default: true"] if i == 0 else []),
                  "    data_files:", f"      - {{split: {split}, path: {json.dumps(table_file(name, config))}}}"]
        if not table_file(name, config).endswith(".parquet"):
            lines += ["    keep_default_na: false", "    features:",
                      *[f"      - {{name: {json.dumps(c)}, dtype: string}}" for c in columns]]
    return lines + ["---"]


def write_dataset_card(out: Path, name: str, stages: dict[str, dict], tables: dict[str, tuple[list[str], int]],
                       stats: ChainStats) -> str:
    """The README a Hugging Face dataset folder needs: ``tables`` (config -> columns, rows, in
    ``TABLES`` order) become the configs ``load_dataset`` reads; the body says what they hold, what
    made them, which licences to check and whom to cite."""
    tables = {c: tables[c] for c in TABLES if c in tables}
    configs = declared_configs(name, tables)
    example = stats.example or ""
    columns = list(dict.fromkeys(c for cols, _ in tables.values() for c in cols))   # as the tables show them
    sources = (stages.get("ingest", {}).get("params", {}).get("ingest", {}) or {}).get("sources") or []
    licences = [f"- source `{s.get('name')}` ({_source_format(s)}, split {s.get('split')}): "
                f"{LICENCES.get(_source_format(s), 'check the terms of this source')}" for s in sources]
    lines = [
        *_front_matter(name, tables), f"# {name}", "",
        "Caption hierarchies in the HierarCaps format of \"Emergent Visual-Semantic Hierarchies in Image-Text",
        "Representations\" (Alper & Averbuch-Elor, ECCV 2024). Each item is a 4-tier chain, general to specific,",
        "tiers joined by ` => `; a negative chain's tier k contradicts positive tier k and entails positive",
        "tier k-1 (tier 1: contradicts positive tier 1). This dataset was built with the open `hierarcaps`",
        "pipeline, not by the paper's authors; its tiers are model-generated.", "",
        f"Example: `{example}`", "", "## Loading", "", "```python", "from datasets import load_dataset", "",
        *[f"{c} = load_dataset(\"<this folder or repo id>\", \"{c}\")" + ("   # the default" if c == configs[0] else "")
          for c in configs],
        *[f"{c} = load_dataset(\"parquet\", data_files=\"<this folder, or hf://datasets/<repo id>>/{table_file(name, c)}\")"
          for c in tables if c not in configs], "```", "",
        "## Tables", "",
        *_table(["config", "split", "file", "rows", "columns", "what"],
                [[c if c in configs else "(Parquet: see Loading)", TABLES[c][0], f"`{table_file(name, c)}`", n,
                  ", ".join(f"`{x}`" for x in cols), TABLES[c][2]] for c, (cols, n) in tables.items()]), "",
        "## Columns", "", *_table(["column", "meaning"], [[f"`{c}`", COLUMNS.get(c, "-")] for c in columns]), "",
        "## Pipeline stages", "",
        *_table(["stage", "rows in", "rows out", "rejected", "models"],
                [[s, m["rows_in"], m["rows_out"], m["rows_rejected"], _models(m)] for s, m in stages.items()]),
        "", "## Top tier-1 concepts", "", ", ".join(f"{w} ({n})" for w, n in stats.top_concepts()), "",
        "## Licences to check", "",
        "This card claims no licence (`license: other`): the data inherits the terms of its sources and of",
        "the models that wrote the tiers. Check, before use or redistribution:", "",
        *(licences or [f"- {text}" for text in LICENCES.values()]),
        "- every tier the pipeline generated (all but the source captions and any chains given as input)",
        "  was written by the models in the stage table above: check their licences and terms of use for",
        "  outputs.", "",
        "## Citation", "",
        "The method and the HierarCaps format are from the paper below (arXiv 2407.08521); cite it when you",
        "use this dataset, and say it was built with `hierarcaps`:", "", "```bibtex", CITATION, "```", "",
        "## Pipeline config (what each stage was run with)", "", "```json",
        json.dumps({s: m.get("params", {}) for s, m in stages.items()}, indent=2, sort_keys=True), "```", "",
    ]
    text = "\n".join(lines)
    (out / "README.md").write_text(text, encoding="utf-8")
    return text


def _plots(out: Path, stats: ChainStats) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, BINS + 1)

    def hist(ax, bins: np.ndarray, label: str) -> None:      # the bars hist() draws for the scores
        ax.hist(edges[:-1], bins=edges, weights=bins, alpha=0.5, label=label)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, v in sorted(stats.links.items()):
        hist(axes[0], v, f"link {k}")
    axes[0].set_title("positive links: P(entailment)")
    axes[0].legend(fontsize=7)
    hist(axes[1], stats.contradicts, "P(contradiction | pos_k, neg_k)")
    hist(axes[1], stats.entails_prev, "P(entailment | neg_k, pos_k-1)")
    axes[1].set_title("negatives")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "nli_scores.png", dpi=90)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bxp([box_stats(stats.words[k], f"tier {k + 1}") for k in range(N_TIERS)])
    ax.set_ylabel("words")
    ax.set_title("tier lengths")
    fig.tight_layout()
    fig.savefig(out / "tier_lengths.png", dpi=90)
    plt.close(fig)
    return ["nli_scores.png", "tier_lengths.png"]


def write_quality_report(out: Path, name: str, stages: dict[str, dict], stats: ChainStats) -> str:
    """Acceptance per stage and per link, score histograms, tier lengths, top tier-1 concepts. Only
    what the data determines: the same work gives the same bytes (timings stay in the manifests)."""
    counts = {s: {**m, "stats": m.get("stats", {})} for s, m in stages.items()}
    lines = [f"# Quality report: {name}", "", "## Acceptance per stage", ""]
    lines += _table(["stage", "in", "out", "rejected", "kept %"],
                    [[s, m["rows_in"], m["rows_out"], m["rows_rejected"],
                      f"{100 * m['rows_out'] / m['rows_in']:.1f}" if m["rows_in"] else "-"] for s, m in counts.items()])
    for s in ("nli_filter",):
        t = counts.get(s, {}).get("stats", {}).get("tables", {}).get("acceptance-per-link")
        if t:
            lines += ["", f"## {s}: acceptance per link (premise tier -> hypothesis tier)", ""]
            lines += _table(["link", "chains", "passed", "rate"], [[r["link"], r["chains"], r["passed"], r["rate"]] for r in t])
    neg = stats.negatives
    if stats.n:
        lines += ["", "## Negatives found per tier", ""]
        lines += _table(["tier", "items with a negative", "share"],
                        [[k, neg[k], f"{neg[k] / stats.n:.2f}"] for k in range(1, N_TIERS + 1)])
        gen = counts.get("distill", {}).get("stats", {}).get("generation_check")
        if gen:
            lines += ["", f"H generation check on held-out seeds: validity {gen['validity_rate']:.3f} "
                          f"({gen['n_valid']}/{gen['n']}), malformed {gen['n_malformed']}"]
        lines += ["", "## Top tier-1 concepts", "", *_table(["concept", "chains"], stats.top_concepts()), ""]
        for f in _plots(out, stats):
            lines += [f"![{f}]({f})", ""]
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text

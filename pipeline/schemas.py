"""Explicit Arrow schemas for every table the pipeline writes, and the reject row builder.

Tiers are always ordered general -> specific: ``positive[0]`` is tier 1 (a category),
``positive[3]`` is tier 4 (the caption itself). Names mean one thing each: ``source`` is a
configured input source (its name), ``origin`` where a rejected row came from (a file or an
upstream stage), ``llm_output`` what a model wrote, ``excerpt`` the offending content of a reject.
"""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = 3   # 2: image_id on chains; seed -> random_seed, raw -> llm_output / excerpt, source -> origin
                     # 3: neg_select, test_id; NEG_SCORE.passing

# One NLI judgement of a link: premise = the more specific text, hypothesis = the more general.
LINK_SCORE = pa.struct(
    [
        ("premise_tier", pa.int8()),      # 1-based tier of the premise (more specific)
        ("hypothesis_tier", pa.int8()),   # 1-based tier of the hypothesis (more general)
        ("entailment", pa.float32()),
        ("neutral", pa.float32()),
        ("contradiction", pa.float32()),
    ]
)

# One negative tier's judgement: it must entail positive tier k-1 and contradict positive tier k.
NEG_SCORE = pa.struct(
    [
        ("tier", pa.int8()),                    # 1-based tier k of the negative
        ("entails_prev", pa.float32()),         # P(entailment | premise=neg_k, hyp=pos_{k-1}); 1.0 for k=1
        ("contradicts_pos", pa.float32()),      # P(contradiction | premise=pos_k, hyp=neg_k)
        ("tries", pa.int16()),                  # 1-based index of the chosen candidate among the tries
        ("passing", pa.int16()),                # how many of the tries passed both checks
    ]
)

CAPTIONS = pa.schema(
    [
        ("caption_id", pa.string()),      # stable: hash of source name + normalised text
        ("text", pa.string()),            # cleaned caption (becomes tier 4)
        ("source", pa.string()),          # source name from config (e.g. "cc_train")
        ("source_file", pa.string()),
        ("source_row", pa.int64()),       # 1-based line / record number in the source file
        ("split", pa.string()),           # train / test / any label from config
        ("image_url", pa.string()),
        ("image_id", pa.string()),
        ("orig_id", pa.string()),         # id column of the source, when it has one
        ("positive", pa.list_(pa.string())),  # a given chain (HierarCaps inputs), else null
        ("negative", pa.list_(pa.string())),
    ]
)

CHAINS = pa.schema(
    [
        ("chain_id", pa.string()),
        ("caption_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("image_url", pa.string()),
        ("image_id", pa.string()),
        ("orig_id", pa.string()),
        ("positive", pa.list_(pa.string())),      # 4 tiers, general -> specific
        ("negative", pa.list_(pa.string())),      # 4 tiers or null; an entry may be null
        ("link_scores", pa.list_(LINK_SCORE)),    # positive links judged by NLI
        ("neg_scores", pa.list_(NEG_SCORE)),
        ("neg_missing_reason", pa.string()),      # why an item has no full negative chain
        ("neg_select", pa.string()),              # how negatives were chosen among passing candidates
        ("test_id", pa.int64()),                  # id in the test set to curate (export), else null
        # provenance
        ("stage", pa.string()),
        ("model", pa.string()),
        ("prompt_id", pa.string()),
        ("prompt_hash", pa.string()),
        ("random_seed", pa.int64()),
        ("llm_output", pa.string()),              # the generator's raw output, for audit
    ]
)

REJECTS = pa.schema(
    [
        ("stage", pa.string()),
        ("origin", pa.string()),     # the file (ingest, curation) or upstream stage the row came from
        ("row", pa.int64()),         # 1-based row / line in the file; -1 when not row-addressable
        ("key", pa.string()),        # caption_id / chain_id where known
        ("reason", pa.string()),
        ("excerpt", pa.string()),    # offending content, truncated
    ]
)

EXCERPT_MAX = 2000


def reject(stage: str, origin: str, key: str | None, reason: str, excerpt: str | None = "", row: int = -1) -> dict:
    """A REJECTS row: which stage refused what, from where, and why."""
    return dict(stage=stage, origin=origin, row=row, key=key, reason=reason, excerpt=(excerpt or "")[:EXCERPT_MAX])


def conform(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Build a table from row dicts, filling absent columns with nulls, in schema order."""
    cols = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(cols, schema=schema)

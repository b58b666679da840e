"""distill: fine-tune Flan-T5 as H, the completer, on the accepted seed and augmented chains.

Both directions (specific -> general: a caption in, tiers 1-3 out; general -> specific: a tier in,
the next tier out, the empty root for tier 1). Checkpoints live in ``distill/h/checkpoints``, so
a killed run resumes; H's input format is saved beside it. A few held-out chains (2%, at most
200) give the eval loss and check generation: the share of chains H writes for their captions
that the NLI judge accepts.
"""

from __future__ import annotations

from ..backends.nli import NliConfig
from ..chain import chain_problem, join_tiers
from ..completer import Completer, GenConfig, make_training_pairs, train_completer
from ..config import DistillSection, ModelRef, NliFilterSection
from ..hashing import digest
from ..judge import Judge, validity_report
from ..prompts import load_exemplars
from ..schemas import CHAINS, REJECTS, conform, reject
from ..stage import Stage, StageContext, StageError
from ..store import RunStore
from .common import base_model, model_key, open_scorer, prompt_key

CHECK_GEN = GenConfig(max_new_tokens=64)   # how H writes the held-out chains it is checked on


class Distill(Stage):
    name = "distill"
    version = "3"  # 2: unusable chains to rejects; 3: a fixed few chains held out, pairs split by chain
    inputs = ("nli_filter", "augment")
    params = {"distill": "distill", "base": "models.completer_base", "nli": "models.nli",
              "judge_cfg": "nli_filter", "random_seed": "run.random_seed"}
    isolated = True
    distill: DistillSection
    base: ModelRef
    nli: NliConfig
    judge_cfg: NliFilterSection
    random_seed: int

    def upstream_names(self, store: RunStore) -> tuple[str, ...]:
        """augment is optional: its chains are used when it has run."""
        return ("nli_filter",) + (("augment",) if store.stage("augment").manifest() is not None else ())

    def key_material(self) -> dict:
        return {**model_key(base=self.base, nli=self.nli), **(prompt_key() if self.distill.include_exemplars else {})}

    def process(self, ctx: StageContext) -> None:
        cfg = self.distill
        rows = [r for name in self.upstream_names(ctx.store) for r in ctx.upstream(name).read().to_pylist()]
        usable, rejects = [], []
        for r in rows:
            if why := chain_problem(r["positive"]):
                rejects.append(reject(self.name, r["stage"], r["chain_id"], f"unusable chain: {why}",
                                      join_tiers(r["positive"])))
            else:
                usable.append(r)
        if len(usable) < 2 and not cfg.include_exemplars:
            raise StageError(f"distill: only {len(usable)} accepted chains; need at least 2 to train H")
        order = sorted(usable, key=lambda r: digest([self.random_seed, "distill", r["chain_id"]]))
        n_held = min(cfg.heldout_max, max(1, round(len(order) * cfg.heldout_fraction))) if cfg.heldout_fraction else 0
        held, train = order[:n_held], order[n_held:]
        chains = [r["positive"] for r in train]
        if cfg.include_exemplars:
            chains += [e["positive"] for e in load_exemplars()]
        pairs = make_training_pairs(chains, cfg)
        held_pairs = make_training_pairs([r["positive"] for r in held], cfg)   # split by chain, never by pair
        out_dir = ctx.out.path / "h"
        metrics = train_completer(pairs, base_model(ctx, self.base.model), cfg, out_dir, eval_pairs=held_pairs, fmt=cfg,
                                  revision=self.base.revision, seed=self.random_seed,
                                  progress=lambda s, t: ctx.progress(s, t, "optimizer steps"))
        stats = {"chains": len(usable), "train_chains": len(train), "held_out_chains": len(held),
                 "pairs": len(pairs), "training": metrics, "model_dir": str(out_dir / "model")}
        if held:
            h = Completer(out_dir / "model", CHECK_GEN.model_copy(update={"device": cfg.device}))
            scorer = open_scorer(ctx, self.nli)
            try:
                stats["generation_check"] = validity_report(h.generalize, [r["positive"] for r in held],
                                                            Judge(scorer, self.judge_cfg))
            finally:
                scorer.close()
                h.close()
        ctx.stats.update(stats)
        # the chains H learned from (held-out ones first); chains it could not learn from
        ctx.commit(0, conform(order, CHAINS), conform(rejects, REJECTS))

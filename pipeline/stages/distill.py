"""distill: fine-tune Flan-T5 as H, the completer, on the accepted seed and augmented chains.

Both directions (specific -> general: a caption in, tiers 1-3 out; general -> specific: a tier in,
the next tier out, the empty root for tier 1). Checkpoints live in ``distill/h/checkpoints``, so
a killed run resumes. A held-out share of chains checks generation: the NLI validity rate of the
chains H writes for their captions.
"""

from __future__ import annotations

from ..backends.completer import Completer, chain_problem, make_training_pairs, train_completer, validity_report
from ..config import PipelineConfig
from ..hashing import digest
from ..io.writers import join_tiers
from ..prompts import load_exemplars
from ..schemas import CHAINS, REJECTS, conform
from ..stage import Stage, StageContext, StageError
from .common import completer_config, make_scorer, model_key, model_path, prompt_key, reject


class Distill(Stage):
    name = "distill"
    version = "2"  # 2: unusable chains go to rejects instead of failing the stage
    inputs = ("nli_filter", "augment")
    config_sections = ("distill", "run", "nli_filter")
    isolated = True
    kind = "train"
    description = "fine-tune the completer H"

    def key_material(self, config: PipelineConfig) -> dict:
        extra = prompt_key() if config.distill.include_exemplars else {}
        return {**model_key(config, "completer", "nli"), **extra}

    def process(self, ctx: StageContext) -> None:
        cfg = ctx.config.distill
        rows = ctx.upstream("nli_filter").read().to_pylist()
        if ctx.store.stage("augment").manifest() is not None:
            rows += ctx.store.stage("augment").read().to_pylist()
        usable, rejects = [], []
        for r in rows:
            if why := chain_problem(r["positive"]):
                rejects.append(reject(self.name, r["stage"], r["chain_id"], f"unusable chain: {why}",
                                      join_tiers(r["positive"])))
            else:
                usable.append(r)
        rows = usable
        if len(rows) < 2 and not cfg.include_exemplars:
            raise StageError(f"distill: only {len(rows)} accepted chains; need at least 2 to train H")
        order = sorted(rows, key=lambda r: digest([ctx.seed, "distill", r["chain_id"]]))
        n_held = max(1, int(round(len(order) * cfg.eval_fraction))) if cfg.eval_fraction else 0
        held, train = order[:n_held], order[n_held:]
        base = model_path(ctx.config.models.completer.model, ctx.config)
        ccfg = completer_config(ctx.config, base)
        chains = [r["positive"] for r in train]
        if cfg.include_exemplars:
            chains += [e["positive"] for e in load_exemplars()]
        pairs = make_training_pairs(chains, ccfg.format)
        out_dir = ctx.out.path / "h"
        metrics = train_completer(pairs, ccfg, out_dir, progress=lambda s, t: ctx.progress(s, t, "optimizer steps"))
        stats = {"chains": len(rows), "train_chains": len(train), "held_out_chains": len(held),
                 "pairs": len(pairs), "training": metrics, "model_dir": str(out_dir / "model")}
        if held:
            completer = Completer(out_dir / "model", ccfg.model_copy(update={"model": str(out_dir / "model")}))
            scorer = make_scorer(ctx.config)
            try:
                stats["generation_check"] = validity_report(
                    completer, [r["positive"] for r in held], scorer.score,
                    threshold=ctx.config.nli_filter.entail_threshold)
            finally:
                scorer.close()
        ctx.stats.update(stats)
        # the chains H learned from (held-out ones first); chains it could not learn from
        ctx.commit(0, conform(order, CHAINS), conform(rejects, REJECTS))

"""nli_filter: keep seed chains whose every link is entailed by an MNLI cross-encoder.

Premise = the more specific tier, hypothesis = the more general one. Every link's softmax
probabilities are stored on the row; a rejected chain goes to rejects with its failing link and
scores (``excerpt`` holds the chain and all its scores as JSON).
"""

from __future__ import annotations

from ..backends.nli import NliConfig
from ..config import NliFilterSection
from ..judge import Judge, acceptance_table
from ..stage import Stage, StageContext
from .common import model_key, open_scorer, run_units
from .units import stream_units


class NliFilter(Stage):
    name = "nli_filter"
    version = "1"
    inputs = ("seed",)
    params = {"nli_filter": "nli_filter", "nli": "models.nli"}
    isolated = True
    engines = ("scorer",)
    nli_filter: NliFilterSection
    nli: NliConfig

    def key_material(self) -> dict:
        return model_key(nli=self.nli)

    def setup(self, ctx: StageContext) -> None:
        self.judge = Judge(self.open_engine("scorer", lambda: open_scorer(ctx, self.nli)), self.nli_filter)

    def process(self, ctx: StageContext) -> None:
        verdicts: list = []
        run_units(ctx, stream_units(ctx.upstream("seed"), self.nli_filter.unit_rows),
                  lambda i, chunk: self.judge.filter(chunk, self.name, "seed", verdicts), note="chains")
        if verdicts:  # units judged in this process (a resumed run reports the units it did)
            ctx.stats["tables"] = {"acceptance-per-link": acceptance_table(verdicts, self.nli_filter.entail_threshold)}

"""The NLI judge with a word-overlap scorer handed in: verdicts, filtering, H's validity check,
negative candidates. Premise = the more specific text."""

import numpy as np
import pytest

from pipeline.judge import Judge, JudgeConfig, acceptance_table, links, score_negatives, validity_report


class OverlapScorer:
    """Entailed iff every word of the hypothesis occurs in the premise; contradiction iff they share
    no word. Records what it was asked."""

    def __init__(self):
        self.calls = []

    def score(self, prem, hyp):
        self.calls.append(list(zip(prem, hyp)))
        rows = []
        for p, h in zip(prem, hyp):
            pw, hw = set(p.lower().rstrip(".").split()), set(h.lower().split())
            e = float(hw <= pw)
            c = float(not (hw & pw)) * (1 - e)
            rows.append([e, 1 - e - c, c])
        return np.array(rows)


GOOD = ["bird", "blue bird", "blue bird on branch", "A blue bird on a branch."]
SKIP = ["bird", "blue bird", "small car", "A small blue bird on a branch."]   # 3->2 fails, 4->3 too


def test_links():
    assert links(False) == [(2, 1), (3, 2), (4, 3)]
    assert set(links(True)) == {(2, 1), (3, 2), (4, 3), (3, 1), (4, 1), (4, 2)}


def test_verdicts_name_the_first_failing_link():
    judge = Judge(OverlapScorer(), JudgeConfig(entail_threshold=0.5))
    good, bad = judge.chains([GOOD, SKIP])
    assert good.ok and good.reason is None and [s["premise_tier"] for s in good.scores] == [2, 3, 4]
    assert not bad.ok and bad.reason.startswith("link 3->2 not entailed")
    assert acceptance_table([good, bad], 0.5) == [
        {"link": "2->1", "chains": 2, "passed": 2, "rate": 1.0},
        {"link": "3->2", "chains": 2, "passed": 1, "rate": 0.5},
        {"link": "4->3", "chains": 2, "passed": 1, "rate": 0.5}]


class NearScorer(OverlapScorer):
    """Entailed only one word apart: adjacent links of ``a => a b => a b c => a b c d`` hold, the
    long-range ones do not (a judge that skips them cannot tell)."""

    def score(self, prem, hyp):
        probs = super().score(prem, hyp)
        far = np.array([len(p.rstrip(".").split()) - len(h.split()) > 1 for p, h in zip(prem, hyp)])
        probs[far] = [0.0, 1.0, 0.0]
        return probs


STEPS = ["a", "a b", "a b c", "a b c d."]


def test_transitive_judges_every_pair():
    scorer = NearScorer()
    (adjacent,) = Judge(scorer, JudgeConfig()).chains([STEPS])
    assert adjacent.ok and len(scorer.calls[-1]) == 3
    (transitive,) = Judge(scorer, JudgeConfig(transitive=True)).chains([STEPS])
    assert not transitive.ok and len(transitive.scores) == 6 and len(scorer.calls[-1]) == 6
    assert transitive.reason.startswith("link 3->1 not entailed")


def test_filter_rows_to_rejects():
    rows = [{"chain_id": "a", "positive": GOOD}, {"chain_id": "b", "positive": SKIP}]
    sink = []
    keep, rej = Judge(OverlapScorer(), JudgeConfig()).filter(rows, "nli_filter", "seed", sink)
    assert [r["chain_id"] for r in keep] == ["a"] and len(keep[0]["link_scores"]) == 3
    assert [(r["key"], r["origin"], r["stage"]) for r in rej] == [("b", "seed", "nli_filter")]
    assert "link 3->2" in rej[0]["reason"] and '"link_scores"' in rej[0]["excerpt"]
    assert len(sink) == 2


def test_validity_report_uses_the_judge_and_its_transitive_setting():
    held = [GOOD, ["car", "red car", "red car parked", "A red car parked outside."]]

    def generalize(captions):
        return ["bird => blue bird => blue bird on branch", "car => garbage"]

    rep = validity_report(generalize, held, Judge(OverlapScorer(), JudgeConfig()))
    assert rep == {"validity_rate": 0.5, "n": 2, "n_valid": 1, "n_malformed": 1, "exact_match": 0.5}
    # adjacent links hold, a long-range one does not: only the transitive judge refuses the chain
    write = lambda caps: ["a => a b => a b c"]  # noqa: E731
    assert validity_report(write, [STEPS], Judge(NearScorer(), JudgeConfig()))["n_valid"] == 1
    assert validity_report(write, [STEPS], Judge(NearScorer(), JudgeConfig(transitive=True)))["n_valid"] == 0


def test_score_negatives_pairs():
    scorer = OverlapScorer()
    out = score_negatives(scorer, [None, "bird"], ["bird", "blue bird"], [["car", "bird"], ["red bird"]])
    assert out[0] == [(1.0, 1.0), (1.0, 0.0)]          # tier 1: nothing above to entail
    assert out[1] == [(1.0, 0.0)]                       # "red bird" entails "bird", shares "bird" with "blue bird"
    assert scorer.calls[0] == [("bird", "car"), ("bird", "bird"), ("blue bird", "red bird"), ("red bird", "bird")]


def test_scorer_shape_is_checked():
    class Bad:
        def score(self, p, h):
            return np.zeros((len(p), 2))

    with pytest.raises(ValueError, match="shape"):
        Judge(Bad(), JudgeConfig()).chains([GOOD])

"""HierarCaps benchmark: d_corr and hierarchical retrieval P/R as the official evaluator computes them."""

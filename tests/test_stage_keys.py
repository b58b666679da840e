"""A stage's key follows from exactly the config objects it declares: every field of every declared
object changes it, every other field leaves it alone (no hand-kept list to drift)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipeline.config import PipelineConfig, load_config
from pipeline.registry import get_stage, stage_class, stage_names
from pipeline.stage import StageError, stage_key
from pipeline.store import RunStore

# fields whose key effect is not meant: where runs are stored, where tiny models are built, the preset name
RUNTIME = {("preset",), ("run", "root"), ("run", "model_cache")}


def leaves(d, prefix=()):
    """(path, value) of every leaf of a dumped config; lists of mappings are walked by index."""
    for k, v in d.items():
        p = (*prefix, k)
        if isinstance(v, dict) and v:
            yield from leaves(v, p)
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for i, x in enumerate(v):
                yield from leaves(x, (*p, i))
        else:
            yield p, v


def annotation(path) -> object:
    """The type annotation of the field at ``path`` (through nested models and lists)."""
    cls: object = PipelineConfig
    ann = None
    for part in path:
        if isinstance(part, int):
            continue
        if cls is None:                      # inside a plain mapping field: its value type
            ann = typing.get_args(ann)[1] if typing.get_args(ann) else object
            continue
        ann = cls.model_fields[part].annotation
        inner = [a for a in (typing.get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if typing.get_origin(ann) is list:
            inner = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
        cls = inner[0] if inner else None
    return ann


def candidates(path, value):
    ann = annotation(path)
    args = [a for a in typing.get_args(ann) if a is not type(None)]
    lits = [x for a in [ann, *args] if typing.get_origin(a) is typing.Literal for x in typing.get_args(a)]
    out = [x for x in lits if x != value]
    if isinstance(value, bool):
        out.append(not value)
    elif isinstance(value, int):
        out += [value + 1, value - 1, value * 2]
    elif isinstance(value, float):
        out += [round(value / 2 + 0.01, 4), round(min(value + 0.1, 1.0), 4), value * 2 + 1]
    elif isinstance(value, str):
        out += ["seed_tier", "seed_chain", "augment", value + "x", "cpu"]
    elif isinstance(value, list):
        out += [[value[0] + 1, *value[1:]]] if value and isinstance(value[0], (int, float)) else []
        out += [value[:-1]] if value else [["x"], [1]]
        out += [value + value[-1:]] if value else []
    elif isinstance(value, dict):
        out += [{"entailment": 0, "neutral": 1, "contradiction": 2}, {"text": "t"}, {"x": "y"}]
    elif value is None:
        out += [7, 0.3, "x", {"entailment": 0, "neutral": 1, "contradiction": 2}, [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4],
                True, {"x": 1}]
    return out


def setdeep(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


def declares(stage_cls, path) -> bool:
    return any(tuple(p.split(".")) == tuple(x for x in path[:len(p.split("."))]) for p in stage_cls.params.values())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    tsv = root / "c.tsv"
    tsv.write_text("A dog running on the beach.\thttp://x/1.jpg\n")
    cfg = load_config("tiny", overrides={"run": {"root": str(root)},
                                         "ingest": {"sources": [{"name": "c", "path": str(tsv)}]}})
    return cfg, RunStore(root, "k")


def keys(cfg, store) -> dict[str, str]:
    return {n: stage_key(get_stage(n, cfg), store) for n in stage_names()}


def test_every_declared_field_changes_the_key_and_no_other_field_does(base):
    cfg, store = base
    dump = cfg.model_dump(mode="json")
    ref = keys(cfg, store)
    unmutated, checked = [], 0
    for path, value in leaves(dump):
        for cand in candidates(path, value):
            d = PipelineConfig.model_validate(dump).model_dump(mode="json")
            setdeep(d, path, cand)
            try:
                new = PipelineConfig.model_validate(d)
                got = keys(new, store)
            except Exception:  # invalid for this field (a bound, a missing prompt file): try the next
                continue
            if new.model_dump(mode="json") == dump:
                continue
            break
        else:
            unmutated.append(path)
            continue
        checked += 1
        for name in stage_names():
            changed = got[name] != ref[name]
            expected = declares(stage_class(name), path) and path not in RUNTIME
            assert changed == expected, (f"{'.'.join(map(str, path))} = {cand!r}: key of '{name}' "
                                         f"{'changed' if changed else 'did not change'}")
    assert not unmutated, f"fields the test could not change: {unmutated}"
    assert checked > 150, checked


@pytest.mark.parametrize("field,value", [("label_map", {"entailment": 2, "neutral": 1, "contradiction": 0}),
                                         ("max_length", 128), ("dtype", "float32"), ("two_label_policy", "contradiction")])
def test_nli_settings_reach_every_stage_that_scores(base, field, value):
    cfg, store = base
    new = load_config(base=cfg.model_dump(mode="json"), overrides={"models": {"nli": {field: value}}})
    before, after = keys(cfg, store), keys(new, store)
    changed = {n for n in stage_names() if before[n] != after[n]}
    assert changed == {"nli_filter", "augment", "distill", "bulk", "negatives"}


def test_generator_engine_settings_reach_the_llm_stages(base):
    cfg, store = base
    for over in ({"engine_args": {"enforce_eager": True}}, {"dtype": "bfloat16"}, {"gpu_memory_utilization": 0.5}):
        new = load_config(base=cfg.model_dump(mode="json"), overrides={"models": {"generator": over}})
        changed = {n for n in stage_names() if keys(cfg, store)[n] != keys(new, store)[n]}
        assert changed == {"seed", "augment"}, over


def test_a_stage_sees_only_what_it_declares(base):
    cfg, _ = base
    stage = get_stage("nli_filter", cfg)
    assert set(vars(stage)) - {"_opened", "scorer"} == {"nli_filter", "nli"}
    assert not hasattr(stage, "config")
    with pytest.raises(TypeError, match="unknown"):
        stage_class("nli_filter")(nli_filter=cfg.nli_filter, nli=cfg.models.nli, distill=cfg.distill)
    with pytest.raises(TypeError, match="missing"):
        stage_class("nli_filter")(nli_filter=cfg.nli_filter)


def test_reading_an_undeclared_upstream_is_refused(base, tmp_path):
    from pipeline.stage import StageContext

    cfg, store = base
    ctx = StageContext(store, get_stage("nli_filter", cfg))
    with pytest.raises(StageError, match="not among its inputs"):
        ctx.upstream("ingest")


def test_renamed_keys_still_load(caplog):
    cfg = load_config("tiny", overrides={"run": {"seed": 3}, "models": {"completer": {"model": "x/y"}},
                                         "seed": {"max_words": [2, 6, 12]}})
    assert cfg.run.random_seed == 3 and cfg.models.completer_base.model == "x/y"
    assert cfg.rules.max_words == (2, 6, 12)
    assert "'run.seed' is deprecated, use 'run.random_seed'" in caplog.text
    assert load_config("tiny", overrides=["run.seed=4", "run.random_seed=5"]).run.random_seed == 5


def test_config_errors_name_the_layer(tmp_path):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match=r"--set 'nli_filter.entail_threshold=2'.*less than or equal to 1"):
        load_config("tiny", overrides=["nli_filter.entail_threshold=2"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("bulk:\n  num_beams: 0\n")
    with pytest.raises(ConfigError, match=f"{bad}: bulk.num_beams"):
        load_config("tiny", path=bad)
    with pytest.raises(ConfigError, match="must look like section.field=value"):
        load_config("tiny", overrides=["bulk"])


def test_run_order_follows_inputs():
    from pipeline.registry import RegistryError, run_order

    order = stage_names()
    for name in order:
        assert all(order.index(i) < order.index(name) for i in stage_class(name).inputs), name
    assert run_order({"b": ("a",), "a": ()}) == ["a", "b"]
    with pytest.raises(RegistryError, match="not registered"):
        run_order({"a": ("nope",)})
    with pytest.raises(RegistryError, match="cycle"):
        run_order({"a": ("b",), "b": ("a",), "c": ()})


def test_library_imports_no_cli_layer():
    """pipeline/ is the library: it must not import the flows or curation packages."""
    import ast

    for f in Path(__file__).resolve().parents[1].joinpath("pipeline").rglob("*.py"):
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not any(n.split(".")[0] in ("flows", "curation") for n in names), f"{f}: imports {names}"

"""Shared fixtures. ``tiny_models``: the offline tiny models, built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# one tiny-model cache for the fixtures and for stage processes the flow tests spawn
os.environ.setdefault("HIERARCAPS_CACHE", str(REPO / ".cache" / "tiny"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


_prebuild = None


def pytest_sessionstart(session):
    """An empty model cache (a fresh clone, CI): build the tiny models in a background process
    (`hierarcaps tiny-models`) while the first tests, which need none, run. The fixture below waits
    for it instead of starting the builds (the t5 build alone is ~2.5 min of one core)."""
    global _prebuild
    import subprocess
    import sys

    from pipeline.models.tiny import TINY_IDS, is_built

    cache = os.environ["HIERARCAPS_CACHE"]
    if session.config.option.collectonly or all(is_built(m, cache) for m in TINY_IDS):
        return
    Path(cache).mkdir(parents=True, exist_ok=True)
    with open(Path(cache) / "prebuild.log", "ab") as log:
        _prebuild = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "tiny-models", "--cache-dir", cache],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def pytest_sessionfinish(session, exitstatus):
    """A run that ended before the builds did (a few tests, -x): stop them, workers too."""
    import signal

    if _prebuild is not None and _prebuild.poll() is None:
        os.killpg(_prebuild.pid, signal.SIGTERM)
        _prebuild.wait()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """{"llama": path, "t5": path, "nli": path}; cached under $HIERARCAPS_CACHE (default
    .cache/tiny in the checkout, git-ignored), reused across runs."""
    from pipeline.models.tiny import resolve_models

    if _prebuild is not None:
        _prebuild.wait()          # what it could not build (an error), resolve_models builds and reports
    paths = resolve_models(["tiny/llama-chat", "tiny/t5", "tiny/nli"], os.environ["HIERARCAPS_CACHE"])
    return {"llama": paths["tiny/llama-chat"], "t5": paths["tiny/t5"], "nli": paths["tiny/nli"]}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on 2 shared cores the default intra-op threads thrash under
    load (50x slower here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def coco_test_captions() -> list[tuple[str, str]]:
    """(image file name, caption) for a COCO-format test split with several captions per image:
    real COCO val captions and image ids from ../shared when it is there, else examples/captions.tsv
    grouped five to an image."""
    import csv
    import gzip

    from _shared import EXPANDED

    if EXPANDED.exists():
        with gzip.open(EXPANDED, "rt", encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
        images = list(dict.fromkeys(r["image_url"] for r in rows))[:12]
        return [(r["image_url"].rsplit("/", 1)[-1], r["positive"].split(" => ")[-1]) for r in rows
                if r["image_url"] in set(images)]
    lines = (REPO / "examples" / "captions.tsv").read_text(encoding="utf-8").splitlines()[:25]
    return [(f"COCO_val2014_{i // 5 + 1:012d}.jpg", ln.split("\t")[0]) for i, ln in enumerate(lines)]


def write_run_inputs(folder: Path) -> tuple[Path, Path, set[str]]:
    """A CC-format TSV (train: examples/captions.tsv) and a COCO captions JSON (test)."""
    import json

    from pipeline.testset import coco_image_id

    from pipeline.text import clean_text

    test = coco_test_captions()
    test_caps = {clean_text(c) for _, c in test}          # as ingest cleans them
    train = [ln for ln in (REPO / "examples" / "captions.tsv").read_text(encoding="utf-8").splitlines()
             if ln.count("\t") == 1 and ln.split("\t")[0] not in test_caps]
    tsv = folder / "cc_train.tsv"
    tsv.write_text("".join(f"{ln}\n" for ln in train), encoding="utf-8")
    names = list(dict.fromkeys(name for name, _ in test))
    coco = {"images": [{"id": int(coco_image_id(n)), "file_name": n,
                        "coco_url": f"http://images.cocodataset.org/val2014/{n}"} for n in names],
            "annotations": [{"id": 1000 + i, "image_id": int(coco_image_id(n)), "caption": c}
                            for i, (n, c) in enumerate(test)]}
    js = folder / "captions_val.json"
    js.write_text(json.dumps(coco), encoding="utf-8")
    return tsv, js, test_caps


def run_overrides(root: Path, tsv: Path, js: Path) -> dict:
    """The finished run's config on top of the tiny preset: both sources, bulk in small units, the
    paper's test side in small (all but two of the test images; a set to curate of a few)."""
    import json

    n_images = len(json.loads(js.read_text())["images"])
    return {"run": {"root": str(root)},
            "ingest": {"sources": [{"name": "coco_val", "path": str(js), "split": "test"},
                                   {"name": "cc", "path": str(tsv), "split": "train"}]},
            "bulk": {"unit_rows": 8}, "negatives": {"unit_rows": 16},
            "test": {"images": n_images - 2, "curate": n_images // 2}}


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, tiny_models):
    """One tiny-preset run, ingest to export, through the Prefect flow (a temporary local server):
    the slow tests read it or copy it instead of building their own."""
    from flows.build import build_hierarcaps
    from pipeline.config import load_config
    from pipeline.runner import default_run_id
    from pipeline.store import RunStore

    folder = tmp_path_factory.mktemp("finished_run")
    tsv, js, test_caps = write_run_inputs(folder)
    cfg = load_config("tiny", overrides=run_overrides(folder / "art", tsv, js))
    result = build_hierarcaps(config=cfg.model_dump(mode="json"))
    store = RunStore(cfg.run.root, default_run_id(cfg))
    return {"config": cfg, "store": store, "result": result, "test_captions": test_caps, "inputs": (tsv, js)}


def copy_run(run: dict, dest: Path, run_id: str = "copy"):
    """A copy of the finished run under another root (same config): a test may change it freely."""
    import shutil

    from pipeline.config import load_config
    from pipeline.store import RunStore

    cfg = load_config(base=run["config"].model_dump(mode="json"), overrides={"run": {"root": str(dest)}})
    store = RunStore(dest, run_id)
    shutil.copytree(run["store"].path, store.path, symlinks=True)   # stage links stay inside the copy
    return cfg, store


def rewrite_stage(store, name: str, rows: list[dict]) -> None:
    """Replace a finished stage's rows (as an older version of the pipeline might have written
    them), keeping its manifest consistent: one unit, counts and checksums updated."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.store import StageDir

    sd = StageDir(store.stage(name).path.resolve())
    m = sd.manifest()
    units = sorted(sd.done_units())
    schema = pq.read_schema(sd.unit_path(units[0])).remove_metadata()
    for i in units:
        sd.drop_unit(i)
    sd.write_unit(0, pa.Table.from_pylist(rows, schema=schema), None,
                  {"key": m["key"], "rows_in": len(rows), "rows_out": len(rows), "rows_rejected": 0})
    record = sd.done_units()[0]
    m.update(units=1, rows_in=len(rows), rows_out=len(rows), rows_rejected=0,
             unit_sums={"0": {k: record[k] for k in ("key", "rows_in", "rows_out", "rows_rejected", "data", "rejects")}})
    sd.write_manifest(m)

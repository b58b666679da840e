"""Export streams: units of ``export.unit_rows`` upstream rows, files written from the committed
units, the card and report from accumulators. A killed export resumes to exactly the files and rows
of an uninterrupted one, the unit size changes nothing but the Parquet's row groups, and no stage
read holds the whole upstream (or the train chains) in Python."""

from __future__ import annotations

import filecmp
import gzip
import importlib.util
import io
import os
import signal
import subprocess
import sys
import time
import tracemalloc

import pyarrow.parquet as pq
import pytest

from _shared import REPO
from pipeline.config import load_config
from pipeline.io.writers import csv_appender, write_csv, write_csv_gz
from pipeline.runner import run_stages
from pipeline.store import RunStore, StageDir, manifest_identity

spec = importlib.util.spec_from_file_location("export_scale", REPO / "bench" / "export_scale.py")
scale = importlib.util.module_from_spec(spec)
spec.loader.exec_module(scale)

SETS = ["test.images=20", "test.curate=10"]


def synthetic(root, run: str, rows: int = 2000, test_rows: int = 200) -> RunStore:
    """A run whose finished ``negatives`` stage holds ``rows`` synthetic chains (bench/export_scale.py)."""
    store = RunStore(root, run)
    scale.build_negatives(store, rows, test_rows, unit_rows=300)
    return store


def config(root, *overrides):
    return load_config("tiny", overrides=[f"run.root={root}", *SETS, *overrides])


def cli(root, run: str, *overrides: str, patch: str = "") -> list[str]:
    """The export command; ``patch``: Python run first in the child (to slow it at a chosen point)."""
    sets = [x for o in (*SETS, *overrides) for x in ("--set", o)]
    code = f"import sys, time; {patch or 'pass'}; from flows.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "stage", "export", "--preset", "tiny", "--no-prefect", "--root", str(root),
            "--run", run, *sets]


def out_files(sd: StageDir) -> list[str]:
    return sorted(p.name for p in sd.path.iterdir()
                  if p.is_file() and not p.name.startswith(("part-", "manifest", "_")))


def assert_same_export(a: StageDir, b: StageDir, parquet_bytes: bool = True) -> None:
    names = out_files(a)
    assert names == out_files(b) and not [n for n in names if n.startswith(".")]
    compare = [n for n in names if parquet_bytes or not n.endswith(".parquet")]
    match, mismatch, errors = filecmp.cmpfiles(a.path, b.path, compare, shallow=False)
    assert not mismatch and not errors, mismatch
    for n in names:
        if n.endswith(".parquet"):
            assert pq.read_table(a.path / n).equals(pq.read_table(b.path / n)), n


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted export in units of 250 upstream rows (8 units)."""
    root = tmp_path_factory.mktemp("ref")
    store = synthetic(root, "ref")
    m = run_stages(config(root, "export.unit_rows=250"), store, ["export"])[0]
    assert m["units"] == 8 and m["rows_in"] == 2000 == m["rows_out"] + m["rows_rejected"]
    return store


def wait_for(cond, proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, "the export finished before it could be killed"
        assert time.time() < deadline, "timed out waiting for the export"
        time.sleep(0.02)


@pytest.mark.parametrize("at", ["units", "files"])
def test_killed_export_resumes_to_the_uninterrupted_output(reference, tmp_path, at):
    """SIGKILL after two units are committed, or while the files are being written (all units done,
    the Parquet's temp file open); a plain rerun, reading in other batches, ends with exactly the
    reference's files and rows."""
    store = synthetic(tmp_path, "killed")
    if at == "units":     # slow each unit a little so the kill lands between units
        patch = ("from pipeline.stages.export import Export; f = Export.commit_unit; "
                 "Export.commit_unit = lambda self, *a: (f(self, *a), time.sleep(0.3))[0]")
    else:                 # slow the file pass, batch by batch
        patch = ("from pipeline.chain_stats import ChainStats; f = ChainStats.add; "
                 "ChainStats.add = lambda self, t: (f(self, t), time.sleep(0.3))[0]")
    proc = subprocess.Popen(cli(tmp_path, "killed", "export.unit_rows=250", patch=patch), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "HIERARCAPS_SCAN_BATCH": "7"})   # resumed with 8192-row reads
    work = lambda: store.working("export")  # noqa: E731
    if at == "units":
        wait_for(lambda: work() is not None and len(work().done_units()) >= 2, proc)
    else:
        wait_for(lambda: work() is not None and len(work().done_units()) == 8
                 and any(work().path.glob(".hierarcaps.parquet.tmp-*")), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    attempt = work()
    assert store.stage("export").manifest() is None and attempt.manifest() is None
    assert not (attempt.path / "hierarcaps.parquet").exists()            # a file is whole or absent
    kept = {i: attempt.unit_path(i).stat().st_mtime_ns for i in attempt.done_units()}
    assert (len(kept) < 8) if at == "units" else (len(kept) == 8)
    done = subprocess.run(cli(tmp_path, "killed", "export.unit_rows=250"), cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = reference.stage("export"), store.stage("export")
    assert {i: b.unit_path(i).stat().st_mtime_ns for i in kept} == kept   # finished units were kept, not redone
    assert_same_export(a, b)
    assert a.read().equals(b.read()) and a.read_rejects().equals(b.read_rejects())
    assert manifest_identity(a.manifest()) == manifest_identity(b.manifest())
    assert not list(b.path.rglob(".*.tmp-*"))


def test_unit_size_changes_only_the_parquet_row_groups(reference, tmp_path):
    """One unit or 40: the CSVs, card, report and plots are byte-identical, the Parquet holds the
    same rows in the same order (train chains, then test chains), and so do the units."""
    store = synthetic(tmp_path, "one")
    m = run_stages(config(tmp_path, "export.unit_rows=100000"), store, ["export"])[0]
    assert m["units"] == 1
    a, b = reference.stage("export"), store.stage("export")
    assert_same_export(a, b, parquet_bytes=False)
    assert {f: n for f, n in m["stats"]["files"].items()} == a.manifest()["stats"]["files"]
    key = lambda r: r["chain_id"]  # noqa: E731
    assert sorted(a.read().to_pylist(), key=key) == sorted(b.read().to_pylist(), key=key)
    chains = pq.read_table(b.path / "hierarcaps.parquet")
    splits = chains.column("split").to_pylist()
    assert splits == sorted(splits, key=lambda s: s != "train")          # train, then test
    assert chains.num_rows == m["rows_out"]
    curated = [r for r in chains.to_pylist() if r["test_id"] is not None]
    assert sorted(r["test_id"] for r in curated) == list(range(10))


def export_peak(root, rows: int, monkeypatch) -> int:
    """Peak Python memory (tracemalloc) of an in-process export over ``rows`` chains, 500 of them
    test, in units of 1,000; reading a whole stage is refused."""
    store = synthetic(root, f"m{rows}", rows=rows, test_rows=500)
    cfg = config(root, "export.unit_rows=1000")

    def refuse(self, *a, **k):
        raise AssertionError(f"StageDir.read of {self.name}: a whole table read")

    monkeypatch.setattr(StageDir, "read", refuse)
    tracemalloc.start()
    try:
        run_stages(cfg, store, ["export"])
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        monkeypatch.undo()


def test_export_memory_does_not_grow_with_the_train_chains(tmp_path, monkeypatch):
    export_peak(tmp_path / "warm", 1_000, monkeypatch)         # imports (matplotlib...) are not the export's
    small = export_peak(tmp_path / "a", 3_000, monkeypatch)
    large = export_peak(tmp_path / "b", 12_000, monkeypatch)
    # 4x the chains: holding them (as the whole-table export did) took 2.8x the memory here
    assert large < 1.2 * small, (small, large)


def test_curation_reads_only_the_test_rows(reference, tmp_path, monkeypatch):
    from curation.curate import export_for_curation

    monkeypatch.setattr(StageDir, "read", lambda self, *a, **k: pytest.fail("a whole-table read"))
    cfg = config(reference.root)
    assert export_for_curation(reference, cfg.export, tmp_path / "c.csv") == 10
    ids = [ln.split(",")[0] for ln in (tmp_path / "c.csv").read_text().splitlines()[1:]]
    assert ids == [str(i) for i in range(10)]


@pytest.mark.parametrize("gz", [False, True])
def test_csv_batches_give_the_bytes_of_one_write(tmp_path, gz):
    header = ["positive", "negative"]
    rows = [[f"a {i} => b => c => d", "e => f => g => =h"] for i in range(5000)]
    whole = tmp_path / ("whole.csv.gz" if gz else "whole.csv")
    (write_csv_gz if gz else write_csv)(whole, header, rows)
    parts = tmp_path / ("parts.csv.gz" if gz else "parts.csv")
    with csv_appender(parts, header, gz=gz) as add:
        for i in range(0, len(rows), 777):
            add(rows[i:i + 777])
    assert add.n == 5000 and parts.read_bytes() == whole.read_bytes()
    text = gzip.decompress(parts.read_bytes()) if gz else parts.read_bytes()
    assert io.BytesIO(text).readline() == b"positive,negative\n"
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]

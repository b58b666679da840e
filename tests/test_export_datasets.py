"""The export as the ecosystem reads it: `datasets.load_dataset` on every config the card declares,
the deterministic test-pool gzip, what the card states, and `hierarcaps publish` up to the upload
(the Hub cannot be reached here: HfApi is a recording stand-in).

The session's finished run has train chains and a COCO test split, but its tiny models may find no
full negative for a test chain (then it has no test pool); ``pooled`` is a copy whose test chains
all have one, with export rerun, so that every table exists."""

from __future__ import annotations

import csv
import gzip
import io
import re

import pyarrow.parquet as pq
import pytest
import yaml

from conftest import copy_run, rewrite_stage
from flows.cli import main
from pipeline.chain import has_full_negative
from pipeline.io.writers import write_csv, write_csv_gz
from pipeline.chain_stats import ChainStats
from pipeline.report import lineage, write_dataset_card
from pipeline.runner import run_stages


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def read_table(path) -> tuple[list[str], list[dict]]:
    """(columns, rows as text) of an exported CSV, gzipped or not, or of the Parquet."""
    if path.name.endswith(".parquet"):
        t = pq.read_table(path)
        return t.schema.names, t.to_pylist()
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    r = csv.DictReader(io.StringIO(raw.decode("utf-8"), newline=""))
    return list(r.fieldnames), list(r)


def export_of(store, name: str) -> dict:
    path = store.stage("export").path
    card = (path / "README.md").read_text(encoding="utf-8")
    return {"store": store, "path": path, "card": card, "configs": front_matter(card)["configs"], "name": name}


@pytest.fixture(scope="module")
def pooled(finished_run, tmp_path_factory):
    """A copy of the finished run whose test chains all have a full negative (one borrowed from a
    train chain: a loadable, not a meaningful, pool), its export rerun."""
    cfg, store = copy_run(finished_run, tmp_path_factory.mktemp("pooled"), run_id="pooled-run-7f3a")
    rows = store.stage("negatives").read().to_pylist()
    donor = next(r for r in rows if r["split"] == "train" and has_full_negative(r))
    for r in rows:
        if r["split"] == "test" and not has_full_negative(r):
            r.update(negative=donor["negative"], neg_scores=donor["neg_scores"], neg_missing_reason=None)
    rewrite_stage(store, "negatives", rows)
    run_stages(cfg, store, ["export"])
    return export_of(store, cfg.export.name)


def declared(ex) -> dict:
    return {c["config_name"]: c["data_files"] for c in ex["configs"]}


def table_files(ex) -> set[str]:
    return {p.name for p in ex["path"].iterdir()
            if p.name.endswith((".csv", ".csv.gz", ".parquet")) and not p.name.startswith("part-")}


def test_card_declares_one_config_per_table(pooled):
    name = pooled["name"]
    # datasets reads a folder with one builder: the CSVs are configs, the Parquet is loaded by name
    assert declared(pooled) == {"train": [{"split": "train", "path": f"{name}_train.csv"}],
                                "test": [{"split": "test", "path": f"{name}_test.csv"}],
                                "test_pool": [{"split": "test", "path": f"{name}_test_expanded.csv.gz"}]}
    assert [c["config_name"] for c in pooled["configs"] if c.get("default")] == ["train"]
    assert table_files(pooled) == {f[0]["path"] for f in declared(pooled).values()} | {f"{name}.parquet"}
    assert not (pooled["path"] / f"{name}_test_pool.csv").exists()


def test_card_declares_only_the_tables_a_run_has(finished_run):
    ex = export_of(finished_run["store"], finished_run["config"].export.name)
    assert table_files(ex) == {f[0]["path"] for f in declared(ex).values()} | {f"{ex['name']}.parquet"}
    assert {"train", "test"} <= set(declared(ex))
    pool = [c for c in ex["store"].stage("export").read().to_pylist()
            if c["split"] == "test" and has_full_negative(c)]
    assert ("test_pool" in declared(ex)) == bool(pool)
    assert ex["store"].run_id not in ex["card"]


def test_load_dataset_reads_every_config(pooled, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))
    for cfg in pooled["configs"]:
        (files,) = cfg["data_files"]
        columns, rows = read_table(pooled["path"] / files["path"])
        ds = datasets.load_dataset(str(pooled["path"]), cfg["config_name"], cache_dir=str(tmp_path / "cache"))
        assert list(ds) == [files["split"]], cfg["config_name"]
        split = ds[files["split"]]
        assert split.num_rows == len(rows) > 0, cfg["config_name"]
        assert split.column_names == columns, cfg["config_name"]
        assert split.to_list() == rows, cfg["config_name"]      # every cell as its text, empty ones as ""
    default = datasets.load_dataset(str(pooled["path"]), cache_dir=str(tmp_path / "cache"))
    assert list(default) == ["train"] and default["train"].column_names[:2] == ["positive", "negative"]
    parquet = pooled["path"] / f"{pooled['name']}.parquet"
    assert f'load_dataset("parquet", data_files="<this folder, or hf://datasets/<repo id>>/{parquet.name}")' \
        in pooled["card"]
    chains = datasets.load_dataset("parquet", data_files=str(parquet), cache_dir=str(tmp_path / "cache"))["train"]
    columns, rows = read_table(parquet)
    assert chains.column_names == columns and chains.num_rows == len(rows) > 0


def test_an_export_of_only_chains_declares_the_parquet(tmp_path):
    """No CSV (a run without train or test chains): the Parquet is the one, default, config."""
    import datasets
    import pyarrow as pa

    pq.write_table(pa.table({"chain_id": ["c1", "c2"], "positive": [["a", "b", "c", "d"]] * 2}), tmp_path / "x.parquet")
    card = write_dataset_card(tmp_path, "x", {}, {"chains": (["chain_id", "positive"], 2)}, ChainStats())
    assert [c["config_name"] for c in front_matter(card)["configs"]] == ["chains"]
    ds = datasets.load_dataset(str(tmp_path), cache_dir=str(tmp_path / "cache"))
    assert list(ds) == ["train"] and ds["train"]["chain_id"] == ["c1", "c2"]


def test_csv_cells_load_as_written(tmp_path):
    """Cells pandas would turn into numbers or NaN (an id with a leading zero, a tier "NA", an empty
    URL) load as the CSV's text."""
    import datasets

    header, rows = ["id", "captions", "image_url"], [["007", "NA => null => n/a => None of it", ""]]
    write_csv(tmp_path / "x_test.csv", header, rows)
    write_dataset_card(tmp_path, "x", {}, {"test": (header, 1)}, ChainStats())
    ds = datasets.load_dataset(str(tmp_path), "test", cache_dir=str(tmp_path / "cache"))["test"]
    assert ds.to_list() == [dict(zip(header, rows[0]))]


def test_test_pool_gzip_is_byte_deterministic(pooled, tmp_path, monkeypatch):
    import time

    header, rows = read_table(pooled["path"] / f"{pooled['name']}_test_expanded.csv.gz")
    assert header == ["positive", "negative", "image_url"] and rows
    values = [[r[c] for c in header] for r in rows]
    a, b, plain = tmp_path / "a.csv.gz", tmp_path / "other_name.csv.gz", tmp_path / "plain.csv"
    assert write_csv_gz(a, header, values) == len(rows)
    monkeypatch.setattr(time, "time", lambda: 2e9)                # another moment, another file name
    write_csv_gz(b, header, values)
    write_csv(plain, header, values)
    assert a.read_bytes() == b.read_bytes()                       # no file name, no time in the header
    assert a.read_bytes()[3] == 0 and a.read_bytes()[4:8] == b"\0\0\0\0"   # FLG none, MTIME 0
    assert gzip.decompress(a.read_bytes()) == plain.read_bytes()
    assert a.read_bytes() == (pooled["path"] / f"{pooled['name']}_test_expanded.csv.gz").read_bytes()


def test_card_states_counts_columns_models_licences_citation(pooled, tmp_path):
    card, path, name = pooled["card"], pooled["path"], pooled["name"]
    columns_section = card.split("## Columns")[1].split("##")[0]
    for file in sorted(table_files(pooled)):
        columns, rows = read_table(path / file)
        row = next(ln for ln in card.splitlines() if f"| `{file}` |" in ln)
        assert f"| `{file}` | {len(rows)} | {', '.join(f'`{c}`' for c in columns)} |" in row
        assert all(f"| `{c}` |" in columns_section for c in columns), columns
    stages = pooled["store"].stage("negatives").manifest()
    assert f"`{stages['models']['nli']['model']}`" in card and "H: the distill stage's model" in card
    assert "`tiny/llama-chat`" in card                            # seed's generator
    for text in ("CC BY 4.0", "Flickr", "Google's terms", "source `coco_val` (coco_json", "source `cc` (cc_tsv",
                 "model-generated", "arXiv 2407.08521", "@inproceedings{", "Alper, Morris and Averbuch-Elor, Hadar",
                 "not by the paper's authors", "license: other"):
        assert text in card, text
    assert pooled["store"].run_id not in card and "7f3a" not in card
    # the card is a function of the data: rebuilt from the manifests and the tables, the same bytes
    tables = {c["config_name"]: read_table(path / c["data_files"][0]["path"]) for c in pooled["configs"]}
    tables["chains"] = read_table(path / f"{name}.parquet")
    chains = ChainStats().add(pq.read_table(path / f"{name}.parquet"))      # every chain, in export order
    rebuilt = write_dataset_card(tmp_path, name, lineage(pooled["store"], ["negatives"]),
                                 {c: (cols, len(rows)) for c, (cols, rows) in tables.items()}, chains)
    assert rebuilt == card


# --------------------------------------------------------------------------- publish


def expected_upload(ex) -> set[str]:
    """What the card and the report refer to: the tables, both markdown files, the report's plots."""
    report = (ex["path"] / "report.md").read_text(encoding="utf-8")
    plots = set(re.findall(r"!\[[^]]*\]\(([^)]+)\)", report))
    assert plots
    tables = {c["data_files"][0]["path"] for c in ex["configs"]} | {f"{ex['name']}.parquet"}
    return tables | {"README.md", "report.md"} | plots


class Recorder:
    """Stands in for the Hub: HfApi's two network calls, recorded."""

    def __init__(self, monkeypatch):
        import huggingface_hub

        self.calls = []
        rec = self

        def create_repo(api, repo_id, **kw):
            rec.calls.append(("create_repo", api.token, repo_id, kw))

        def upload_folder(api, **kw):
            rec.calls.append(("upload_folder", api.token, kw["repo_id"], kw))
            return "https://huggingface.co/datasets/me/hc/commit/0"

        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
        monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)


def publish(store, *args) -> list[str]:
    return ["publish", store.run_id, "--root", str(store.root), "--repo-id", "me/hc", *args]


def test_publish_dry_run_prints_the_plan(pooled, capsys, monkeypatch):
    rec = Recorder(monkeypatch)
    assert main(publish(pooled["store"], "--dry-run")) == 0
    out = capsys.readouterr().out
    listed = {ln.split()[0] for ln in out.splitlines() if ln.startswith("  ")}
    assert listed == expected_upload(pooled)
    assert "huggingface.co/datasets/me/hc" in out and "dry run: nothing uploaded" in out
    assert rec.calls == []


def test_publish_uploads_exactly_the_plan(pooled, capsys, monkeypatch):
    import huggingface_hub

    rec = Recorder(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("MY_HUB_TOKEN", "hf_secret_not_to_print")
    assert main(publish(pooled["store"], "--private", "--token-env", "MY_HUB_TOKEN")) == 0
    (c_name, c_token, c_repo, c_kw), (u_name, u_token, u_repo, u_kw) = rec.calls
    assert (c_name, c_repo, u_name, u_repo) == ("create_repo", "me/hc", "upload_folder", "me/hc")
    assert c_token == u_token == "hf_secret_not_to_print"
    assert c_kw == {"repo_type": "dataset", "private": True, "exist_ok": True}
    assert u_kw["repo_type"] == "dataset"
    assert u_kw["folder_path"] == str(pooled["path"].resolve())
    assert set(u_kw["allow_patterns"]) == expected_upload(pooled)
    out, err = capsys.readouterr()
    assert "hf_secret_not_to_print" not in out + err and "$MY_HUB_TOKEN" in out
    assert "uploaded" in out


def one_line_error(capsys, argv, *needles) -> None:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("hierarcaps:")]
    assert len(err) == 1 and err[0].startswith("hierarcaps: error: "), err
    assert all(n in err[0] for n in needles), err


def test_publish_refuses_what_it_cannot_upload(pooled, finished_run, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    rec = Recorder(monkeypatch)
    _, store = copy_run(finished_run, tmp_path / "art")
    ex = store.stage("export").path
    name = pooled["name"]
    one_line_error(capsys, publish(store, "--token-env", "NO_SUCH_TOKEN_VAR"), "NO_SUCH_TOKEN_VAR", "not set")
    one_line_error(capsys, ["publish", store.run_id, "--root", str(store.root), "--repo-id", "no slash!"],
                   "--repo-id")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    one_line_error(capsys, publish(store), "HF_HUB_OFFLINE")         # offline: refused before any call
    data = bytearray((ex / f"{name}_train.csv").read_bytes())
    data[-2] ^= 1
    (ex / f"{name}_train.csv").write_bytes(bytes(data))
    one_line_error(capsys, publish(store, "--dry-run"), "damaged", f"{name}_train.csv")
    (ex / "manifest.json").unlink()
    one_line_error(capsys, publish(store, "--dry-run"), "has not finished")
    one_line_error(capsys, ["publish", "nope", "--root", str(store.root), "--repo-id", "me/hc"], "no such run")
    assert rec.calls == []

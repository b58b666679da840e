import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.io.readers import ReaderError, read_source
from pipeline.registry import get_stage
from pipeline.execute import run_stage
from pipeline.stage import StageError
from pipeline.store import RunStore


def ingest(tmp_path, sources, **ingest_over):
    cfg = load_config("tiny", overrides={"run": {"root": str(tmp_path / "art")},
                                         "ingest": {"sources": sources, **ingest_over}})
    store = RunStore(cfg.run.root, "t")
    m = run_stage(get_stage("ingest", cfg), store)
    sd = store.stage("ingest")
    return m, sd.read().to_pylist(), sd.read_rejects().to_pylist()


def reasons(rejects):
    return [(r["row"], r["reason"]) for r in rejects]


def test_cc_tsv_edge_cases(tmp_path):
    p = tmp_path / "cc.tsv"
    lines = [
        "\ufeffA dog runs on grass.\thttp://x/1.jpg",          # BOM on the first line
        "A cat sleeps on a sofa.\thttp://x/2.jpg",
        "",                                                   # empty line
        "only one column",                                    # wrong column count
        "too\tmany\tcolumns",
        "A dog runs on grass.\thttp://x/3.jpg",               # exact duplicate
        "a  DOG runs on grass\thttp://x/4.jpg",               # near duplicate
        "x" * 5000 + "\thttp://x/5.jpg",                      # huge caption
        "   \thttp://x/6.jpg",                                # blank caption
        "Two  people\u200b walking.\thttp://x/7.jpg",         # whitespace / zero-width clean-up
    ]
    data = "\r\n".join(lines).encode() + b"\r\n" + b"bad \xff\xfe bytes\thttp://x/8.jpg\r\n"
    p.write_bytes(data)
    m, rows, rej = ingest(tmp_path, [{"name": "cc", "path": str(p), "format": "cc_tsv"}], dedup_scope="global")
    assert [r["text"] for r in rows] == ["A dog runs on grass.", "A cat sleeps on a sofa.", "Two people walking."]
    assert rows[0]["image_url"] == "http://x/1.jpg" and rows[0]["source_row"] == 1
    got = dict(reasons(rej))
    assert got[3] == "empty line"
    assert got[4].startswith("expected 2 tab-separated columns") and got[5].startswith("expected 2")
    assert got[6] == "exact duplicate of cc row 1"
    assert got[7] == "near-duplicate (normalised) of cc row 1"
    assert got[8].startswith("caption longer than 1000")
    assert got[9] == "empty caption"
    assert got[11] == "invalid UTF-8" and "\\xff" in [r for r in rej if r["row"] == 11][0]["excerpt"]
    assert all(r["origin"] == str(p) for r in rej)
    assert m["rows_in"] == 11 == m["rows_out"] + m["rows_rejected"]


def test_exact_only_dedup_keeps_near_duplicates(tmp_path):
    p = tmp_path / "cc.tsv"
    p.write_text("A dog.\tu\nA dog.\tu\na DOG\tu\n")
    _, rows, rej = ingest(tmp_path, [{"name": "cc", "path": str(p)}], dedup="exact")
    assert [r["text"] for r in rows] == ["A dog.", "a DOG"] and len(rej) == 1


def test_coco_json(tmp_path):
    p = tmp_path / "captions_val.json"
    p.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "coco_url": "http://c/a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A man riding a horse."},
            {"id": 11, "image_id": 2, "caption": "A bowl of fruit on a table."},
            {"id": 12, "image_id": 3, "caption": "Orphan annotation."},
            {"id": 13, "image_id": 1},
        ],
    }))
    m, rows, rej = ingest(tmp_path, [{"name": "coco", "path": str(p), "split": "test"}])
    assert [(r["text"], r["image_url"], r["image_id"], r["split"]) for r in rows] == [
        ("A man riding a horse.", "http://c/a.jpg", "1", "test"), ("A bowl of fruit on a table.", "b.jpg", "2", "test")]
    assert reasons(rej) == [(3, "image_id 3 not in images"), (4, "annotation has no caption string")]


def test_generic_formats_with_column_mapping(tmp_path):
    cols = {"text": "cap", "image_url": "url", "id": "key"}
    (tmp_path / "a.csv").write_text("key,cap,url\n1,A red car.,u1\n2,,u2\n3,too,many,cols\n")
    (tmp_path / "b.jsonl").write_text('{"key": 4, "cap": "A green tree.", "url": "u4"}\nnot json\n\n{"key": 5}\n')
    pq.write_table(pa.table({"key": [6, 7], "cap": ["A yellow boat.", None], "url": ["u6", "u7"]}), tmp_path / "c.parquet")
    srcs = [{"name": n, "path": str(tmp_path / f), "columns": cols} for n, f in
            [("a", "a.csv"), ("b", "b.jsonl"), ("c", "c.parquet")]]
    m, rows, rej = ingest(tmp_path, srcs)
    assert [(r["text"], r["orig_id"], r["image_url"]) for r in rows] == [
        ("A red car.", "1", "u1"), ("A green tree.", "4", "u4"), ("A yellow boat.", "6", "u6")]
    assert sorted(r["reason"].split(" ")[0] for r in rej) == ["empty", "empty", "expected", "invalid", "missing", "missing"]
    assert m["rows_in"] == 9 == len(rows) + len(rej)


def test_hierarcaps_csv_formats(tmp_path):
    (tmp_path / "t.csv").write_text(
        'id,captions,image_url\n0,"bird => blue bird => blue bird on branch => A blue bird on a branch.",http://i/0.jpg\n'
        '1,bird => blue bird,http://i/1.jpg\n')
    (tmp_path / "tr.csv.gz").write_bytes(gzip.compress(
        b"positive,negative\na => b => c d => e f g,x => y => c z => e f q\n"))
    m, rows, rej = ingest(tmp_path, [{"name": "t", "path": str(tmp_path / "t.csv"), "split": "test"},
                                      {"name": "tr", "path": str(tmp_path / "tr.csv.gz")}])
    assert rows[0]["positive"] == ["bird", "blue bird", "blue bird on branch", "A blue bird on a branch."]
    assert rows[0]["text"] == "A blue bird on a branch." and rows[0]["orig_id"] == "0"
    assert rows[1]["negative"] == ["x", "y", "c z", "e f q"]
    assert reasons(rej) == [(3, "positive chain: expected 4 tiers, got 2")]


def test_whole_file_errors_name_the_file(tmp_path):
    with pytest.raises(StageError, match=r"nope\.tsv: file not found"):
        ingest(tmp_path, [{"name": "x", "path": str(tmp_path / "nope.tsv")}])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StageError, match=r"bad\.json: invalid JSON at line 1"):
        ingest(tmp_path, [{"name": "x", "path": str(tmp_path / "bad.json")}])
    (tmp_path / "x.txt").write_text("a caption\n")
    with pytest.raises(ReaderError, match="cannot detect format"):
        list(read_source(tmp_path / "x.txt"))


def test_limit_caps_rows_per_source(tmp_path):
    p = tmp_path / "cc.tsv"
    p.write_text("".join(f"caption number {i}\tu{i}\n" for i in range(50)))
    m, rows, _ = ingest(tmp_path, [{"name": "cc", "path": str(p)}], limit=7, unit_rows=3)
    assert len(rows) == 7 and m["units"] == 3


def test_dedup_is_per_image_by_default(tmp_path):
    """The same caption on two images is two items (as in the released pool); on one image, one."""
    coco = {"images": [{"id": 1, "coco_url": "http://c/1.jpg"}, {"id": 2, "coco_url": "http://c/2.jpg"}],
            "annotations": [{"id": 10, "image_id": 1, "caption": "A man riding a wave."},
                            {"id": 11, "image_id": 2, "caption": "A man riding a wave."},
                            {"id": 12, "image_id": 1, "caption": "a man riding a wave"},
                            {"id": 13, "image_id": 2, "caption": "A man riding a wave."}]}
    p = tmp_path / "c.json"
    p.write_text(json.dumps(coco))
    m, rows, rej = ingest(tmp_path, [{"name": "coco", "path": str(p), "split": "test"}])
    assert [(r["image_id"], r["orig_id"]) for r in rows] == [("1", "10"), ("2", "11")]
    assert reasons(rej) == [(3, "near-duplicate (normalised) of coco row 1"), (4, "exact duplicate of coco row 2")]
    m, rows, rej = ingest(tmp_path / "g", [{"name": "coco", "path": str(p), "split": "test"}], dedup_scope="global")
    assert [r["orig_id"] for r in rows] == ["10"] and len(rej) == 3

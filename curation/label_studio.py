"""Label Studio hand-off: a tasks JSON and its labeling config for a team that runs Label Studio,
and the reader of Label Studio's JSON export.

Each task carries the item's chain id and the run id in ``data`` (``hierarcaps_run``), so an
export from another project is recognised and refused. The config shows the image and the
generated tiers; tiers 1-3 are edited in TextArea fields pre-filled with the generated text,
each with a "valid as generated" choice; keep/drop, a drop reason and a note. On import, a tier
field the annotator left alone keeps the generated text.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.io.atomic import atomic_write_bytes
from pipeline.stage import StageError

from .items import test_items

RUN_KEY = "hierarcaps_run"


def labeling_config(allow_tier4: bool = False) -> str:
    editable = 4 if allow_tier4 else 3
    rows = []
    for k in range(1, 5):
        rows.append(f'    <Header value="Tier {k}"/>\n    <Text name="gen{k}" value="$tier{k}"/>')
        if k <= editable:
            rows.append(f'    <TextArea name="tier{k}" toName="image" value="$tier{k}" rows="1" editable="true" '
                        f'maxSubmissions="1" placeholder="tier {k}"/>')
            rows.append(f'    <Choices name="valid{k}" toName="image" choice="single" showInline="true">\n'
                        f'      <Choice value="valid"/><Choice value="not valid"/>\n    </Choices>')
    body = "\n".join(rows)
    return f"""<View>
  <Image name="image" value="$image" maxWidth="640px"/>
  <Text name="links" value="$links"/>
  <View>
{body}
  </View>
  <Header value="Decision"/>
  <Choices name="decision" toName="image" choice="single" required="true" showInline="true">
    <Choice value="keep"/><Choice value="drop"/>
  </Choices>
  <TextArea name="reason" toName="image" rows="1" maxSubmissions="1" placeholder="why dropped"/>
  <TextArea name="note" toName="image" rows="2" maxSubmissions="1" placeholder="note"/>
</View>
"""


def tasks(run_id: str, items: list[dict]) -> list[dict]:
    out = []
    for it in items:
        links = ", ".join(f"{k + 1}=>{k}: " + ("-" if p is None else f"{p:.3f}") for k, p in enumerate(it["links"], 1))
        data = {RUN_KEY: run_id, "chain_id": it["chain_id"], "test_id": it["id"], "image": it["image_url"],
                "links": f"P(entailment) {links}", **{f"tier{k}": t for k, t in enumerate(it["tiers"], 1)}}
        out.append({"data": data})
    return out


def export_label_studio(store, export, out: str | Path, *, allow_tier4: bool = False) -> dict:
    """``out``: the tasks JSON; the labeling config goes beside it (``<stem>.xml``)."""
    out = Path(out)
    if out.is_dir():
        raise StageError(f"{out}: is a directory; give the tasks JSON file to write")
    items = test_items(store, export)
    atomic_write_bytes(out, json.dumps(tasks(store.run_id, items), ensure_ascii=False, indent=1).encode("utf-8"))
    xml = out.with_suffix(".xml")
    atomic_write_bytes(xml, labeling_config(allow_tier4).encode("utf-8"))
    return {"tasks": str(out), "config": str(xml), "items": len(items)}


def _texts(result: list, name: str) -> str | None:
    for r in result:
        if isinstance(r, dict) and r.get("from_name") == name:
            v = r.get("value") or {}
            text = v.get("text") if isinstance(v, dict) else None
            if isinstance(text, list) and all(isinstance(t, str) for t in text):
                return "\n".join(text)
            if isinstance(text, str):
                return text
    return None


def _choice(result: list, name: str) -> str | None:
    for r in result:
        if isinstance(r, dict) and r.get("from_name") == name:
            v = r.get("value") or {}
            ch = v.get("choices") if isinstance(v, dict) else None
            if isinstance(ch, list) and ch and isinstance(ch[0], str):
                return ch[0]
    return None


def _latest(annotations) -> dict | None:
    done = [a for a in annotations or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), str(a.get("id")))) if done else None


def submissions(path: Path, doc: list, run_id: str):
    """Label Studio's JSON export (a list of tasks with annotations) -> submissions; the latest
    annotation of a task counts. An export none of whose tasks belong to this run is refused."""
    mine = [t for t in doc if isinstance(t, dict) and isinstance(t.get("data"), dict)
            and t["data"].get(RUN_KEY) == run_id]
    if doc and not mine:
        runs = sorted({str(t["data"].get(RUN_KEY)) for t in doc if isinstance(t, dict) and isinstance(t.get("data"), dict)})
        raise StageError(f"{path}: a Label Studio export of another project: no task has {RUN_KEY}={run_id!r} "
                         f"(found {runs[:3] or 'no task data'})")
    for n, t in enumerate(doc, 1):
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            yield n, f"task {n} is not a Label Studio task (no data object)"
            continue
        d = t["data"]
        if d.get(RUN_KEY) != run_id:
            yield n, f"task {n} belongs to run {d.get(RUN_KEY)!r}, not {run_id!r}"
            continue
        a = _latest(t.get("annotations"))
        if a is None:
            yield n, f"task {n} has no annotation"
            continue
        res = a.get("result") if isinstance(a.get("result"), list) else []
        tiers = [_texts(res, f"tier{k}") for k in range(1, 5)]
        tiers = [d.get(f"tier{k}") if v is None else v for k, v in enumerate(tiers, 1)]
        marks = [{"valid": True, "not valid": False}.get(_choice(res, f"valid{k}")) for k in range(1, 4)] + [None]
        who = a.get("completed_by")
        who = who.get("email") or who.get("id") if isinstance(who, dict) else who
        yield n, {"chain_id": str(d.get("chain_id") or "").strip(), "id": str(d.get("test_id") or ""),
                  "tiers": tiers, "decision": _choice(res, "decision") or "keep", "reason": _texts(res, "reason") or "",
                  "note": _texts(res, "note") or "", "marks": marks,
                  "reviewer": None if who is None else str(who), "reviewed_at": a.get("updated_at") or a.get("created_at")}

// The review page: one item at a time, every change saved to localStorage at once. Text is
// only ever set through .value / .textContent, so a caption holding markup shows as text.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("curation-data").textContent);
  const KEY = "hierarcaps-curation/" + DATA.page_id;
  const N = DATA.items.length, EDITABLE = DATA.allow_tier4 ? 4 : 3;
  const $ = (id) => document.getElementById(id);
  let state = load();

  function load() {
    try {
      const s = JSON.parse(localStorage.getItem(KEY) || "null");
      if (s && s.items) return s;
    } catch (e) { console.warn("unreadable saved state, starting afresh", e); }
    return { reviewer: "", pos: 0, unreviewed: false, items: {} };
  }
  function save() { localStorage.setItem(KEY, JSON.stringify(state)); }
  function now() { return new Date().toISOString(); }
  function item() { return DATA.items[state.pos]; }
  function work(it) {
    let w = state.items[it.chain_id];
    if (!w) {
      w = { after: it.tiers.slice(), marks: [null, null, null, true], decision: null, reason: "", note: "", time: null };
      state.items[it.chain_id] = w;
    }
    return w;
  }
  function touch(w) { w.time = now(); w.reviewer = state.reviewer; save(); }
  function reviewed(it) { const w = state.items[it.chain_id]; return !!(w && w.decision); }

  function render() {
    const it = item(), w = work(it);
    $("position").textContent = `Item ${state.pos + 1} of ${N} (test id ${it.id})`;
    const img = $("image"), miss = $("image-missing");
    img.hidden = false; miss.hidden = true;
    img.onerror = () => { img.hidden = true; miss.hidden = false; miss.textContent = "image not available: " + (it.image_url || "none"); };
    if (it.image) img.src = it.image; else img.onerror();
    $("meta").textContent = it.image_url;
    const ol = $("tiers");
    ol.replaceChildren();
    for (let k = 0; k < 4; k++) {
      if (k > 0) {
        const p = it.links[k - 1], d = document.createElement("div");
        d.className = "link" + (p !== null && p < DATA.threshold ? " low" : "");
        d.textContent = p === null ? `tier ${k + 1} \u21d2 tier ${k}: not judged`
          : `tier ${k + 1} \u21d2 tier ${k}: P(entailment) ${p.toFixed(3)}`;
        ol.appendChild(d);
      }
      const li = document.createElement("li"), row = document.createElement("div");
      row.className = "tier-row";
      const input = document.createElement("input");
      input.id = "tier" + (k + 1); input.value = w.after[k]; input.readOnly = k >= EDITABLE;
      input.setAttribute("aria-label", "tier " + (k + 1));
      input.classList.toggle("edited", w.after[k] !== it.tiers[k]);
      input.addEventListener("input", () => {
        w.after[k] = input.value;
        const changed = input.value !== it.tiers[k];
        input.classList.toggle("edited", changed);
        if (changed) { w.marks[k] = false; if (!w.decision) w.decision = "keep"; }
        touch(w); renderMarks(); renderStatus();
      });
      row.appendChild(input);
      if (k < 3) {
        const b = document.createElement("button");
        b.className = "mark"; b.id = "mark" + (k + 1); b.title = String(k + 1);
        b.addEventListener("click", () => toggleMark(k));
        row.appendChild(b);
      }
      li.appendChild(row); ol.appendChild(li);
    }
    $("reason").value = w.reason; $("note").value = w.note;
    renderMarks(); renderStatus();
  }
  function renderMarks() {
    const w = work(item());
    for (let k = 0; k < 3; k++) {
      const b = $("mark" + (k + 1)), m = w.marks[k];
      b.className = "mark" + (m === true ? " valid" : m === false ? " invalid" : "");
      b.textContent = m === true ? "valid \u2713" : m === false ? "not valid \u2717" : "mark valid?";
    }
  }
  function renderStatus() {
    const w = work(item());
    $("status").textContent = w.decision === "keep" ? "kept" : w.decision === "drop" ? "dropped" : "not reviewed";
    $("keep").classList.toggle("on", w.decision === "keep");
    $("drop").classList.toggle("on", w.decision === "drop");
    const done = DATA.items.filter(reviewed).length;
    $("progress").textContent = `${done} / ${N} reviewed`;
  }
  function toggleMark(k) {
    const it = item(), w = work(it);
    if (w.after[k] !== it.tiers[k]) w.marks[k] = false;        // an edited tier was not valid as generated
    else w.marks[k] = w.marks[k] === false;                   // unmarked or valid -> not valid -> valid
    touch(w); renderMarks();
  }
  function decide(d) { const w = work(item()); w.decision = d; touch(w); renderStatus(); }
  function markValid() {
    const it = item(), w = work(it);
    for (let k = 0; k < 3; k++) w.marks[k] = w.after[k] === it.tiers[k];
    w.decision = "keep"; touch(w); go(1);
  }
  function go(step) {
    let p = state.pos;
    for (let i = 0; i < N; i++) {
      p += step;
      if (p < 0 || p >= N) return;
      if (!state.unreviewed || !reviewed(DATA.items[p])) break;
      if (i === N - 1) return;
    }
    state.pos = p; save(); render();
  }
  function download() {
    const items = DATA.items.filter(reviewed).map((it) => {
      const w = state.items[it.chain_id];
      return { chain_id: it.chain_id, id: it.id, before: it.tiers, after: w.after, marks: w.marks,
        decision: w.decision, reason: w.reason, note: w.note, reviewer: w.reviewer || state.reviewer, time: w.time };
    });
    const doc = { format: "hierarcaps-curation-review", version: 1, run_id: DATA.run_id, page_id: DATA.page_id,
      reviewer: state.reviewer, exported_at: now(), items: items };
    const a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" }));
    const who = (state.reviewer || "reviewer").replace(/[^A-Za-z0-9_-]+/g, "_");
    a.download = `curation-${DATA.run_id}-${who}.json`;
    document.body.appendChild(a); a.click(); a.remove();
  }

  $("run").textContent = DATA.run_id;
  $("reviewer").value = state.reviewer;
  $("reviewer").addEventListener("input", (e) => { state.reviewer = e.target.value; save(); });
  $("unreviewed").checked = state.unreviewed;
  $("unreviewed").addEventListener("change", (e) => { state.unreviewed = e.target.checked; save(); });
  $("reason").addEventListener("input", (e) => { const w = work(item()); w.reason = e.target.value; touch(w); });
  $("note").addEventListener("input", (e) => { const w = work(item()); w.note = e.target.value; touch(w); });
  $("keep").addEventListener("click", () => decide("keep"));
  $("drop").addEventListener("click", () => { decide("drop"); $("reason").focus(); });
  $("next").addEventListener("click", () => go(1));
  $("prev").addEventListener("click", () => go(-1));
  $("download").addEventListener("click", download);
  document.addEventListener("keydown", (e) => {
    const t = e.target, typing = t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "checkbox");
    if (e.key === "Escape") { t.blur(); return; }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const act = { n: () => go(1), ArrowRight: () => go(1), p: () => go(-1), ArrowLeft: () => go(-1),
      v: markValid, k: () => decide("keep"), e: () => $("tier1").focus(),
      d: () => { decide("drop"); $("reason").focus(); },
      1: () => toggleMark(0), 2: () => toggleMark(1), 3: () => toggleMark(2) }[e.key];
    if (act) { e.preventDefault(); act(); }
  });
  if (state.pos >= N) state.pos = 0;
  render();
})();

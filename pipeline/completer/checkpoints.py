"""Training checkpoints of H: written into a temp folder and renamed, so a kill never leaves a
half checkpoint; everything loads with ``torch.load(weights_only=True)`` (RNG state is stored as
plain numbers and tensors, never as pickled objects)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..io.atomic import fsync_path  # noqa: F401  (train.py uses it as ck.fsync_path)

STATE = "state.json"     # written last: its presence marks a complete checkpoint


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as lists, numbers and tensors."""
    import torch

    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    st: dict[str, Any] = {"python": [version, list(internal), gauss],
                          "numpy": [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, cached],
                          "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = st["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    out = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE).is_file()]
    return sorted(out, key=lambda p: int(p.name.split("-")[1]))


def drop_partial(*folders: Path) -> None:
    """Half-written checkpoints / final models of killed runs."""
    for parent in folders:
        if parent.is_dir():
            for p in parent.iterdir():
                if p.name.startswith(".tmp-") and p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)


def save(root: Path, step: int, model, optimizer, scheduler, state: dict, keep: int) -> Path:
    import torch

    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / STATE).write_text(json.dumps(state, indent=1))
    for p in tmp.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_path(root)
    for old in checkpoints(root)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load(ckpt: Path, model, optimizer, scheduler, device) -> dict:
    """Restore model, optimizer, scheduler and RNG from ``ckpt``; returns its training state."""
    import torch

    model.load_state_dict(torch.load(ckpt / "model.pt", map_location=device, weights_only=True))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    set_rng_state(torch.load(ckpt / "rng.pt", weights_only=True))
    return json.loads((ckpt / STATE).read_text())

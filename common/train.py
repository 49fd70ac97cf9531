"""The one training loop every stage uses, and its artifacts (history, curves PNG).

A stage supplies `step(model, batch) -> loss` (its loss, mixup, label rules) and
`validate(model) -> dict` (must contain the selection metric); the loop does the rest:
Adam, CosineAnnealingLR stepped per epoch, mixed precision, best-epoch checkpointing.
"""
from __future__ import annotations

import math
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from common import dist, precision
from common.infer import to_model_input
from common.runs import save_csv, save_torch


def autocast(device: torch.device, amp: str):
    """Mixed precision context: amp in {'none', 'bf16', 'fp16', 'auto'} (common/precision.py)."""
    amp = precision.resolve_amp(amp, device)
    if amp == "none":
        return nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return torch.autocast(device_type=device.type, dtype=dtype)


SYNC_EVERY = 25  # batches between host syncs on a GPU (the loss check and progress bar)


def train_epoch(model, loader, step, optimizer, device, amp: str = "none",
                scaler=None, desc: str = "train") -> float:
    """One pass over `loader`; returns the mean loss. Waves arrive in the cache's dtype
    (float16) and become float32 on the device. On a GPU the loss stays on the device and is
    checked every SYNC_EVERY batches, so the host queues work ahead instead of waiting
    for each step; on the CPU it is checked after every batch."""
    model.train()
    total, count = torch.zeros((), device=device), 0
    every = SYNC_EVERY if device.type == "cuda" else 1
    checked = -1  # the last batch whose loss was read back
    bar = tqdm(loader, desc=desc, leave=False, disable=None)  # None: no bar when not a tty
    for i, batch in enumerate(bar):
        batch = [to_model_input(b, device) if b.is_floating_point() else b.to(device)
                 for b in batch]
        with autocast(device, amp):
            loss = step(model, batch)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach().float() * len(batch[0])
        count += len(batch[0])
        if (i + 1) % every == 0:
            bar.set_postfix(loss=f"{check_loss(total, count, desc, checked + 1, i):.4f}")
            checked = i
    return check_loss(total, count, desc, checked + 1, i) if count else 0.0


def check_loss(total: torch.Tensor, count: int, desc: str, first: int, last: int) -> float:
    """Mean loss so far (one host sync); stops the run when it is no longer finite, naming
    the batches since the last check."""
    mean = total.item() / count
    if not math.isfinite(mean):
        where = f"batch {last}" if first >= last else f"batches {first}-{last}"
        raise FloatingPointError(f"{desc}: loss became {mean} in {where}; lower lr or check data")
    return mean


def fit(model, make_loader, step, validate, *, epochs: int, lr: float, t_max: int,
        device, metric: str, ckpt_fn, amp: str = "none", desc: str = "",
        state_path=None, extra: dict | None = None,
        val_from: int = 0) -> tuple[pd.DataFrame, dict]:
    """Train for `epochs`, validating after each; `ckpt_fn(model, row)` saves the best epoch.

    make_loader(epoch) returns the epoch's batches; validate(model) returns a dict of
    validation figures including `metric` (higher is better). Returns (history, best row).
    Epochs before `val_from` (clamped to the last epoch) are not validated: their `metric`
    is NaN, so they are never the best (whole-recording validation costs a third of an
    epoch, and an early epoch is never the best one).
    With `state_path`, everything the next epoch depends on (model, optimizer, scheduler,
    scaler, history, best row and weights, RNG states, the caller's `extra` dict) is saved
    atomically after every epoch; a call that finds that file continues after its last
    completed epoch, so a killed run ends as an uninterrupted one would (make_loader must be
    a pure function of the epoch, as the kit's samplers and crop datasets are).
    """
    if dist.is_main():
        print(precision.describe(amp, device), flush=True)
    amp = precision.resolve_amp(amp, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    loop = {"epoch": 0, "rows": [], "best": {metric: -math.inf}, "best_model": None}
    if state_path is not None and Path(state_path).exists():
        load_state(state_path, parts, loop, extra, ckpt_fn)
        print(f"{desc} resumed after epoch {loop['epoch'] - 1} ({state_path})", flush=True)
    train_model = dist.wrap(model, device)  # DistributedDataParallel under torchrun
    for epoch in range(loop["epoch"], epochs):
        tic = time.time()
        loss = dist.mean(train_epoch(train_model, make_loader(epoch), step, optimizer, device,
                                     amp, scaler, desc=f"{desc} ep{epoch}"))
        current_lr = scheduler.get_last_lr()[0]
        scheduler.step()
        scores = validate(model) if epoch >= min(val_from, epochs - 1) else {metric: math.nan}
        row = {"epoch": epoch, "lr": current_lr, "train_loss": loss, **scores,
               "seconds": round(time.time() - tic, 2)}
        loop["rows"].append(row)
        if row[metric] > loop["best"][metric]:
            loop["best"] = dict(row)
            if state_path is not None:
                loop["best_model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            ckpt_fn(model, loop["best"])
        loop["epoch"] = epoch + 1
        if state_path is not None and dist.is_main():
            save_state(state_path, parts, loop, extra)
        if dist.is_main():
            print(f"{desc} epoch {epoch:2d} loss {loss:.4f} {metric} {row[metric]:.4f} "
                  f"({row['seconds']:.0f}s){' *' if loop['best'].get('epoch') == epoch else ''}",
                  flush=True)
    return pd.DataFrame(loop["rows"]), loop["best"]


def rng_states() -> dict:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_state(path, parts: dict, loop: dict, extra: dict | None) -> None:
    """The training state after an epoch, written atomically (see fit)."""
    state = {k: (v.state_dict() if v is not None else None) for k, v in parts.items()}
    save_torch(path, {**state, "loop": loop, "extra": extra, "rng": rng_states()})


def load_state(path, parts: dict, loop: dict, extra: dict | None, ckpt_fn) -> None:
    """Restore what save_state wrote. The best checkpoint is written again from the saved
    best weights: a kill between writing it and writing the state could have left a later
    epoch's weights there. `extra` is restored before and after, undoing ckpt_fn's side effects."""
    state = torch.load(path, map_location="cpu", weights_only=False)

    def restore_extra():
        if extra is not None:
            extra.clear()
            extra.update(state["extra"] or {})

    loop.update(state["loop"])
    restore_extra()
    if loop["best_model"] is not None:
        parts["model"].load_state_dict(loop["best_model"])
        ckpt_fn(parts["model"], loop["best"])
    restore_extra()
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(state[name])
    set_rng_states(state["rng"])


def save_history_plot(history: pd.DataFrame, path, metric: str) -> Path:
    """PNG of the loss and metric curves, one line per fold."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for fold, grp in history.groupby("fold"):
        axes[0].plot(grp["epoch"], grp["train_loss"], label=f"fold {fold}")
        axes[1].plot(grp["epoch"], grp[metric], label=f"fold {fold}")
    axes[0].set(title="training loss", xlabel="epoch")
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def save_history(history: pd.DataFrame, run_dir, metric: str) -> None:
    save_csv(Path(run_dir) / "history.csv", history)
    save_history_plot(history, Path(run_dir) / "curves.png", metric)

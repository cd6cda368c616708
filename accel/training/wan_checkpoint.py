"""Checkpoints and curves of a pocket-transformer training (:mod:`accel.training.wan`): the saved pipeline folder,
the resume point (weights, moving average, optimizer moments, random states) and the CSV training curves that a
resumed run continues.
"""

from __future__ import annotations

import contextlib
import csv
import shutil
from pathlib import Path

import torch

__all__ = [
    "RESUME_FILE",
    "averaged_weights",
    "keep_rows_until",
    "load_resume",
    "open_curve",
    "save_pipeline",
    "save_resume",
]

RESUME_FILE = "resume.safetensors"


def save_pipeline(pipe, out: Path, base: Path) -> None:
    """The pipeline folder (safetensors), with the base's tokenizer files verbatim (a re-saved tokenizer would
    record where it was loaded from)."""
    pipe.save_pretrained(out, safe_serialization=True)
    for src in (Path(base) / "tokenizer").iterdir():
        shutil.copyfile(src, out / "tokenizer" / src.name)


def save_resume(path: Path, step: int, params: list[torch.nn.Parameter], averaged: list[torch.Tensor] | None,
                opt: torch.optim.Optimizer, gen: torch.Generator, best: float, best_step: int) -> None:  # fmt: skip
    """Everything :func:`accel.training.wan.train` needs to continue after ``step``, written to a temporary file
    then renamed."""
    from safetensors.torch import save_file

    tensors = {"generator": gen.get_state(), "torch_rng": torch.get_rng_state()}  # the latter drives dropout
    if torch.cuda.is_available():
        tensors["cuda_rng"] = torch.cuda.get_rng_state()
    for i, p in enumerate(params):
        tensors[f"param.{i}"] = p.detach()
        if averaged is not None:
            tensors[f"ema.{i}"] = averaged[i]
        for key in ("exp_avg", "exp_avg_sq"):
            if key in opt.state[p]:
                tensors[f"{key}.{i}"] = opt.state[p][key]
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta = {"step": str(step), "best": repr(best), "best_step": str(best_step), "params": str(len(params))}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_resume(path: Path, params: list[torch.nn.Parameter], averaged: list[torch.Tensor] | None,
                opt: torch.optim.Optimizer, gen: torch.Generator) -> tuple[int, float, int]:  # fmt: skip
    """Restore a :func:`save_resume` point in place; the step it was written after, best accuracy and its step."""
    from safetensors import safe_open

    if not path.is_file():
        raise FileNotFoundError(f"no resume point {path} (train with checkpoint_every > 0 first)")
    with safe_open(str(path), framework="pt") as fh:
        meta, names = fh.metadata(), set(fh.keys())
        if int(meta["params"]) != len(params) or ("ema.0" in names) != (averaged is not None):
            raise ValueError(f"{path} was written by a training with other parameters or another --ema setting")
        step = int(meta["step"])
        gen.set_state(fh.get_tensor("generator"))
        torch.set_rng_state(fh.get_tensor("torch_rng"))
        if "cuda_rng" in names and torch.cuda.is_available():
            torch.cuda.set_rng_state(fh.get_tensor("cuda_rng"))
        with torch.no_grad():
            for i, p in enumerate(params):
                p.copy_(fh.get_tensor(f"param.{i}"))
                if averaged is not None:
                    averaged[i].copy_(fh.get_tensor(f"ema.{i}"))
                if f"exp_avg.{i}" in names:
                    opt.state[p] = {"step": torch.tensor(float(step)),
                                    "exp_avg": fh.get_tensor(f"exp_avg.{i}").to(p.device),
                                    "exp_avg_sq": fh.get_tensor(f"exp_avg_sq.{i}").to(p.device)}  # fmt: skip
    return step, float(meta["best"]), int(meta["best_step"])


def keep_rows_until(path: Path, step: int) -> None:
    """Drop the rows of a training curve (CSV with a step column first) logged after ``step``."""
    lines = path.read_text().splitlines() if path.is_file() else []
    if lines:
        head, *rows = lines
        path.write_text("\n".join([head, *(r for r in rows if int(r.split(",")[0]) <= step)]) + "\n")


def open_curve(files: contextlib.ExitStack, path: Path, header: list[str], start: int):
    """A training curve's open file and CSV writer: a fresh file with its header, or (resuming after ``start``)
    the kept rows appended to (a header first if the run was stopped before it reached the disk)."""
    resumed = start > 0 and path.is_file() and path.stat().st_size > 0
    fh = files.enter_context(open(path, "a" if resumed else "w", newline=""))  # noqa: SIM115 (the stack closes it)
    writer = csv.writer(fh)
    if not resumed:
        writer.writerow(header)
        fh.flush()
    return fh, writer


@contextlib.contextmanager
def averaged_weights(params: list[torch.nn.Parameter], averaged: list[torch.Tensor] | None):
    """The parameters hold the moving average inside the block (nothing changes without one)."""
    if averaged is None:
        yield
        return
    raw = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, avg in zip(params, averaged, strict=True):
            p.copy_(avg)
    try:
        yield
    finally:
        with torch.no_grad():
            for p, kept in zip(params, raw, strict=True):
                p.copy_(kept)

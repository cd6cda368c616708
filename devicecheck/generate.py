"""Real ``accel generate`` runs in one process (torch and diffusers import once), with proof of the kernel path.

``python3 devicecheck/generate.py --json OUT.json --device cuda --variants dense,svg2+profile [generate args]``

A variant is a method with ``+`` modifiers: ``tmr`` (``--tmr true``), ``ebc`` (the shipped calibrated threshold
table of the model and method, ``assets/tables/<model>-<method>.json``) and ``profile`` (``--profile``: the run
folder gets a torch.profiler ``trace.json.gz`` of two steady sparse transformer calls). For each run it records the
run's metrics, the kernel dispatch counters of that run (``accel.kernels.dispatch.calls``: which backend each
block-sparse attention and estimation call took) and, for profiled runs, the GPU kernels in the trace: our Triton
kernels (``_fixed_fwd``, ``_varlen_fwd``, ``_estimate_*``) against SDPA's. Then PSNR/SSIM of every variant against the
first dense run of the same size. The last line of stdout is ``GENERATE_JSON {...}`` (also written to ``--json``).

Without an ffmpeg binary (the H200 image has none; imageio-ffmpeg's bundled one is too large to carry) or with
``--no-video``, video.mp4 becomes an empty placeholder; frames.npz (lossless) is still written and compared; a run
too large for frames.npz (over 64 MiB of frames: 720p x 81) keeps its frames as frames_raw.npy for the comparison.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shlex
import sys
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, os.getcwd())
RAW = "frames_raw.npy"  # raw frames of a run too large for frames.npz when there is no ffmpeg

OURS = re.compile(r"_fixed_fwd|_varlen_fwd|_estimate_\w+")
SDPA = re.compile(r"flash|fmha|cudnn|attention", re.IGNORECASE)


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, required=True, help="where the summary JSON goes")
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="pocket-wan")
    p.add_argument("--runs-dir", type=Path, default=Path(os.environ.get("ACCEL_RUNS_DIR", "/tmp/devicecheck-runs")))
    p.add_argument("--variants", default="dense,xattention,xattention+tmr,svg2")
    p.add_argument("--prompt", default="a red circle moves quickly left over a blue background")
    p.add_argument("--method-args", action="append", default=[], metavar="METHOD=ARGS",
                   help="extra generate arguments for one method's variants (one string; repeatable)")  # fmt: skip
    p.add_argument("--no-video", action="store_true", help="write an empty video.mp4 even if ffmpeg is there")
    return p.parse_known_args(argv)


def variant_args(name: str, model: str, method_args: dict[str, list[str]]) -> list[str]:
    method, *mods = name.split("+")
    out = ["--method", method, *method_args.get(method, [])]
    for mod in mods:
        if mod == "tmr":
            out += ["--tmr", "true"]
        elif mod == "ebc":
            from accel.paths import shipped_table

            table = shipped_table(model, method)
            if table is None:
                raise SystemExit(f"no shipped threshold table for {model} / {method}")
            out += ["--threshold-table", str(table)]
        elif mod == "profile":
            out += ["--profile"]
        else:
            raise SystemExit(f"unknown variant modifier {mod!r} in {name!r} (tmr, ebc, profile)")
    return out


def trace_kernels(run_dir: Path) -> dict[str, object] | None:
    """GPU kernels in the run's torch.profiler trace: ours (Triton) and SDPA's, by name and count."""
    path = run_dir / "trace.json.gz"
    if not path.is_file():
        return None
    with gzip.open(path, "rt") as fh:
        events = json.load(fh).get("traceEvents", [])
    kernels = Counter(e.get("name", "") for e in events if e.get("cat") == "kernel")
    ours = {k: n for k, n in kernels.items() if OURS.search(k)}
    sdpa = {k[:80]: n for k, n in kernels.items() if SDPA.search(k) and not OURS.search(k)}
    return {
        "kernel_events": sum(kernels.values()),
        "triton_ours": ours,
        "sdpa": dict(Counter(sdpa).most_common(4)),
        "triton_ran": bool(ours),
    }


def brief(entry: dict) -> str:
    """One line per run: what the trace shows, which backend the kernel calls took, times, density."""
    m = entry.get("metrics") or {}
    parts = []
    tr = entry.get("trace")
    if tr:
        ours = ", ".join(f"{k} {n}" for k, n in (tr.get("triton_ours") or {}).items()) or "none"
        parts.append(f"trace: ours {ours}; SDPA {sum((tr.get('sdpa') or {}).values())} of {tr.get('kernel_events')}")
    parts.append("calls " + (", ".join(f"{k} {n}" for k, n in (entry.get("dispatch") or {}).items()) or "none"))
    if m:
        denoise = (m.get("stages") or {}).get("denoise_s", 0)
        parts.append(f"wall {m.get('wall_s', 0):.2f} s, denoise {denoise:.2f} s, {m.get('tokens')} tokens")
        if m.get("density_mean_sparse") is not None:
            parts.append(f"density {m['density_mean_sparse']:.3f}")
    return " | ".join(parts)


def variant_argvs(args: argparse.Namespace, extra: list[str]) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``accel generate`` argv per variant, each checked against today's parser and method settings (no run)."""
    import contextlib
    import io

    from accel.cli import build_parser
    from accel.cli.flags import method_settings
    from accel.methods import settings_for

    method_args: dict[str, list[str]] = {}
    for given in args.method_args:
        method, sep, text = given.partition("=")
        if not sep:
            raise SystemExit(f"--method-args takes METHOD=ARGS, got {given!r}")
        method_args[method.strip()] = shlex.split(text)
    argvs, errors = {}, {}
    for name in [v for v in args.variants.split(",") if v]:
        err = io.StringIO()
        try:
            argv = ["generate", "--model", args.model, "--device", args.device, "--out-dir", str(args.runs_dir),
                    "--prompt", args.prompt, *variant_args(name, args.model, method_args), *extra]  # fmt: skip
            with contextlib.redirect_stderr(err):
                ns = build_parser().parse_args(argv)
            settings_for(ns.method, method_settings(ns.method, ns))
            argvs[name] = argv
        except SystemExit as exc:
            errors[name] = (err.getvalue().strip().splitlines() or [str(exc.code)])[-1]
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    return argvs, errors


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    import accel.kernels.dispatch as kd
    import accel.runs
    import accel.runs.writer
    from accel.cli import main as cli

    no_ffmpeg = args.no_video
    if not no_ffmpeg:
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except Exception:
            no_ffmpeg = True
    if no_ffmpeg:
        print("no ffmpeg (or --no-video): video.mp4 becomes an empty placeholder, frames.npz is kept", flush=True)

        def placeholder(frames, path, fps=16, crf=12):
            Path(path).write_bytes(b"")
            if frames.nbytes > accel.runs.LOSSLESS_MAX_BYTES:  # no frames.npz either: keep raw frames to compare
                np.save(Path(path).with_name(RAW), frames)

        accel.runs.writer.write_h264 = placeholder  # where RunWriter.write_video looks it up

    summary: dict[str, object] = {"device": args.device, "model": args.model, "extra": extra}
    runs: dict[str, str] = {}
    argvs, errors = variant_argvs(args, extra)
    for name, err in errors.items():
        summary[name] = {"rc": 2, "error": err}
        print(f"== {name}: not run, invalid: {err}", flush=True)
    for name, argv_ in argvs.items():
        before = set(args.runs_dir.glob("*")) if args.runs_dir.exists() else set()
        calls0 = Counter(kd.calls)
        t = time.perf_counter()
        try:
            rc = cli(argv_)
        except Exception:
            traceback.print_exc()
            rc = -1
        entry: dict[str, object] = {"rc": rc, "process_wall_s": round(time.perf_counter() - t, 2)}
        entry["dispatch"] = {
            f"{op}/{be}": n - calls0.get((op, be), 0) for (op, be), n in kd.calls.items() if n - calls0.get((op, be), 0)
        }
        new = sorted(p for p in set(args.runs_dir.glob("*")) - before if p.is_dir() and not p.name.startswith("."))
        if new:
            run = new[-1]
            runs[name] = run.name
            entry["run"] = run.name
            metrics_file = run / "metrics.json"
            m = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
            keep = ("wall_s", "stages", "tokens", "grid", "dtype", "device", "density_mean_sparse")
            entry["metrics"] = {k: m[k] for k in keep if k in m}
            try:
                entry["trace"] = trace_kernels(run)
            except Exception as exc:
                entry["trace"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        summary[name] = entry
        print(f"== {name}: rc={rc} {brief(entry)}", flush=True)

    dense = runs.get("dense") or next((r for n, r in runs.items() if n.startswith("dense")), None)
    if dense:
        from accel.metrics import compare_videos
        from accel.runs import RunStore

        store = RunStore(args.runs_dir)

        def frames(run: str):
            raw = args.runs_dir / run / RAW
            return np.load(raw, mmap_mode="r") if raw.is_file() else store.load(run).frames()

        for name, run in runs.items():
            if run == dense:
                continue
            try:
                a, b = frames(dense), frames(run)
                # long 720p videos: an even subset of at most 16 frames (SSIM of 81 such frames takes ~20 s of CPU)
                pick = np.unique(np.linspace(0, len(a) - 1, min(len(a), 16)).round().astype(int))
                q = compare_videos(np.asarray(a[pick]), np.asarray(b[pick]))
                summary[name].update(psnr_vs_dense=q.get("psnr_mean"), ssim_vs_dense=q.get("ssim_mean"),
                                     frames_compared=len(pick))  # fmt: skip
                print(f"== compare dense vs {name} ({len(pick)} frames): PSNR {q.get('psnr_mean')}, "
                      f"SSIM {q.get('ssim_mean')}", flush=True)  # fmt: skip
            except Exception as exc:
                print(f"== compare dense vs {name} failed: {type(exc).__name__}: {exc}", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1, default=str))
    print("GENERATE_JSON " + json.dumps(summary, default=str), flush=True)
    failed = [n for n, e in summary.items() if isinstance(e, dict) and e.get("rc") != 0]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

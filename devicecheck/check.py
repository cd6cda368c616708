"""The project's one-call device check: every GPU measurement still owed, in the priority order of docs/gpu-ledger.md.

On the CPU machine, once: ``bash devicecheck/stage.sh`` (wheels the H200 image lacks into the git-ignored .whl/).
On the device machine (run tool: ``carry [".whl"]``, ``timeout_s 590``)::

    python3 devicecheck/check.py

Hard deadline 540 s (``--deadline-s``); every step has its own budget and a step that finishes early passes its
spare time on (a step gets its budget plus whatever the steps before it left unused, never time that the steps
after it are owed; a step that cannot get 12 s is skipped with the reason). A failed or timed-out step never
stops the check. At most 8 files land in ``--out`` (default ``$OUT``): one raw log per group of steps and
``summary.json``; the compact summary is printed last, also when the check is interrupted (SIGTERM/SIGINT).

``--dry-run`` (or ``DEVICE_CHECK_DRY=1``) runs every step's command on CPU: the GPU command line itself where it
exits early without CUDA (so its flags are checked against today's argparse), plus a tiny-shape run of the same
script (Triton interpreter, tiny models, a few steps), in about a minute: a broken command is found before a GPU
is spent. ``--only a,b`` runs a subset (a narrowed rerun); ``--list`` prints the plan.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEADLINE_S = 540
DRY_DEADLINE_S = 250
RESERVE_S = 8  # kept back for the summary
MIN_STEP_S = 12
MAX_FILES = 8
SUMMARY = "summary.json"


@dataclass
class Step:
    name: str
    item: int  # the docs/gpu-ledger.md item it serves (1 = highest priority)
    budget: int  # seconds
    log: str  # file under OUT (steps may share one)
    what: str
    cmds: list[list[str]] = field(default_factory=list)
    env: dict[str, str | None] = field(default_factory=dict)
    skip: str | None = None  # reason when the step cannot run at all
    result: dict = field(default_factory=dict)


# GPU and dry-run command lines per step: "py" is this interpreter, {work} the scratch folder. A dry run runs the
# GPU line too where the script exits early without CUDA (its flags are then checked against today's argparse).
GEN = "py devicecheck/generate.py --device {dev} --json {work}/{name}.json --runs-dir {work}/runs-{name}"
GEN_TINY = "--height 64 --width 64 --frames 5 --steps 3 --no-video"
TRAIN = (
    "py -m accel.training.wan --vae assets/pocket-wan/vae --latents {work}/train/lat.safetensors --out {work}/train/wan"
)
E2E_720P = (
    "py -m accel.kernels.bench_e2e --resolutions 720p --densities 0.25 --kinds local xattention --warmup 1 --iters 1"
)
PLAN = [
    # name, ledger item, budget s (GPU, dry), log, what, GPU commands, dry-run commands, TRITON_INTERPRET=1 in dry run
    ("env", 1, (40, 20), "env.log", "versions, GPU, imports (the staged wheels first on PYTHONPATH)",
     ["py devicecheck/env.py"], ["py devicecheck/env.py"], False),
    ("validate", 1, (0, 25), "env.log", "the GPU command lines against today's CLIs, nothing run (dry run only)",
     [], ["py devicecheck/check.py --validate"], False),
    ("pytest_gpu", 1, (60, 20), "pytest.log", "CUDA-only kernel tests (-m gpu: the interpreter cases are deselected)",
     ["py -m pytest -q -m gpu tests/test_kernels_triton.py -p no:cacheprovider -rfEs"],
     ["py -m pytest -q -m gpu tests/test_kernels_triton.py -p no:cacheprovider -rfEs"], False),
    ("bench", 1, (65, 30), "bench.log", "accel.kernels.bench at Wan2.1-1.3B 480p/720p, uniform + structured inputs",
     ["py -m accel.kernels.bench --shapes 1.3b-480p 1.3b-720p --warmup 2 --iters 8"],
     ["py -m accel.kernels.bench --shapes 1.3b-480p 1.3b-720p --warmup 2 --iters 8",
      "py -m accel.kernels.bench --interpret --inputs structured --densities 1.0 0.25"], True),
    ("sweep", 1, (68, 30), "sweep.log",
     "full-size correctness, SDPA backends, tile configs, host overhead, varlen vs fixed, estimation",
     ["py devicecheck/sweep.py --deadline-s {budget}"], ["py devicecheck/sweep.py --tiny --deadline-s {budget}"], True),
    ("generate", 1, (60, 40), "generate.log",
     "accel generate on pocket-wan per method (defaults), PSNR vs dense, profiled runs show the Triton kernels",
     [GEN + " --variants dense,xattention,xattention+tmr,svg2,xattention+profile,svg2+profile"],
     [GEN + " --variants dense,xattention,xattention+tmr,svg2,xattention+profile,svg2+profile " + GEN_TINY
      + " '--method-args=xattention=--warmup-steps 1'"
      + " '--method-args=svg2=--first-times-fp 0 --kmeans-init-iters 3'"], False),
    ("bench_e2e", 1, (50, 30), "e2e.log", "bench_e2e 480p: densities 0.5/0.25/0.1 x random/local/xattention",
     ["py -m accel.kernels.bench_e2e --resolutions 480p --warmup 1 --iters 2"],
     ["py -m accel.kernels.bench_e2e --resolutions 480p --warmup 1 --iters 2",
      "py -m accel.kernels.bench_e2e --interpret --densities 0.25 --kinds local"], True),
    ("flex", 2, (45, 10), "bench.log", "FlexAttention beside Triton and SDPA per density, 1.3B 480p structured",
     ["py -m accel.kernels.bench --shapes 1.3b-480p --inputs structured --flex --warmup 2 --iters 8"],
     ["py -m accel.kernels.bench --shapes 1.3b-480p --inputs structured --flex --warmup 2 --iters 8"], False),
    ("train", 3, (32, 25), "train.log", "accel.training.wan --device cuda: a new latent cache, then a short training",
     ["mkdir -p {work}/train", TRAIN + " --device cuda --init assets/pocket-wan --clips 512 --cache-frames 17 "
      "--frames 17 --size 128 --steps 150 --batch 32 --workers 12 --log-every 25", "cat {work}/train/wan/loss.csv"],
     ["mkdir -p {work}/train", TRAIN + " --device cpu --init assets/pocket-wan --clips 4 --cache-frames 17 "
      "--frames 17 --size 32 --steps 2 --batch 2 --workers 2 --log-every 1", "cat {work}/train/wan/loss.csv"], False),
    ("generate_720p", 4, (62, 25), "generate.log",
     "pocket-wan 1280x720x81 (75,600 tokens, 8 steps): dense vs XAttention+TMR+EBC with a profiler trace",
     [GEN + " --variants dense,xattention+tmr+ebc+profile --height 720 --width 1280 --frames 81 --steps 8 "
      "--no-masks '--method-args=xattention=--warmup-steps 2'"],
     [GEN + " --variants dense,xattention+tmr+ebc+profile --height 64 --width 112 --frames 5 --steps 3 --no-video "
      "'--method-args=xattention=--warmup-steps 1'"], False),
    ("bench_e2e_720p", 4, (50, 15), "e2e.log", "bench_e2e 720p at density 0.25 (local and xattention masks)",
     [E2E_720P], [E2E_720P],
     True),
]  # fmt: skip


def plan(dry: bool, work: Path) -> list[Step]:
    py = sys.executable or "python3"
    steps = []
    for name, item, budgets, log, what, gpu_cmds, dry_cmds, interp in PLAN:
        if name == "validate" and not dry:
            continue
        fill = {"work": str(work), "dev": "cpu" if dry else "cuda", "name": name, "budget": "{budget}"}
        cmds = [
            [py if a == "py" else a for a in shlex.split(c.format(**fill))] for c in (dry_cmds if dry else gpu_cmds)
        ]
        env = {"TRITON_INTERPRET": "1"} if dry and interp else {}
        steps.append(Step(name, item, budgets[1] if dry else budgets[0], log, what, cmds, env))
    by = {s.name: s for s in steps}
    if not (ROOT / "assets/pocket-wan/vae").is_dir():
        by["train"].skip = "assets/pocket-wan/vae missing"
    return steps


def _load(path: Path):
    """A devicecheck script as a module (the folder is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"devicecheck_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def validate(steps: list[Step]) -> list[str]:
    """Check the GPU command lines against today's entry points without running them (imports torch and accel).

    ``accel.kernels.bench`` / ``accel.kernels.bench_e2e`` / ``sweep.py`` through their argparse; ``generate.py`` per
    variant through ``accel generate``'s parser and method settings; ``accel.training.wan`` through its ``main`` with
    the caching and the training replaced by no-ops. Returns one line per command, ``OK`` or ``BAD``.
    """
    import contextlib
    import io
    from unittest import mock

    lines = []
    for s in steps:
        for cmd in s.cmds:
            argv = [a.replace("{budget}", "100") for a in cmd[1:]]
            what, err = shlex.join(argv)[:110], io.StringIO()
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    if argv[:2] == ["-m", "accel.kernels.bench"]:
                        import accel.kernels.bench

                        accel.kernels.bench.parse(argv[2:])
                    elif argv[:2] == ["-m", "accel.kernels.bench_e2e"]:
                        import accel.kernels.bench_e2e

                        accel.kernels.bench_e2e.parse(argv[2:])
                    elif argv[:2] == ["-m", "accel.training.wan"]:
                        import accel.training.wan as tw

                        done = {"loss": 0.0, "seconds": 0.0, "prep_s": 0.0}
                        with mock.patch.object(tw, "cache_latents"), mock.patch.object(tw, "train", return_value=done):
                            tw.main(argv[2:])
                    elif argv[:1] == ["devicecheck/sweep.py"]:
                        _load(ROOT / argv[0]).parse(argv[1:])
                    elif argv[:1] == ["devicecheck/generate.py"]:
                        gen = _load(ROOT / argv[0])
                        _, bad = gen.variant_argvs(*gen.parse(argv[1:]))
                        if bad:
                            raise ValueError("; ".join(f"{k}: {v}" for k, v in bad.items()))
                    elif argv[:2] == ["-m", "pytest"]:
                        if not all((ROOT / a).is_file() for a in argv if a.startswith("tests/")):
                            raise FileNotFoundError("test file missing")
                    else:
                        continue  # env.py, mkdir, cat: nothing to check
                lines.append(f"OK   {s.name}: {what}")
            except SystemExit as exc:
                lines.append(f"BAD  {s.name}: {what}: {(err.getvalue().strip().splitlines() or [exc.code])[-1]}")
            except Exception as exc:
                lines.append(f"BAD  {s.name}: {what}: {type(exc).__name__}: {exc}"[:400])
    return lines


# -- running ------------------------------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


def on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def install_wheels(whl: Path, site: Path) -> list[str]:
    """Unpack the staged wheels into ``site`` (a wheel is a zip; purelib/platlib only): no pip needed."""
    lines = []
    wheels = sorted(whl.glob("*.whl"))
    if not wheels:
        return [f"no wheels in {whl} (run: bash devicecheck/stage.sh on the CPU machine)"]
    site.mkdir(parents=True, exist_ok=True)
    for w in wheels:
        try:
            with zipfile.ZipFile(w) as z:
                for name in z.namelist():
                    parts = name.split("/")
                    if parts[0].endswith(".data"):
                        if len(parts) < 3 or parts[1] not in ("purelib", "platlib"):
                            continue
                        name_out = "/".join(parts[2:])
                    else:
                        name_out = name
                    if not name_out or name_out.endswith("/"):
                        continue
                    target = site / name_out
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(z.read(name))
            lines.append(f"unpacked {w.name}")
        except Exception as exc:
            lines.append(f"FAILED to unpack {w.name}: {type(exc).__name__}: {exc}")
    return lines


def child_env(work: Path, extra: dict[str, str | None]) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OUT", None)  # nothing but this script writes into the returned folder
    paths = [str(work / "site"), str(ROOT / ".whl" / "py"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(
        PYTHONPATH=os.pathsep.join(paths),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
        TOKENIZERS_PARALLELISM="false",
        ACCEL_RUNS_DIR=str(work / "runs"),
        ACCEL_KERNELS="auto",
    )
    env.pop("TRITON_INTERPRET", None)
    for key, val in extra.items():
        if val is None:
            env.pop(key, None)
        else:
            env[key] = val
    return env


def stop(proc: subprocess.Popen) -> None:
    """End the step's process group (only what this script started)."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_step(step: Step, out: Path, work: Path, budget: float) -> None:
    log = out / step.log
    offset = log.stat().st_size if log.exists() else 0
    t0 = time.monotonic()
    end = t0 + budget
    rcs: list[object] = []
    env = child_env(work, step.env)
    with open(log, "ab") as fh:
        for cmd in step.cmds:
            remaining = end - time.monotonic()
            if remaining < 3:
                rcs.append("no time")
                fh.write(f"### {step.name}: no time left for {shlex.join(cmd)}\n".encode())
                break
            cmd = [c.replace("{budget}", str(max(5, int(remaining) - 10))) for c in cmd]
            fh.write(f"### {step.name} (budget {remaining:.0f} s): {shlex.join(cmd)}\n".encode())
            fh.flush()
            t = time.monotonic()
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                rc: object = proc.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                stop(proc)
                rc = "timeout"
            except BaseException:
                stop(proc)
                fh.write(f"### {step.name}: interrupted\n".encode())
                raise
            fh.write(f"### rc={rc} after {time.monotonic() - t:.1f} s\n".encode())
            fh.flush()
            rcs.append(rc)
    status = "ok" if all(r == 0 for r in rcs) else "timeout" if "timeout" in rcs else "fail"
    step.result = {
        "status": status,
        "rcs": rcs,
        "seconds": round(time.monotonic() - t0, 1),
        "budget_s": round(budget),
        "log": step.log,
    }
    with open(log, "rb") as fh:
        fh.seek(offset)
        step.result["_text"] = fh.read().decode("utf-8", errors="replace")


# -- reading the logs ---------------------------------------------------------------------------------------------
def last_json(text: str, tag: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith(tag + " "):
            try:
                return json.loads(line[len(tag) + 1 :])
            except json.JSONDecodeError:
                return None
    return None


BENCH_HEAD = re.compile(r"^(?P<shape>\S.*?): L=(?P<L>\d+), .*?(?P<kind>uniform|structured) inputs")
BENCH_EST = re.compile(r"estimation \(S=(?P<S>\d+), B=\d+\)\s+(?P<ms>[\d.]+) ms\s+=\s+(?P<pct>[\d.]+)% of dense")
BENCH_ROW = re.compile(
    r"^\s+(?P<d>\d+\.\d+)\s+(?P<actual>\d+\.\d+)\s+\S+\s+(?P<ms>[\d.]+)\s+[\d.]+\s+\S+\s+(?P<vs>[\d.]+)x\s*$"
)
E2E_HEAD = re.compile(r"^(?P<res>\S+): latent \S+ -> (?P<tokens>\d+) tokens")
E2E_SHARE = re.compile(r"attention\s+[\d.]+ ms = (?P<share>[\d.]+)% of the call")
E2E_ROW = re.compile(
    r"^\s+(?P<kind>random|local|xattention)\s+(?P<d>[\d.]+)\s+(?P<ms>[\d.]+)\s+(?P<speedup>[\d.]+)x\s+[\d.]+\s+"
    r"(?P<attnx>[\d.]+)x\s+(?P<ideal>[\d.]+)x\s+(?P<meas>[\d.]+)x"
)


def parse_bench(text: str) -> list[dict]:
    rows, head = [], None
    for line in text.splitlines():
        if m := BENCH_HEAD.match(line):
            head = m.groupdict()
        elif head and (m := BENCH_EST.search(line)):
            rows.append({**head, "est_frac": float(m["pct"]) / 100, "stride": int(m["S"])})
        elif head and (m := BENCH_ROW.match(line)):
            rows.append(
                {
                    **head,
                    "density": float(m["d"]),
                    "actual": float(m["actual"]),
                    "ms": float(m["ms"]),
                    "vs_sdpa": float(m["vs"]),
                }
            )
    return rows


def parse_e2e(text: str) -> list[dict]:
    rows, head = [], None
    for line in text.splitlines():
        if m := E2E_HEAD.match(line):
            head = {"res": m["res"], "tokens": int(m["tokens"])}
        elif head and (m := E2E_SHARE.search(line)):
            head["attn_share"] = float(m["share"]) / 100
        elif head and (m := E2E_ROW.match(line)):
            rows.append(
                {
                    **head,
                    "kind": m["kind"],
                    "density": float(m["d"]),
                    "speedup": float(m["speedup"]),
                    "amdahl_ideal": float(m["ideal"]),
                    "amdahl_measured": float(m["meas"]),
                }
            )
    return rows


def targets(steps: dict[str, Step], parsed: dict) -> list[dict]:
    """The issue-22 targets, each PASS / FAIL / MEASURED / NO DATA with the numbers behind it."""
    out = []

    def add(name, status, value):
        out.append({"target": name, "status": status, "value": value})

    bench = parsed.get("bench_rows", [])
    dense = [r for r in bench if r.get("density") == 1.0]
    if dense:
        worst = min(dense, key=lambda r: r["vs_sdpa"])
        add(
            "dense kernel >= 0.90x SDPA flash",
            "PASS" if worst["vs_sdpa"] >= 0.90 else "FAIL",
            f"worst {worst['vs_sdpa']:.2f}x ({worst['shape']} {worst['kind']}), "
            + ", ".join(f"{r['shape'].split()[-1]} {r['kind'][:4]} {r['vs_sdpa']:.2f}x" for r in dense),
        )
    else:
        add("dense kernel >= 0.90x SDPA flash", "NO DATA", "bench.log has no density-1.0 rows")
    sparse = [r for r in bench if "density" in r and r["density"] < 1.0 and r["actual"] > 0]
    if sparse:
        ratios = [(r["vs_sdpa"] * r["actual"] / 0.85, r) for r in sparse]  # >= 1 means the target is met
        ok = sum(x >= 1 for x, _ in ratios)
        _x, w = min(ratios, key=lambda t: t[0])
        add(
            "density d: >= 0.85/d x SDPA flash",
            "PASS" if ok == len(ratios) else "FAIL",
            f"{ok}/{len(ratios)} rows met; worst {w['shape'].split()[-1]} {w['kind']} d={w['actual']:.2f}: "
            f"{w['vs_sdpa']:.2f}x vs {0.85 / w['actual']:.2f}x",
        )
    else:
        add("density d: >= 0.85/d x SDPA flash", "NO DATA", "bench.log has no sparse rows")
    sw = parsed.get("sweep") or {}
    if "480p.varlen.ms" in sw and "480p.fixed_same_density.ms" in sw:
        r = sw["480p.varlen.ms"] / sw["480p.fixed_same_density.ms"]
        add(
            "SVG2 varlen <= 1.3x fixed at equal density",
            "PASS" if r <= 1.3 else "FAIL",
            f"{r:.2f}x at density {sw.get('480p.varlen.density', float('nan')):.3f}",
        )
    else:
        add("SVG2 varlen <= 1.3x fixed at equal density", "NO DATA", "sweep gave no varlen numbers")
    est = [r for r in bench if "est_frac" in r]
    if est:
        worst = max(est, key=lambda r: r["est_frac"])
        add(
            "estimation at stride 16 <= 6% of dense SDPA",
            "PASS" if worst["est_frac"] <= 0.06 else "FAIL",
            f"worst {worst['est_frac']:.1%} (stride {worst['stride']}, {worst['shape']} {worst['kind']})",
        )
    else:
        add("estimation at stride 16 <= 6% of dense SDPA", "NO DATA", "bench.log has no estimation line")
    errs = {
        k: sw[k]
        for k in ("rel_err_dense_vs_sdpa_fp32", "rel_err_d0.25_vs_reference", "480p.varlen.rel_err")
        if isinstance(sw.get(k), (int, float))
    }
    if errs:
        ok = all(v <= 1e-2 for v in errs.values()) and sw.get("empty_row_zero") is True
        add(
            "bf16 rel err <= 1e-2 vs fp32 (same mask), empty rows zero",
            "PASS" if ok else "FAIL",
            ", ".join(f"{k.replace('rel_err_', '')} {v:.1e}" for k, v in errs.items())
            + f", empty rows zero: {sw.get('empty_row_zero')}",
        )
    else:
        add("bf16 rel err <= 1e-2 vs fp32 (same mask), empty rows zero", "NO DATA", "sweep gave no errors")
    e2e = [r for r in parsed.get("e2e_rows", []) if abs(r["density"] - 0.25) < 1e-6]
    if e2e:
        add(
            "bench_e2e speedup at density 0.25 (attention share, Amdahl bound)",
            "MEASURED",
            "; ".join(
                f"{r['res']} {r['kind']} {r['speedup']:.2f}x (share {r.get('attn_share', 0):.0%}, "
                f"Amdahl ideal {r['amdahl_ideal']:.2f}x)"
                for r in e2e
            ),
        )
    else:
        add("bench_e2e speedup at density 0.25 (attention share, Amdahl bound)", "NO DATA", "no e2e rows")
    gens = {k: v for k in ("generate", "generate_720p") for v in [parsed.get(k)] if v}
    traced = [(f"{k}:{n}", e) for k, g in gens.items() for n, e in g.items() if isinstance(e, dict) and "+profile" in n]
    if traced:
        cpu = all(g.get("device") == "cpu" for g in gens.values())
        ran = [n for n, e in traced if (e.get("trace") or {}).get("triton_ran")]
        fails = [n for n, e in traced if e.get("rc") != 0]
        status = "N/A (cpu)" if cpu else "PASS" if len(ran) == len(traced) and not fails else "FAIL"
        add(
            "accel generate --device cuda per method, Triton kernels in the trace",
            status,
            f"{len(ran)}/{len(traced)} profiled runs show our Triton kernels; failed runs: {fails or 'none'}",
        )
    else:
        add("accel generate --device cuda per method, Triton kernels in the trace", "NO DATA", "no profiled runs")
    return out


HIGHLIGHT = {
    "env": re.compile(
        r"^(versions|python|cuda|gpu|capability|torch_flex|nvidia_smi|ffmpeg|hf_cache|missing|import_fail|"
        r"staged_commit|unpacked|FAILED|no wheels)"
    ),
    "validate": re.compile(r"^(BAD|validated)"),
    "pytest_gpu": re.compile(r"(passed|failed|error|skipped|no tests ran)|^(FAILED|ERROR|SKIPPED)"),
    "bench": re.compile(r"^(\S.*: L=|device:)|SDPA \(|estimation \(|^\s+\d\.\d\d\s"),
    "sweep": re.compile(r"rel err|SDPA FLASH|SDPA CUDNN|d=1\.0|est S=|varlen qc|FAILED|SKIPPED|d=0.1:"),
    "generate": re.compile(r"^== |no ffmpeg"),
    "bench_e2e": re.compile(r"^(\S+: latent|device:|Wan2\.1)|dense \(|^\s+(random|local|xattention)\s"),
    "train": re.compile(r"^(saved|cached|step,|\d+,)|Error"),
}
HIGHLIGHT["generate_720p"] = HIGHLIGHT["generate"]
HIGHLIGHT["bench_e2e_720p"] = HIGHLIGHT["bench_e2e"]


# lines of each step's log shown before the summary table (the run tool returns the last 12,000 characters)
LIMITS = {"env": 12, "bench": 30, "sweep": 22, "bench_e2e": 14, "generate": 10}


def highlights(step: Step) -> list[str]:
    limit = LIMITS.get(step.name, 8)
    text = step.result.get("_text", "")
    pat = HIGHLIGHT.get(step.name)
    lines = [ln.rstrip()[:200] for ln in text.splitlines() if pat and pat.search(ln) and not ln.startswith("###")]
    if step.result.get("status") != "ok":
        tail = [ln.rstrip()[:200] for ln in text.splitlines() if ln.strip() and not ln.startswith("###")][-4:]
        lines = [*lines[-(limit - len(tail)) :], "  (log tail)", *tail]
    return lines[-limit:]


def commit() -> str:
    staged = ROOT / ".whl" / "COMMIT"
    if staged.is_file():
        return staged.read_text().strip()
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
            ).stdout.strip()
            or "unknown"
        )
    except Exception:
        return "unknown"


def summarize(steps: list[Step], out: Path, dry: bool, t0: float, deadline: float, note: str) -> str:
    by_name = {s.name: s for s in steps}
    parsed: dict = {}
    for s in steps:
        text = s.result.get("_text", "")
        if s.name == "env":
            parsed["env"] = last_json(text, "ENV_JSON")
        elif s.name == "sweep":
            parsed["sweep"] = last_json(text, "SWEEP_JSON")
        elif s.name in ("generate", "generate_720p"):
            parsed[s.name] = last_json(text, "GENERATE_JSON")
        elif s.name == "bench":
            parsed["bench_rows"] = parse_bench(text)
        elif s.name.startswith("bench_e2e"):
            parsed.setdefault("e2e_rows", []).extend(parse_e2e(text))
    tg = targets(by_name, parsed)
    elapsed = time.monotonic() - t0
    files = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    summary = {
        "mode": "dry-run (CPU, tiny shapes: numbers mean nothing)" if dry else "gpu",
        "commit": commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "deadline_s": deadline,
        "elapsed_s": round(elapsed, 1),
        "note": note,
        "steps": [
            {
                "name": s.name,
                "item": s.item,
                "what": s.what,
                "budget_s": s.budget,
                "cmds": [shlex.join(c) for c in s.cmds],
                **{k: v for k, v in s.result.items() if not k.startswith("_")},
            }
            for s in steps
        ],
        "targets": tg,
        "parsed": parsed,
        "files": sorted(set(files) | {SUMMARY}),
    }
    tmp = out / (SUMMARY + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1, default=str))
    tmp.replace(out / SUMMARY)
    lines = []
    for s in steps:
        if s.result.get("status") in (None, "skipped"):
            continue
        lines.append(f"--- {s.name} ({s.result.get('log')})")
        lines += highlights(s)
    mode = "DRY RUN on CPU (tiny shapes; numbers mean nothing)" if dry else "GPU"
    files = sorted(p.name for p in out.iterdir())
    lines.append(
        f"==== device check summary: {mode}, commit {summary['commit']}, {elapsed:.0f} s of {deadline:.0f} s, "
        f"{len(files)} files in {out}" + (f", {note}" if note else "") + " ===="
    )
    for s in steps:
        r = s.result
        status = r.get("status", "skipped").upper()
        took = f"{r['seconds']:.0f}/{r['budget_s']}s" if "seconds" in r else "-"
        extra = r.get("reason") or (f"rc {r['rcs']}" if status != "OK" else s.what)
        lines.append(f"[{s.item}] {s.name:<15} {status:<8} {took:>9}  {extra}"[:170])
    lines.append(
        "targets (issue 22)" + (": dry run, parsed from tiny CPU numbers, PASS/FAIL mean nothing" if dry else ":")
    )
    for t in tg:
        lines.append(f"  {t['status']:<9} {t['target']}: {t['value']}"[:230])
    lines.append(f"summary.json: {out / SUMMARY}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", default=os.environ.get("DEVICE_CHECK_DRY", "") not in ("", "0"))
    p.add_argument("--out", type=Path, default=None, help="result folder (default: $OUT, else a temp folder)")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (runs, latents, unpacked wheels)")
    p.add_argument("--deadline-s", type=float, default=None, help=f"default {DEADLINE_S} (dry run {DRY_DEADLINE_S})")
    p.add_argument("--only", default="", help="comma-separated step names (the rest are skipped)")
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    p.add_argument("--validate", action="store_true", help="check the GPU command lines against today's CLIs")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    dry = args.dry_run
    deadline = args.deadline_s or (DRY_DEADLINE_S if dry else DEADLINE_S)
    if args.validate:
        lines = validate(plan(False, Path(tempfile.gettempdir()) / "devicecheck-validate"))
        bad = sum(ln.startswith("BAD") for ln in lines)
        print("\n".join(lines) + f"\nvalidated {len(lines)} GPU command lines: {bad} bad")
        return 1 if bad else 0
    if args.list:
        out = work = Path("WORK")
    else:
        out = args.out or Path(os.environ.get("OUT") or tempfile.mkdtemp(prefix="devicecheck-out-"))
        work = args.work or Path(tempfile.mkdtemp(prefix="devicecheck-work-"))
        out.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
    steps = plan(dry, work)
    if len({s.log for s in steps}) + 1 > MAX_FILES:
        raise SystemExit("the plan writes more than 8 files")
    only = {x for x in args.only.split(",") if x}
    unknown = only - {s.name for s in steps}
    if unknown:
        raise SystemExit(f"unknown step(s) {sorted(unknown)}; steps: {[s.name for s in steps]}")
    if args.list:
        for s in steps:
            print(f"[{s.item}] {s.name:<15} {s.budget:>3}s -> {s.log:<13} {s.skip or s.what}")
            for c in s.cmds:
                print(f"      {shlex.join(c)}")
        return 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    note = ""
    try:
        with open(out / "env.log", "a") as fh:  # staged wheels first: every later step imports through them
            fh.write(f"### mode {'dry-run' if dry else 'gpu'}, python {sys.executable}, root {ROOT}, work {work}\n")
            fh.write("\n".join(install_wheels(ROOT / ".whl", work / "site")) + "\n")
        for i, s in enumerate(steps):
            if s.skip:
                s.result = {"status": "skipped", "reason": s.skip}
                continue
            if only and s.name not in only:
                s.result = {"status": "skipped", "reason": "not in --only"}
                continue
            left = deadline - RESERVE_S - (time.monotonic() - t0)
            owed = sum(x.budget for x in steps[i + 1 :] if not x.skip and (not only or x.name in only))
            budget = min(left, max(s.budget, left - owed))  # own budget + what earlier steps left unused
            if budget < MIN_STEP_S:
                s.result = {"status": "skipped", "reason": f"deadline: {left:.0f} s left, {budget:.0f} s for it"}
                continue
            print(f"[{time.monotonic() - t0:5.0f}s] {s.name} (budget {budget:.0f} s) ...", flush=True)
            run_step(s, out, work, budget)
            print(
                f"[{time.monotonic() - t0:5.0f}s] {s.name}: {s.result['status']} in {s.result['seconds']} s", flush=True
            )
    except Interrupted as exc:
        note = f"interrupted by {exc}"
        for s in steps:
            if not s.result:
                s.result = {"status": "skipped", "reason": note}
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        text = summarize(steps, out, dry, t0, deadline, note)
        print(text, flush=True)
    return 0 if all(s.result.get("status") in ("ok", "skipped") for s in steps) else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Hostile sweep of the app API and the CLI over a store with damaged runs (issue 21's closing table).

    python docs/measurements/fault_sweep.py [WORKDIR]

Generates a small store on the embedded models (dense and profiled XAttention+TMR on tiny-wan, MotionCache on
tiny-skyreels), adds one copy of the XAttention run per way of damaging a run folder (all comparable with the
dense run, so every Pareto scan meets them), serves the app on 127.0.0.1 and calls each view endpoint for each
run and for bad ids, then each store command of the CLI. Prints one line per fault: how many calls gave a
result, a message naming the run and file, Gradio's generic error, or a traceback; and whether any healthy run
was lost.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

# each way of damaging a run folder, and the file a message about it must name
DAMAGES = {
    "metrics wall_s 'fast'": (lambda p: _json(p / "metrics.json", wall_s="fast"), "metrics.json"),
    "metrics stages text": (lambda p: _json(p / "metrics.json", stages={"denoise_s": "slow"}), "metrics.json"),
    "metrics.json missing": (lambda p: (p / "metrics.json").unlink(), "metrics.json"),
    "metrics.json garbage": (lambda p: (p / "metrics.json").write_bytes(b"\x00{garbage"), "metrics.json"),
    "config.json garbage": (lambda p: (p / "config.json").write_bytes(b"\x00{garbage"), "config.json"),
    "config seed text": (lambda p: _json(p / "config.json", seed="abc"), "config.json"),
    "frames.npz truncated": (lambda p: _cut(p / "frames.npz"), "frames.npz"),
    "video.mp4 garbage": (
        lambda p: ((p / "frames.npz").unlink(), (p / "video.mp4").write_bytes(b"\0" * 999)),
        "video.mp4",
    ),
    "arrays.npz truncated": (lambda p: _cut(p / "arrays.npz"), "arrays.npz"),
    "telemetry garbage": (lambda p: (p / "telemetry.parquet").write_bytes(b"PAR1 garbage"), "telemetry.parquet"),
    "trace.json.gz garbage": (lambda p: (p / "trace.json.gz").write_bytes(b"\x1f\x8b garbage"), "trace.json.gz"),
    "profile table garbage": (lambda p: (p / "profile_ranges.parquet").write_bytes(b"garbage"), "profile_ranges"),
}
ENDPOINTS = ["/sparsity", "/reuse", "/chunks", "/motion", "/compare_choices", "/profile", "/report"]
BAD_IDS = ["", "../etc", "/etc/passwd", "no-such-run", ".tmp-x"]


def _json(path: Path, **change) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def make_store(root: Path) -> dict[str, str]:
    from accel.config import RunConfig
    from accel.runner import generate
    from accel.runs import RunStore

    store = RunStore(root)
    wan = {"height": 128, "width": 128, "frames": 9, "steps": 6}
    sky = {"height": 64, "width": 64, "frames": 21, "steps": 6}
    xa = {"warmup_steps": 2, "tmr": True, "tmr_delta": 3.0}
    runs = {
        "dense": generate(RunConfig(prompt="a red ball", method="dense", **wan), store, profile=True),
        "xattention": generate(
            RunConfig(prompt="a red ball", method="xattention", settings=xa, **wan), store, profile=True
        ),
        "motion": generate(
            RunConfig(
                prompt="a red ball",
                model="tiny-skyreels",
                method="motioncache",
                settings={"warmup": 1, "phase1_updates": 1},
                **sky,
            ),
            store,
        ),
    }
    ids = {name: r.run_id for name, r in runs.items()}
    for i, (name, (damage, _)) in enumerate(DAMAGES.items()):
        copy = root / f"{ids['xattention'][:-6]}{i:06x}"
        shutil.copytree(runs["xattention"].path, copy)
        damage(copy)
        ids[name] = copy.name
    return ids


def _message(text: str, run_id: str, file: str | None) -> str:
    """A one-line message; for a damaged run, whether it names the run and the damaged file."""
    if "Traceback" in text or "\n" in text.strip():
        return "traceback"
    if file is None:
        return "message"
    return "message naming run+file" if run_id in text and file in text else "message (other)"


def classify(client, arg, api_name: str, run_id: str, file: str | None) -> str:
    from gradio_client.exceptions import AppError

    try:
        client.predict(arg, api_name=api_name)
    except AppError as exc:
        text = str(exc)
        if "upstream Gradio app has raised an exception" in text:
            return "generic error"
        return _message(text, run_id, file)
    except Exception as exc:  # the sweep counts anything else as a failure
        return f"client failure {type(exc).__name__}"
    return "result"


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="fault-sweep-"))
    root = work / "runs"
    ids = make_store(root)
    healthy = {k: v for k, v in ids.items() if k in ("dense", "xattention", "motion")}
    os.environ["ACCEL_RUNS_DIR"] = str(root)
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # app.py lives at the repository root
    from gradio_client import Client

    import app

    demo = app.build_app().queue(default_concurrency_limit=1)
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    client = Client(demo.local_url, verbose=False)
    rows: dict[str, Counter] = {}
    for name, run_id in [*ids.items(), *((f"bad id {b!r}", b) for b in BAD_IDS)]:
        counts = rows.setdefault(name, Counter())
        file = DAMAGES[name][1] if name in DAMAGES else None
        for endpoint in ENDPOINTS:
            counts["app " + classify(client, run_id, endpoint, run_id, file)] += 1
        counts["app " + classify(client, [ids["dense"], run_id], "/compare", run_id, file)] += 1
        commands = [
            ["report", run_id, "--out", str(work / "r.html")],
            ["compare", ids["dense"], run_id],
            ["breakdown", run_id, ids["dense"]],
        ]
        for cmd in commands:
            argv = [sys.executable, "-m", "accel", *cmd, "--out-dir", str(root)]
            proc = subprocess.run(argv, capture_output=True, text=True)
            err = proc.stderr.strip()
            kind = "result" if proc.returncode == 0 else _message(err, run_id, file)
            if kind.startswith("message") and (proc.returncode != 2 or len(err.splitlines()) != 1):
                kind = f"rc {proc.returncode}, {len(err.splitlines())} lines"
            counts["cli " + kind] += 1
    listing = subprocess.run([sys.executable, "-m", "accel", "runs", "--out-dir", str(root)], capture_output=True,
                             text=True)  # fmt: skip
    demo.close()
    from accel.runs import RunStore

    lost = [k for k, v in healthy.items() if v not in {i.run_id for i in RunStore(root).list()}]
    print(f"{'fault':<28} {'app calls':<44} cli calls")
    for name, counts in rows.items():
        app_part = ", ".join(f"{k[4:]} {v}" for k, v in sorted(counts.items()) if k.startswith("app "))
        cli_part = ", ".join(f"{k[4:]} {v}" for k, v in sorted(counts.items()) if k.startswith("cli "))
        print(f"{name:<28} {app_part:<44} {cli_part}")
    total = sum(rows.values(), Counter())
    print(f"\ntotal: {dict(total)}")
    print(f"'accel runs': rc {listing.returncode}, {listing.stderr.count('is damaged')} damaged-run warnings")
    print(f"healthy runs lost: {lost or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

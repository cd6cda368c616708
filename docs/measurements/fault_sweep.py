"""Hostile sweep of the app API and the CLI (issues 21 and 36): damaged runs, hostile input, temporary folders.

    python docs/measurements/fault_sweep.py [WORKDIR]

1. Damaged runs: generates a small store on the embedded models (dense and profiled XAttention+TMR on tiny-wan,
   MotionCache on tiny-skyreels), adds one copy of the XAttention run per way of damaging a run folder (all
   comparable with the dense run, so every Pareto scan meets them), serves the app on 127.0.0.1 (it must start) and
   calls each view endpoint for each run and for bad ids, then each store command of the CLI. One line per fault:
   how many calls gave a result, a message naming the run and file, another message, Gradio's generic error, or a
   traceback; and whether any healthy run was lost. A healthy run must give results only.
2. Hostile input: each bad command line (a subprocess, 300 s deadline) and each bad API form value must be one
   message: exit 2 and one ``error:`` line; exit 0 is a silent wrong result, a timeout a hang.
3. Temporary folders: Compare and report clicks leave at most one folder of each kind, and the folder of a profiled
   generation killed with ``kill -9`` is gone after the next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
OUTSIDE = Path(tempfile.gettempdir())  # where a symlinked video points: outside the store


def _json(path: Path, **change) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def _timing(path: Path) -> None:
    data = json.loads(path.read_text())
    data["timing"]["wall_s"] = ["a", "b"]
    path.write_text(json.dumps(data))


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _arrays(path: Path, index: str | None = None, shrink: bool = False) -> None:
    """Rewrite arrays.npz with a garbage index, or with its first mask cut to half its rows."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if index is not None:
        arrays["__index__"] = np.array(index)
    if shrink:
        key = next(k for k in arrays if k.startswith("mask/"))
        arrays[key] = arrays[key][:, : max(1, arrays[key].shape[1] // 2)]
    np.savez_compressed(path, **arrays)


def _symlinked_video(run: Path) -> None:
    (run / "frames.npz").unlink()
    target = OUTSIDE / f"fault-sweep-outside-{os.getpid()}.mp4"
    shutil.copy(run / "video.mp4", target)
    (run / "video.mp4").unlink()
    (run / "video.mp4").symlink_to(target)


def _huge_video(run: Path) -> None:
    (run / "frames.npz").unlink()
    with open(run / "video.mp4", "r+b") as fh:  # a valid header, then 20 GB of holes (no disk used)
        fh.truncate(20 * 2**30)


def _other_size(run: Path) -> None:
    np.savez_compressed(run / "frames.npz", frames=np.zeros((9, 64, 96, 3), np.uint8))


DEEP = "[" * 100_000 + "]" * 100_000
# each way of damaging a run folder, and the file a message about it must name (None: any one-line message)
DAMAGES = {
    "metrics wall_s 'fast'": (lambda p: _json(p / "metrics.json", wall_s="fast"), "metrics.json"),
    "metrics stages text": (lambda p: _json(p / "metrics.json", stages={"denoise_s": "slow"}), "metrics.json"),
    "metrics.json missing": (lambda p: (p / "metrics.json").unlink(), "metrics.json"),
    "metrics.json garbage": (lambda p: (p / "metrics.json").write_bytes(b"\x00{garbage"), "metrics.json"),
    "metrics.json nested deep": (lambda p: (p / "metrics.json").write_text(DEEP), "metrics.json"),
    "metrics parallel 'yes'": (lambda p: _json(p / "metrics.json", parallel="yes"), "metrics.json"),
    "metrics parallel no degree": (lambda p: _json(p / "metrics.json", parallel={"kind": "ulysses"}), "metrics.json"),
    "metrics timing wall_s text": (lambda p: _timing(p / "metrics.json"), "metrics.json"),
    "metrics wall_s 0": (lambda p: _json(p / "metrics.json", wall_s=0), "metrics.json"),
    "metrics warnings 5": (lambda p: _json(p / "metrics.json", warnings=5), "metrics.json"),
    "metrics grid 'abc'": (lambda p: _json(p / "metrics.json", grid="abc"), "metrics.json"),
    "config.json garbage": (lambda p: (p / "config.json").write_bytes(b"\x00{garbage"), "config.json"),
    "config.json nested deep": (lambda p: (p / "config.json").write_text(DEEP), "config.json"),
    "config seed text": (lambda p: _json(p / "config.json", seed="abc"), "config.json"),
    "config fps -5": (lambda p: _json(p / "config.json", fps=-5), "config.json"),
    "frames.npz truncated": (lambda p: _cut(p / "frames.npz"), "frames.npz"),
    "frames of another size": (_other_size, None),
    "video.mp4 garbage": (
        lambda p: ((p / "frames.npz").unlink(), (p / "video.mp4").write_bytes(b"\0" * 999)),
        "video.mp4",
    ),
    "video.mp4 symlink outside": (_symlinked_video, "video.mp4"),
    "video.mp4 of 20 GB": (_huge_video, "video.mp4"),
    "arrays.npz truncated": (lambda p: _cut(p / "arrays.npz"), "arrays.npz"),
    "arrays.npz index garbage": (lambda p: _arrays(p / "arrays.npz", index="{not json"), "arrays.npz"),
    "arrays.npz index a list": (lambda p: _arrays(p / "arrays.npz", index="[1, 2]"), "arrays.npz"),
    "arrays.npz mask shape": (lambda p: _arrays(p / "arrays.npz", shrink=True), "arrays.npz"),
    "telemetry garbage": (lambda p: (p / "telemetry.parquet").write_bytes(b"PAR1 garbage"), "telemetry.parquet"),
    "trace.json.gz garbage": (lambda p: (p / "trace.json.gz").write_bytes(b"\x1f\x8b garbage"), "trace.json.gz"),
    "profile table garbage": (lambda p: (p / "profile_ranges.parquet").write_bytes(b"garbage"), "profile_ranges"),
}
ENDPOINTS = ["/shown_run", "/sparsity", "/reuse", "/chunks", "/motion", "/compare_choices", "/profile", "/report"]
BAD_IDS = ["", "../etc", "/etc/passwd", "no-such-run", ".tmp-x"]
HEALTHY = ("dense", "xattention", "motion")
TINY = ["--model", "tiny-wan", "--prompt", "a red ball", "--height", "64", "--width", "64", "--frames", "5"]
GEN = ["generate", *TINY, "--steps", "2"]
CAL = ["calibrate", "--model", "tiny-wan", "--height", "64", "--width", "64", "--frames", "5", "--steps", "2"]
# hostile command lines ({work}: the sweep's folder, {root}: its store); each must be one message before any work
CLI_INPUTS = {
    "seed 1e25": [*GEN, "--seed", "9999999999999999999999999"],
    "model_index _class_name list": [*GEN, "--model", "{work}/class-list"],
    "model_index a JSON list": [*GEN, "--model", "{work}/json-list"],
    "threshold table nested deep": [*GEN, "--method", "xattention", "--threshold-table", "{work}/deep.json"],
    "threshold table uncond only": [*GEN, "--method", "xattention", "--threshold-table", "{work}/uncond.json"],
    "device cuda (CPU torch)": [*GEN, "--device", "cuda"],
    "device cuda:9": [*GEN, "--device", "cuda:9"],
    "ACCEL_KERNELS=foo": ["ACCEL_KERNELS=foo", *GEN],
    "guidance 1e30": [*GEN, "--guidance", "1e30"],
    "fps 1e9": [*GEN, "--fps", "1000000000"],
    "out-dir empty": [*GEN, "--out-dir", ""],
    "ar-step on pocket-wan": ["generate", "--prompt", "a red ball", "--steps", "2", "--ar-step", "2"],
    "calibrate binary prompts file": [*CAL, "--prompts-file", "{work}/binary.txt", "--out", "{work}/cal"],
    "calibrate --out /proc/x": [*CAL, "--out", "/proc/x"],
    "calibrate pocket-skyreels": ["calibrate", "--model", "pocket-skyreels", "--out", "{work}/cal"],
    "calibrate band weights nan": [*CAL, "--band-weights", "nan,1,1,1", "--out", "{work}/cal"],
    "report --out /proc/x/r.html": ["report", "{dense}", "--out", "/proc/x/r.html"],
    "bench-quality --csv /proc/x.csv": ["bench-quality", "--model", "tiny-wan", "--csv", "/proc/x.csv"],
    "bench-quality --prompts 100000": ["bench-quality", "--model", "tiny-wan", "--prompts", "100000"],
    "app.py --port 99999": ["APP", "--port", "99999"],
}
# values that look hostile but are fine: each must store a run (a budget is a cap, not an allocation)
CLI_ACCEPTED = {
    "mask-budget-mb 1e308": [*GEN, "--method", "xattention", "--warmup-steps", "0", "--mask-budget-mb", "1e308"],
    "mask-budget-mb 1e7": [*GEN, "--method", "xattention", "--warmup-steps", "0", "--mask-budget-mb", "1e7"],
}
# hostile values of the Generate form through the API: (sampling, settings of xattention)
API_INPUTS = {
    "seed 1e30": ({"seed": 1e30}, {}),
    "steps inf": ({"steps": "inf"}, {}),
    "steps 1e400": ({"steps": "1e400"}, {}),
    "steps nan": ({"steps": "nan"}, {}),
    "frames inf": ({"frames": "inf"}, {}),
    "causal_block_size 1e400": ({"causal_block_size": "1e400"}, {}),
    "guidance 1e30": ({"guidance": 1e30, "steps": 2}, {}),
    "xattention_stride 1.5": ({"steps": 2}, {"stride": 1.5}),
    "xattention_stride inf": ({"steps": 2}, {"stride": "inf"}),
    "xattention_stride nan": ({"steps": 2}, {"stride": "nan"}),
    "warmup_steps 'five'": ({"steps": 2}, {"warmup_steps": "five"}),
}


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


def make_inputs(work: Path) -> None:
    """The hostile files the command lines name."""
    from accel.paths import TABLES

    for name, text in {"class-list": '{"_class_name": ["WanPipeline"]}', "json-list": "[1, 2]"}.items():
        (work / name).mkdir(exist_ok=True)
        (work / name / "model_index.json").write_text(text)
    (work / "deep.json").write_text(DEEP)
    (work / "binary.txt").write_bytes(bytes(range(256)) * 4)
    table = json.loads((TABLES / "tiny-wan-xattention.json").read_text())
    del table["branches"]["cond"]
    (work / "uncond.json").write_text(json.dumps(table))


def _message(text: str, run_id: str, file: str | None) -> str:
    """A one-line message; for a damaged run, whether it names the run and the damaged file."""
    if "Traceback" in text or "\n" in text.strip():
        return "traceback"
    if file is None:
        return "message"
    return "message naming run+file" if run_id in text and file in text else "message (other)"


def classify(client, args: list, api_name: str, run_id: str, file: str | None) -> str:
    from gradio_client.exceptions import AppError

    try:
        client.predict(*args, api_name=api_name)
    except AppError as exc:
        text = str(exc)
        if "upstream Gradio app has raised an exception" in text or not text.strip() or text.strip() == "Error":
            return "generic error"
        return _message(text, run_id, file)
    except Exception as exc:  # the sweep counts anything else as a failure
        return f"client failure {type(exc).__name__}"
    return "result"


def run_cli(argv: list[str], timeout: float = 300) -> tuple[str, str]:
    """(kind, last stderr line) of one command: result (exit 0), message (exit 2, one error line), traceback, hang."""
    env = dict(os.environ)
    while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):  # leading NAME=value: the command's environment
        key, value = argv[0].split("=", 1)
        env[key], argv = value, argv[1:]
    cmd = (
        [sys.executable, str(REPO / "app.py"), *argv[1:]]
        if argv[0] == "APP"
        else [sys.executable, "-m", "accel", *argv]
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return "hang", f"no answer in {timeout:.0f} s"
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if proc.returncode == 0:
        return "result", lines[-1] if lines else ""
    if "Traceback" in proc.stderr:
        return "traceback", lines[-1] if lines else ""
    if proc.returncode == 2 and len(errors) == 1 and lines[-1] == errors[0]:
        return "message", errors[0]
    return f"rc {proc.returncode}, {len(errors)} error lines", lines[-1] if lines else ""


def own_folders(kind: str) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"accel-{kind}-{os.getpid()}-*"))


def killed_profile_is_swept(work: Path) -> tuple[int, int]:
    """(folders a profiled generation killed with kill -9 left, of those still there after the next generation)."""
    argv = [*TINY[:-4], "--height", "128", "--width", "128", "--frames", "9", "--steps", "400", "--profile"]
    child = subprocess.Popen([sys.executable, "-m", "accel", "generate", *argv, "--out-dir", str(work / "kill")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)  # fmt: skip
    pattern = f"accel-profile-{child.pid}-*"
    deadline = time.time() + 120
    while not list(Path(tempfile.gettempdir()).glob(pattern)) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = list(Path(tempfile.gettempdir()).glob(pattern))
    run_cli([*GEN, "--out-dir", str(work / "kill")])
    return len(left), len(list(Path(tempfile.gettempdir()).glob(pattern)))


def main() -> int:
    work = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="fault-sweep-"))
    root = work / "runs"
    ids = make_store(root)
    make_inputs(work)
    healthy = {k: ids[k] for k in HEALTHY}
    os.environ["ACCEL_RUNS_DIR"] = str(root)
    sys.path.insert(0, str(REPO))  # app.py lives at the repository root
    from gradio_client import Client

    import app
    from accel import forms

    demo = app.build_app().queue(default_concurrency_limit=1)  # a store with every damage must not stop the app
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    client = Client(demo.local_url, verbose=False)
    rows: dict[str, Counter] = {}
    most = Counter()  # the most folders of one kind this process held at once
    for name, run_id in [*ids.items(), *((f"bad id {b!r}", b) for b in BAD_IDS)]:
        counts = rows.setdefault(name, Counter())
        file = DAMAGES[name][1] if name in DAMAGES else None
        for endpoint in ENDPOINTS:
            counts["app " + classify(client, [run_id], endpoint, run_id, file)] += 1
        counts["app " + classify(client, [[ids["dense"], run_id]], "/compare", run_id, file)] += 1
        for kind in ("compare", "report"):
            most[kind] = max(most[kind], len(own_folders(kind)))
        commands = [
            ["report", run_id, "--out", str(work / "r.html")],
            ["compare", ids["dense"], run_id],
            ["breakdown", run_id, ids["dense"]],
        ]
        for cmd in commands:
            kind, line = run_cli([*cmd, "--out-dir", str(root)])
            counts["cli " + (_message(line, run_id, file) if kind == "message" else kind)] += 1
    inputs: dict[str, tuple[str, str]] = {}
    for name, argv in CLI_ACCEPTED.items():  # the wanted outcome here is a result, as a message elsewhere
        kind, line = run_cli([*argv, "--out-dir", str(work / "accepted")])
        inputs["cli " + name] = ("stored" if kind == "result" else kind, line)
    for name, argv in CLI_INPUTS.items():
        argv = [a.format(work=work, root=root, dense=ids["dense"]) for a in argv]
        if "--out-dir" not in argv and argv[0] in ("generate", "report", "bench-quality"):
            argv += ["--out-dir", str(root)]
        kind, line = run_cli(argv)
        inputs["cli " + name] = ("refused" if kind == "message" else kind, line)
    for name, (sampling, settings) in API_INPUTS.items():
        values = forms.form_values(model="tiny-wan", sampling=sampling, settings=settings)
        try:
            client.predict(*values, api_name="/generate")
            inputs["api " + name] = ("result", "")
        except Exception as exc:
            text = str(exc).strip()
            generic = "upstream Gradio app" in text or text in ("", "Error")
            inputs["api " + name] = ("generic error" if generic else "refused", text.splitlines()[-1] if text else "")
    demo.close()
    from accel.runs import RunStore

    stored = {i.run_id for i in RunStore(root).list()}
    lost = [k for k, v in healthy.items() if v not in stored]
    left_by_kill, left_after_next = killed_profile_is_swept(work)

    print(f"{'fault':<30} {'app calls':<52} cli calls")
    for name, counts in rows.items():
        app_part = ", ".join(f"{k[4:]} {v}" for k, v in sorted(counts.items()) if k.startswith("app "))
        cli_part = ", ".join(f"{k[4:]} {v}" for k, v in sorted(counts.items()) if k.startswith("cli "))
        print(f"{name:<30} {app_part:<52} {cli_part}")
    print(f"\n{'hostile input':<36} {'outcome':<10} what it said")
    for name, (kind, line) in inputs.items():
        print(f"{name:<36} {kind:<10} {line[:150]}")
    total = sum(rows.values(), Counter())
    healthy_bad = sum(v for n in ("dense", "xattention") for k, v in rows[n].items() if not k.endswith("result"))
    outcome = Counter(kind for kind, _ in inputs.values())
    print(f"\nviews and store commands: {dict(total)}")
    print(f"hostile input: {dict(outcome)} (wanted: refused, or stored for the accepted ones; result = silent)")
    print(f"healthy Wan runs: {healthy_bad} calls other than a result; healthy runs lost: {lost or 'none'}")
    print(f"temporary folders: at most {dict(most)} of one kind held by the app; a kill -9 of a profiled run left "
          f"{left_by_kill}, {left_after_next} after the next generation")  # fmt: skip
    defects = sum(v for k, v in total.items() if any(w in k for w in ("traceback", "generic", "(other)", "rc ")))
    defects += (
        sum(v for k, v in outcome.items() if k not in ("refused", "stored")) + healthy_bad + len(lost) + left_after_next
    )
    defects += sum(max(0, n - 1) for n in most.values())
    print(f"defects: {defects}")
    return 1 if defects else 0


if __name__ == "__main__":
    sys.exit(main())

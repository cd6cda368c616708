"""A damaged run never takes down the others: every way a run folder can be broken on disk is made on a copy
of a small stored run; the store lists the rest, each view of a healthy run still works, and each view of the
damaged run is a one-line message naming the run and the file (never a parser's traceback)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from accel import cli
from accel.errors import UserError
from accel.runs import COMPLETE_MARKER, DamagedRunError, InvalidRunIdError, RunNotFoundError, RunStore
from viz import panels
from viz.report import write_report


def _edit_json(name: str, change: Callable[[dict], None]) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = json.loads((run / name).read_text())
        change(data)
        (run / name).write_text(json.dumps(data))

    return damage


def _truncate(name: str) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])

    return damage


def _garbage(name: str, drop: tuple[str, ...] = ()) -> Callable[[Path], None]:
    def damage(run: Path) -> None:
        for other in drop:
            (run / other).unlink()
        (run / name).write_bytes(b"\x00garbage, not a " + name.encode() * 50)

    return damage


def _remove(name: str) -> Callable[[Path], None]:
    return lambda run: (run / name).unlink()


# (damage, the file a message must name, where the store finds it: "list" = list() skips the run and
# list(damaged=True) flags it; "flag" = list() keeps it, list(damaged=True) flags it; "read" = when a view reads it)
DAMAGES = {
    "metrics wall_s 'fast'": (_edit_json("metrics.json", lambda m: m.update(wall_s="fast")), "metrics.json", "list"),
    "metrics stages of text": (
        _edit_json("metrics.json", lambda m: m.update(stages={"denoise_s": "slow"})),
        "metrics.json",
        "list",
    ),
    "metrics.json missing": (_remove("metrics.json"), "metrics.json", "list"),
    "metrics.json garbage": (_garbage("metrics.json"), "metrics.json", "list"),
    "config.json garbage": (_garbage("config.json"), "config.json", "list"),
    "config seed of text": (_edit_json("config.json", lambda c: c.update(seed="abc")), "config.json", "list"),
    "frames.npz truncated": (_truncate("frames.npz"), "frames.npz", "flag"),
    "video.mp4 garbage": (_garbage("video.mp4", drop=("frames.npz",)), "video.mp4", "read"),
    "arrays.npz truncated": (_truncate("arrays.npz"), "arrays.npz", "flag"),
    "telemetry.parquet garbage": (_garbage("telemetry.parquet"), "telemetry.parquet", "flag"),
}


@pytest.fixture()
def damaged_store(stored_runs, tmp_path, request):
    """A copy of the stored runs with the XAttention run damaged in the way named by the test's parameter."""
    store, runs = stored_runs
    root = tmp_path / "runs"
    shutil.copytree(store.root, root, symlinks=True)
    damage, file, found = DAMAGES[request.param]
    victim = runs["xattention"].run_id
    damage(root / victim)
    healthy = {name: r.run_id for name, r in runs.items() if name != "xattention"}
    return RunStore(root), victim, file, found, healthy


def _views(store: RunStore, run_id: str) -> dict[str, Callable[[], object]]:
    """Every panel of the app for one run, as calls."""

    def run():
        return panels.open_run(store, run_id)

    return {
        "headline": lambda: panels.headline(store, run()),
        "sparsity": lambda: panels.sparsity_panel(run()),
        "reuse": lambda: panels.reuse_panel(run()),
        "chunks": lambda: panels.chunks_panel(run()),
        "motion": lambda: panels.motion_panel(run()),
        "compare": lambda: panels.compare_panel(store, run()),
        "profile": lambda: panels.profile_panel(store, run()),
    }


@pytest.mark.parametrize("damaged_store", list(DAMAGES), indirect=True)
def test_a_damaged_run_is_flagged_and_the_others_still_work(damaged_store, tmp_path, capsys):
    store, victim, file, found, healthy = damaged_store
    listed = {i.run_id for i in store.list()}
    assert listed >= set(healthy.values()) and (victim in listed) == (found != "list")
    assert (victim in [v for _, v in panels.run_choices(store)]) == (found != "list")
    flagged = {i.run_id: i.damaged for i in store.list(damaged=True) if i.damaged}
    table = panels.runs_table(store)
    status = table.loc[table["run"] == victim, "status"].item()
    if found == "read":
        assert flagged == {} and status == "ok"
    else:
        assert list(flagged) == [victim] and flagged[victim].startswith(file)
        assert status.startswith(f"damaged: {file}")
    for run_id in healthy.values():
        for view in _views(store, run_id).values():
            view()  # raises on failure
        write_report(store.load(run_id), tmp_path / f"{run_id}.html", store)
    # each view of the damaged run works or names the run and the file in one line
    failed = []
    for name, view in _views(store, victim).items():
        try:
            view()
        except UserError as exc:
            assert victim in str(exc) and file in str(exc) and "\n" not in str(exc), (name, str(exc))
            failed.append(name)
    assert failed, "no view read the damaged file"
    assert cli.main(["runs", "--out-dir", str(store.root)]) == 0
    out = capsys.readouterr()
    assert all(r in out.out for r in healthy.values())
    assert (f"warning: run {victim} is damaged ({file}" in out.err) == (found != "read")
    rc = cli.main(["report", victim, "--out-dir", str(store.root), "--out", str(tmp_path / "v.html")])
    err = capsys.readouterr().err
    assert rc in (0, 2) and "Traceback" not in err
    if rc == 2:
        assert err.startswith("error: ") and victim in err and err.count("\n") == 1


@pytest.mark.parametrize("damaged_store", ["config.json garbage", "metrics wall_s 'fast'"], indirect=True)
def test_a_damaged_run_can_be_deleted(damaged_store):
    store, victim, _, _, healthy = damaged_store
    with pytest.raises(DamagedRunError, match=victim):
        store.load(victim)
    others = {i.run_id for i in store.list(damaged=True)} - {victim}
    assert others >= set(healthy.values())
    store.delete(victim)
    assert not (store.root / victim).exists()
    assert {i.run_id for i in store.list(damaged=True)} == others
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damaged_store", ["metrics wall_s 'fast'", "frames.npz truncated"], indirect=True)
def test_the_app_starts_and_serves_a_damaged_store(damaged_store, monkeypatch):
    gr = pytest.importorskip("gradio")
    store, victim, file, _, healthy = damaged_store
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(store.root))
    import app

    app.build_app()  # the page load reads the run table
    video, headline = app.shown_run(healthy["dense"])
    assert headline.startswith("**dense") and video.endswith(".mp4")
    app.compare_choices(healthy["dense"])
    with pytest.raises(gr.Error) as err:
        app.motion_view(victim)
    assert victim in err.value.message and file in err.value.message and "traceback" not in err.value.message
    assert app.delete_run(victim, True)[-1] == f"Deleted {victim}."


def test_symlinked_runs_are_not_runs(stored_runs, tmp_path):
    _, runs = stored_runs
    store = RunStore(tmp_path / "runs")
    store.root.mkdir()
    outside = tmp_path / "outside"
    shutil.copytree(runs["dense"].path, outside)
    link = store.root / runs["dense"].run_id
    link.symlink_to(outside, target_is_directory=True)
    assert store.list(damaged=True) == []
    with pytest.raises(RunNotFoundError, match="symbolic link"):
        store.load(link.name)
    with pytest.raises(RunNotFoundError):
        store.delete(link.name)
    with pytest.raises(InvalidRunIdError):
        store.delete(str(outside))
    assert link.is_symlink() and (outside / COMPLETE_MARKER).is_file()
    assert [p.name for p in store.root.iterdir()] == [link.name]  # no dangling .tmp-deleted link


def test_a_file_as_store_is_an_error(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("x")
    assert cli.main(["runs", "--out-dir", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a folder" in err and err.count("\n") == 1

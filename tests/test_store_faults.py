"""A damaged run never takes down the others: every way a run folder can be broken on disk is made on a copy
of a small stored run; the store lists the rest, each view of a healthy run still works, and each view of the
damaged run is a one-line message naming the run and the file (never a parser's traceback)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from accel import cli, tempdirs
from accel.errors import UserError
from accel.runs import COMPLETE_MARKER, DamagedRunError, InvalidRunIdError, RunNotFoundError, RunStore
from accel.schema import ArraysError, load_mask, read_index
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


DEEP = "[" * 100_000 + "]" * 100_000  # nested past any recursion limit


def _write(name: str, text: str) -> Callable[[Path], None]:
    return lambda run: (run / name).write_text(text)


def _rewrite_arrays(change: Callable[[dict], None]) -> Callable[[Path], None]:
    """Rewrite arrays.npz with ``change`` applied to its arrays (``__index__`` is the JSON index)."""

    def damage(run: Path) -> None:
        with np.load(run / "arrays.npz") as npz:
            arrays = dict(npz)
        change(arrays)
        np.savez_compressed(run / "arrays.npz", **arrays)

    return damage


def _edit_index(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(arrays: dict) -> None:
        index = json.loads(str(arrays["__index__"]))
        change(index)
        arrays["__index__"] = np.array(json.dumps(index))

    return _rewrite_arrays(edit)


def _metric(**change) -> Callable[[Path], None]:
    return _edit_json("metrics.json", lambda m: m.update(change))


def _timing(**change) -> Callable[[Path], None]:
    return _edit_json("metrics.json", lambda m: m["timing"].update(change))


def _index_text(text: str) -> Callable[[Path], None]:
    return _rewrite_arrays(lambda arrays: arrays.update(__index__=np.array(text)))


def _first_mask(index: dict) -> str:
    return min(k for k, e in index.items() if e["kind"] == "block_mask")


def _mask_of_wrong_size(arrays: dict) -> None:
    key = _first_mask(json.loads(str(arrays["__index__"])))
    arrays[key] = arrays[key][:, :-1]  # one query block short of its index entry


def _video_linked_outside(run: Path) -> None:
    """video.mp4 as a symbolic link to a file outside the store (and no frames.npz, so frames come from it)."""
    outside = run.parent.parent / "outside.mp4"
    shutil.copy(run / "video.mp4", outside)
    (run / "video.mp4").unlink()
    (run / "frames.npz").unlink()
    (run / "video.mp4").symlink_to(outside)


def _linked_outside(name: str) -> Callable[[Path], None]:
    """``name`` as a symbolic link to a copy of it outside the store (a link to /dev/zero would never end)."""

    def damage(run: Path) -> None:
        outside = run.parent.parent / name
        shutil.move(run / name, outside)
        (run / name).symlink_to(outside)

    return damage


def _sparse(name: str, size: int = 3 * 2**30, drop: tuple[str, ...] = ()) -> Callable[[Path], None]:
    """``name`` grown to ``size`` bytes as a sparse file (it takes no disk)."""

    def damage(run: Path) -> None:
        for other in drop:
            (run / other).unlink()
        with open(run / name, "r+b") as fh:
            fh.truncate(size)

    return damage


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
    # issue 36: nesting past the recursion limit, fields the views read with the wrong type, arrays.npz's index
    "metrics.json nested too deep": (_write("metrics.json", '{"a": ' + DEEP + "}"), "metrics.json", "list"),
    "config.json nested too deep": (_write("config.json", DEEP), "config.json", "list"),
    "metrics timing of text": (_timing(wall_s=["a", "b"]), "metrics.json", "list"),
    "metrics timing repeats 1.5": (_timing(repeats=1.5), "metrics.json", "list"),
    "metrics timing wall_s 0": (_timing(wall_s=[0.0, 1.0]), "metrics.json", "list"),
    "metrics wall_s 0": (_metric(wall_s=0), "metrics.json", "list"),
    "metrics parallel degree 1": (_metric(parallel={"kind": "ulysses", "degree": 1}), "metrics.json", "list"),
    "metrics parallel of text": (_metric(parallel="x"), "metrics.json", "list"),
    "metrics head_balance of text": (
        _metric(head_balance={"balance": "on", "imbalance": "even", "rebalances": 0, "imbalance_contiguous": 1.2}),
        "metrics.json",
        "list",
    ),
    "metrics grid of two": (_metric(grid=[3, 8]), "metrics.json", "list"),
    "metrics warnings of numbers": (_metric(warnings=[1]), "metrics.json", "list"),
    "metrics kernel_calls of text": (_metric(kernel_calls={"block_sparse/torch": "many"}), "metrics.json", "list"),
    "metrics tokens_recomputed text": (_metric(tokens_recomputed="lots"), "metrics.json", "list"),
    "config fps -5": (_edit_json("config.json", lambda c: c.update(fps=-5)), "config.json", "list"),
    "config height 0": (_edit_json("config.json", lambda c: c.update(height=0)), "config.json", "list"),
    "arrays.npz index not JSON": (_index_text("{not json"), "arrays.npz", "read"),
    "arrays.npz index nested too deep": (_index_text(DEEP), "arrays.npz", "read"),
    "arrays.npz index a list": (_index_text("[1, 2]"), "arrays.npz", "read"),
    "arrays.npz entry not an object": (_edit_index(lambda i: i.update({_first_mask(i): "mask"})), "arrays.npz", "read"),
    "arrays.npz shape of text": (_edit_index(lambda i: i[_first_mask(i)].update(shape="8x8")), "arrays.npz", "read"),
    "arrays.npz mask of wrong size": (_rewrite_arrays(_mask_of_wrong_size), "arrays.npz", "read"),
    "video.mp4 linked outside": (_video_linked_outside, "video.mp4", "flag"),
    "config.json linked outside": (_linked_outside("config.json"), "config.json", "list"),
    "video.mp4 of 3 GiB": (_sparse("video.mp4", drop=("frames.npz",)), "video.mp4", "flag"),
    "frames.npz of 3 GiB": (_sparse("frames.npz"), "frames.npz", "flag"),
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


# one damage per file kind in the quick subset (-m "not slow"); the whole list in the full suite
QUICK_DAMAGES = (
    "metrics.json garbage",
    "config.json garbage",
    "frames.npz truncated",
    "video.mp4 garbage",
    "arrays.npz truncated",
    "telemetry.parquet garbage",
    "metrics.json nested too deep",
    "video.mp4 linked outside",
    "arrays.npz mask of wrong size",
    "metrics head_balance of text",
)


@pytest.mark.parametrize(
    "damaged_store",
    [pytest.param(name, marks=() if name in QUICK_DAMAGES else pytest.mark.slow) for name in DAMAGES],
    indirect=True,
)
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
    from accel.ui.store import delete_run
    from accel.ui.views import compare_choices, motion_view, shown_run

    app.build_app()  # the page load reads the run table
    video, headline = shown_run(healthy["dense"])
    assert headline.startswith("**dense") and video.endswith(".mp4")
    compare_choices(healthy["dense"])
    with pytest.raises(gr.Error) as err:
        motion_view(victim)
    assert victim in err.value.message and file in err.value.message and "traceback" not in err.value.message
    assert delete_run(victim, True)[-1] == f"Deleted {victim}."


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


@pytest.fixture()
def store_copy(stored_runs, tmp_path):
    """A copy of the stored runs (any run of it may be damaged) and their ids by name."""
    store, runs = stored_runs
    shutil.copytree(store.root, tmp_path / "runs", symlinks=True)
    return RunStore(tmp_path / "runs"), {name: r.run_id for name, r in runs.items()}


def test_json_nested_too_deep_is_damage_never_a_recursion_error(store_copy):
    store, ids = store_copy
    run = store.root / ids["xattention"]
    (run / "profile_memory.json").write_text(DEEP)
    with pytest.raises(DamagedRunError, match=f"{ids['xattention']} is damaged: profile_memory.json: unreadable"):
        panels.profile_panel(store, store.load(ids["xattention"]))
    # a temporary folder whose owner file and COMPLETE marker are nested too deep: its writer is unknown, removed
    tmp = store.root / ".tmp-20250101-000000-x-abcdef"
    tmp.mkdir()
    (tmp / ".owner").write_text('{"pid": ' + DEEP + "}")
    (tmp / COMPLETE_MARKER).write_text(DEEP)
    assert store.recover(stale_s=0) == (0, 1) and not tmp.exists()


def test_a_dense_reference_with_damaged_files_is_named_in_the_other_runs_views(store_copy, tmp_path):
    store, ids = store_copy
    (store.root / ids["dense"] / "profile_ranges.parquet").write_bytes(b"garbage")
    (store.root / ids["dense"] / "frames.npz").write_bytes(b"garbage")
    run = store.load(ids["xattention"])
    phases = panels.profile_panel(store, run)[-4]
    assert f"skipped run {ids['dense']}: profile_ranges.parquet" in phases["note"].item()
    html = write_report(run, tmp_path / "r.html", store).read_text()
    assert f"skipped run {ids['dense']}: frames.npz" in html
    assert ids["dense"] in panels.headline(store, run)  # the speedup still reads its (checked) metrics


def test_a_peer_with_frames_of_another_size_is_skipped_by_scans_and_refused_beside(store_copy, tmp_path):
    store, ids = store_copy
    odd = store.root / ids["svg2"]
    np.savez_compressed(odd / "frames.npz", frames=np.zeros((9, 64, 96, 3), np.uint8))
    damaged = store.root / f"{ids['xattention'][:-6]}ffffff"  # and a damaged copy of a healthy peer
    shutil.copytree(store.root / ids["xattention"], damaged)
    (damaged / "frames.npz").write_bytes(b"truncated")
    for name in ("dense", "xattention"):
        _, pareto, _ = panels.compare_panel(store, store.load(ids[name]))
        title = pareto.layout.title.text
        sizes = f"{ids['dense']} has (9, 128, 128, 3), {ids['svg2']} has (9, 64, 96, 3)"
        # other tests of the session may add comparable runs to the shared store: the count is not fixed
        assert re.match(r"speed vs quality over \d+ runs", title) and f"skipped: frame shapes differ: {sizes}" in title
        assert f"skipped run {damaged.name}: frames.npz: unreadable" in title
    write_report(store.load(ids["dense"]), tmp_path / "dense.html", store)
    with pytest.raises(UserError, match=rf"{ids['dense']} has \(9, 128, 128, 3\), {ids['svg2']} has \(9, 64, 96, 3\)"):
        panels.compare_runs_panel([store.load(ids["dense"]), store.load(ids["svg2"])])


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda a, key: a.update({key: a[key][:-1]}), r"has shape \[\d+, \d+\], its index entry says"),
        (lambda a, key: a.update({key: a[key][:, :-1]}), r"not 4x4 tokens|its index entry says"),
        (lambda a, key: a.pop(key), "is missing"),
    ],
)
def test_motion_maps_that_do_not_match_their_index_are_damage(store_copy, change, why):
    store, ids = store_copy
    index = read_index(store.load(ids["motion"]).arrays)
    key = min(k for k, e in index.items() if e["kind"] == "token_counts")
    _rewrite_arrays(lambda arrays: change(arrays, key))(store.root / ids["motion"])
    with pytest.raises(DamagedRunError, match=f"run {ids['motion']} is damaged: arrays.npz: .*{why}"):
        panels.motion_panel(store.load(ids["motion"]))


def test_an_index_of_another_shape_is_an_error_without_a_run():
    assert read_index({"__index__": np.array('{"a": {"kind": "array", "shape": [2]}}')})["a"]["shape"] == [2]
    for text in ("{nope", "[]", '{"a": 1}', '{"a": {"shape": [2]}}', '{"a": {"kind": "array", "shape": [2.5]}}',
                 '{"m": {"kind": "block_mask", "shape": [1, 2, 3], "step": 0, "branch": "cond"}}', DEEP):  # fmt: skip
        with pytest.raises(ArraysError, match=r"arrays\.npz: __index__"):
            read_index({"__index__": np.array(text)})
    index = '{"m": {"kind": "block_mask", "shape": [2, 3, 9], "step": 0, "branch": "cond", "layer": 0}}'
    good = {"__index__": np.array(index), "m": np.zeros((2, 3, 2), np.uint8)}
    assert load_mask(good, "m").shape == (2, 3, 9)
    with pytest.raises(ArraysError, match=r"mask 'm' holds uint8 \[2, 3, 1\]; its shape \[2, 3, 9\] packs to"):
        load_mask({**good, "m": np.zeros((2, 3, 1), np.uint8)}, "m")


def test_a_video_linked_outside_the_store_is_never_served(store_copy, monkeypatch, tmp_path):
    gr = pytest.importorskip("gradio")
    store, ids = store_copy
    _video_linked_outside(store.root / ids["dense"])
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(store.root))
    from accel.ui.views import shown_run

    with pytest.raises(gr.Error) as err:
        shown_run(ids["dense"])
    assert err.value.message == f"run {ids['dense']} is damaged: video.mp4: a symbolic link, refused (a run's files " \
        "live in its folder)"  # fmt: skip
    with pytest.raises(DamagedRunError, match=r"video\.mp4: a symbolic link"):
        write_report(store.load(ids["dense"]), tmp_path / "r.html", store)


def test_a_video_or_frames_over_the_limit_are_refused_unread(store_copy, monkeypatch, tmp_path):
    gr = pytest.importorskip("gradio")
    store, ids = store_copy
    _sparse("video.mp4")(store.root / ids["dense"])
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(store.root))
    from accel.ui.views import shown_run

    big = r"video.mp4: is 3.00 GiB \(3,221,225,472 bytes\), over the 2.00 GiB \(2,147,483,648 bytes\) limit"
    with pytest.raises(gr.Error, match=f"run {ids['dense']} is damaged: {big}"):
        shown_run(ids["dense"])
    with pytest.raises(DamagedRunError, match=big):
        write_report(store.load(ids["dense"]), tmp_path / "r.html", store)
    assert store.load(ids["dense"]).frames().shape == (9, 128, 128, 3)  # frames.npz is within its limit
    monkeypatch.setenv("ACCEL_MAX_VIDEO_BYTES", str(4 * 2**30))
    assert shown_run(ids["dense"])[0].endswith("video.mp4")
    # frames.npz: its size on disk, and what its frames take once unpacked (a small zip can unpack to a lot)
    monkeypatch.setenv("ACCEL_MAX_FRAMES_BYTES", str((store.root / ids["svg2"] / "frames.npz").stat().st_size))
    with pytest.raises(DamagedRunError, match=r"frames\.npz: unpacks to 0\.00 GiB \(442,\d+ bytes\), over the"):
        store.load(ids["svg2"]).frames()
    monkeypatch.setenv("ACCEL_MAX_FRAMES_BYTES", "lots")
    with pytest.raises(UserError, match=r"\$ACCEL_MAX_FRAMES_BYTES must be a number of bytes, got 'lots'"):
        store.load(ids["svg2"]).frames()


def test_a_video_that_decodes_past_the_frames_limit_is_refused_while_decoding(store_copy, monkeypatch):
    store, ids = store_copy
    (store.root / ids["dense"] / "frames.npz").unlink()  # the frames now come from video.mp4
    assert store.load(ids["dense"]).frames().shape == (9, 128, 128, 3)
    monkeypatch.setenv("ACCEL_MAX_FRAMES_BYTES", str(128 * 128 * 3 * 4))  # four frames
    with pytest.raises(DamagedRunError, match=r"video\.mp4: unreadable \(decodes to more than 0\.00 GiB of frames\)"):
        store.load(ids["dense"]).frames()


def test_the_sweep_removes_folders_of_processes_that_are_gone(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(proc.stdout)
    gone = tmp_path / f"accel-profile-{dead}-abc123"
    live = tmp_path / f"accel-compare-{os.getpid()}-def456"
    other = tmp_path / f"not-accel-{dead}-x"
    for folder in (gone, live, other):
        folder.mkdir()
        (folder / "f").write_text("x")
    assert tempdirs.sweep(tmp_path) == [gone]
    assert not gone.exists() and live.is_dir() and other.is_dir()
    tempdirs.remove_own(tmp_path)  # what runs at exit
    assert not live.exists() and other.is_dir()


def test_a_generation_sweeps_before_it_makes_its_profile_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    gone = tmp_path / f"accel-profile-{int(proc.stdout)}-abc123"
    gone.mkdir()
    assert tempdirs.work_dir("profile", wanted=False) is None and not gone.exists()  # what accel.runner calls
    work = tempdirs.work_dir("profile")
    assert Path(work.name).parent == tmp_path and Path(work.name).name.startswith(f"accel-profile-{os.getpid()}-")
    work.cleanup()


def test_repeated_compares_and_exports_keep_one_folder_of_each_kind(stored_runs, monkeypatch, tmp_path):
    pytest.importorskip("gradio")
    store, runs = stored_runs
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("ACCEL_RUNS_DIR", str(store.root))
    from accel.ui.views import export_report

    pair = [runs["dense"], runs["xattention"]]
    for _ in range(3):
        side, *_ = panels.compare_runs_panel(pair)
        export_report(runs["svg2"].run_id)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n.rsplit("-", 1)[0] for n in names] == [f"accel-{k}-{os.getpid()}" for k in ("compare", "report")]
    assert side.is_file() and side.parent.name == names[0]


def test_a_compare_video_stays_downloadable_after_the_next_compare(served_app):
    client_mod = pytest.importorskip("gradio_client")
    _, demo, _, runs = served_app
    client = client_mod.Client(demo.local_url, verbose=False, download_files=False)
    pair = [runs["dense"].run_id, runs["xattention"].run_id]
    first = client.predict(pair, api_name="/compare")[0]  # the FileData of gradio's copy
    client.predict(pair[::-1], api_name="/compare")
    folders = [p for p in Path(tempfile.gettempdir()).glob(f"accel-compare-{os.getpid()}-*")]
    assert len(folders) == 1  # the first compare's folder is gone; gradio serves its cached copy
    with urllib.request.urlopen(first["url"], timeout=30) as reply:
        assert reply.status == 200 and reply.read(12)[4:8] == b"ftyp"  # an MP4


def test_a_run_that_cannot_be_read_is_listed_as_damaged_not_hidden(store_copy, monkeypatch):
    """A permission or I/O error on a complete run is not 'no run here': list(damaged=True) names it."""
    import accel.runs.store as store_module

    store, ids = store_copy
    victim, read = ids["svg2"], store_module._read_complete_run

    def unreadable(path):
        if path.name == victim:
            raise PermissionError(13, "Permission denied")
        return read(path)

    monkeypatch.setattr(store_module, "_read_complete_run", unreadable)
    assert victim not in {i.run_id for i in store.list()}
    flagged = {i.run_id: i.damaged for i in store.list(damaged=True) if i.damaged}
    assert flagged == {victim: "cannot be read: Permission denied"}


def test_a_commit_refuses_a_folder_it_cannot_sync_and_a_config_nested_too_deep(tmp_path, monkeypatch):
    from accel.runs import durable
    from accel.runs.errors import IncompleteRunError

    (tmp_path / "run" / "sub").mkdir(parents=True)
    real_walk = os.walk

    def walk(path, onerror=None):
        onerror(PermissionError(13, "Permission denied", str(path)))
        yield from real_walk(path)

    monkeypatch.setattr(durable.os, "walk", walk)
    with pytest.raises(PermissionError):
        durable._sync_tree(tmp_path / "run")
    monkeypatch.undo()
    store = RunStore(tmp_path / "runs")
    with pytest.raises(IncompleteRunError, match=r"config\.json is not valid JSON"), store.writer("deep") as w:
        (w.path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
        w.write_json("metrics.json", {"wall_s": 1.0})
    assert store.list(damaged=True) == []

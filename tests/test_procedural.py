"""Procedural synthetic-truth clips (accel.synthetic.procedural) and the prompt-only scorer (its scoring module)."""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
import pytest

from accel.synthetic import procedural as P
from accel.synthetic import scoring as S

OPPOSITE = {
    "left": "right",
    "right": "left",
    "up": "down",
    "down": "up",
    "up-left": "down-right",
    "down-right": "up-left",
    "up-right": "down-left",
    "down-left": "up-right",
}


def blur_jpeg(frames: np.ndarray, quality: int = 50) -> np.ndarray:
    """Gaussian blur (sigma 1) then JPEG at the given quality, frame by frame."""
    out = []
    for f in frames:
        bgr = cv2.cvtColor(cv2.GaussianBlur(f, (0, 0), 1.0), cv2.COLOR_RGB2BGR)
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        out.append(cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(out)


def down_up(frames: np.ndarray, factor: int = 8) -> np.ndarray:
    """Downscale by ``factor`` (area) and upscale back (bilinear), like an 8x VAE bottleneck without detail."""
    h, w = frames.shape[1:3]
    small = [cv2.resize(f, (w // factor, h // factor), interpolation=cv2.INTER_AREA) for f in frames]
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in small])


@pytest.fixture(scope="module")
def bg_clips() -> list[P.Clip]:
    """Twenty 128 px clips: five sampled layouts (one, two and three objects) on each background kind."""
    specs = [P.sample_spec(np.random.default_rng([11, i])) for i in range(40)]
    picked = [next(s for s in specs if len(s.scene.objects) == n) for n in (1, 2, 3)]
    picked += [s for s in specs if s.scene.pan is not None][:2]
    clips = []
    for kind in P.BACKGROUNDS:
        for spec in picked:
            scene = dataclasses.replace(spec.scene, background=kind)
            clips.append(P.render(dataclasses.replace(spec, scene=scene)))
    return clips


def test_dataset_is_deterministic_and_seeded() -> None:
    a = list(P.dataset(3, seed=5, height=64, width=64, frames=9))
    b = list(P.dataset(2, seed=5, height=64, width=64, frames=9))
    c = list(P.dataset(2, seed=6, height=64, width=64, frames=9))
    for x, y in zip(a[:2], b, strict=True):
        assert x.prompt == y.prompt
        np.testing.assert_array_equal(x.frames, y.frames)
        np.testing.assert_array_equal(x.truth.objects[0].centers, y.truth.objects[0].centers)
    assert [x.prompt for x in a[:2]] != [x.prompt for x in c]
    assert a[0].frames.dtype == np.uint8 and a[0].frames.shape == (9, 64, 64, 3)
    tail = list(P.dataset(2, seed=5, height=64, width=64, frames=9, start=1))  # a worker's share: clips 1, 2
    assert [x.prompt for x in tail] == [x.prompt for x in a[1:]] == [P.spec_at(i, 5).prompt for i in (1, 2)]
    np.testing.assert_array_equal(tail[1].frames, a[2].frames)


@pytest.mark.parametrize(("height", "width", "frames"), [(64, 64, 17), (128, 128, 17), (256, 256, 5), (64, 96, 9)])
def test_render_sizes(height: int, width: int, frames: int) -> None:
    clip = next(P.dataset(1, seed=3, height=height, width=width, frames=frames))
    assert clip.frames.shape == (frames, height, width, 3)
    for obj in clip.truth.objects:
        assert obj.centers.shape == (frames, 2)
        assert obj.size >= 0.12 * min(height, width) - 1e-9
        # The whole shape stays inside the frame.
        assert (obj.centers - obj.extent >= -0.5).all()
        assert (obj.centers[:, 0] + obj.extent <= width - 0.5).all()
        assert (obj.centers[:, 1] + obj.extent <= height - 0.5).all()


def test_objects_never_overlap() -> None:
    for clip in P.dataset(30, seed=9, height=64, width=64, frames=5):
        objs = clip.truth.objects
        for i in range(len(objs)):
            for j in range(i):
                gap = np.linalg.norm(objs[i].centers - objs[j].centers, axis=1)
                assert (gap >= objs[i].extent + objs[j].extent).all()


def test_prompt_round_trip_and_spec_rules() -> None:
    for i in range(300):
        spec = P.sample_spec(np.random.default_rng([1, i]), split="any")
        scene = spec.scene
        assert P.parse_prompt(spec.prompt) == scene
        assert P.parse_prompt(spec.prompt.upper() + ".") == scene
        colours = [o.colour for o in scene.objects]
        assert 1 <= len(colours) <= 3 and len(set(colours)) == len(colours)
        assert scene.bg_colour not in colours
    doc = (
        "a red circle and a blue square move slowly left, a white star moves quickly up and an orange triangle "
        "moves slowly down over a textured green background while the camera pans right"
    )
    scene = P.parse_prompt(doc)
    assert [(o.colour, o.direction, o.speed) for o in scene.objects] == [
        ("red", "left", "slow"),
        ("blue", "left", "slow"),
        ("white", "up", "fast"),
        ("orange", "down", "slow"),
    ]
    assert (scene.background, scene.bg_colour, scene.pan) == ("textured", "green", "right")
    assert P.parse_prompt("a red circle moves slowly left over a blue background").background == "plain"
    for bad in (
        "a red circle over a blue background",
        "a red circle moves slowly sideways over a blue background",
        "a pink circle moves slowly left over a blue background",
        "a red circle moves slowly left",
        "a red circle moves slowly left and a cat over a blue background",
    ):
        with pytest.raises(ValueError):
            P.parse_prompt(bad)


def test_palette_is_well_separated() -> None:
    lab = S._PALETTE_LAB
    dist = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    assert dist[~np.eye(len(lab), dtype=bool)].min() > 45.0
    # Every background shade (gradient / texture lightness range) is still classified as its own colour.
    for k, name in enumerate(P.COLOURS):
        shades = lab[k][None].repeat(3, 0)
        shades[:, 0] = np.clip(shades[:, 0] + np.array([-1.0, 0.0, 1.0]) * P.BG_L_AMPLITUDE, 0.0, 100.0)
        rgb = np.clip(cv2.cvtColor(shades[None].astype(np.float32), cv2.COLOR_Lab2RGB), 0.0, 1.0)
        labels = S.classify_pixels(np.round(rgb[None] * 255.0).astype(np.uint8))
        assert (labels == k).all(), name


def test_held_out_split_is_disjoint() -> None:
    combos = P.held_out_combos()
    assert 0 < len(combos) < 0.25 * len(P.COLOURS) * len(P.SHAPES) * len(P.DIRECTIONS)
    # Every colour, shape and direction still occurs in training.
    for values, pos in ((P.COLOURS, 0), (P.SHAPES, 1), (P.DIRECTIONS, 2)):
        for v in values:
            assert sum(c[pos] == v for c in combos) < len(combos)
    held = P.held_out_prompts(40, seed=0)
    assert held == P.held_out_prompts(40, seed=0) and len(set(held)) > 30
    for prompt in held:
        assert any(P.is_held_out(o.colour, o.shape, o.direction) for o in P.parse_prompt(prompt).objects)
    train = [P.sample_spec(np.random.default_rng([2, i])) for i in range(300)]
    for spec in train:
        assert not any(P.is_held_out(o.colour, o.shape, o.direction) for o in spec.scene.objects)
    assert not set(held) & {s.prompt for s in train}
    basic = P.held_out_prompts(5, seed=1, shapes=P.BASIC_SHAPES, directions=P.BASIC_DIRECTIONS)
    for prompt in basic:
        for o in P.parse_prompt(prompt).objects:
            assert o.shape in P.BASIC_SHAPES and o.direction in P.BASIC_DIRECTIONS


def test_truth_moves_in_named_direction(bg_clips: list[P.Clip]) -> None:
    for clip in bg_clips:
        side = min(clip.frames.shape[1:3])
        for obj in clip.truth.objects:
            disp = obj.centers[-1] - obj.centers[0]
            want = np.asarray(P.DIRECTIONS[obj.direction])
            cos = disp @ want / np.linalg.norm(disp)
            assert math.degrees(math.acos(min(1.0, cos))) < 15.0  # pan adds at most ~14 degrees
            assert np.linalg.norm(disp) == pytest.approx(
                np.linalg.norm(P.SPEEDS[obj.speed] * side * want + clip.truth.pan_offsets[-1])
            )
            # Rendered pixels of the object's colour are centred on the truth.
            mask = np.all(clip.frames[0] == P.PALETTE[obj.colour], axis=-1)
            ys, xs = np.nonzero(mask)
            assert abs(xs.mean() - obj.centers[0, 0]) < 1.0 and abs(ys.mean() - obj.centers[0, 1]) < 1.0


@pytest.mark.parametrize("degrade", [None, blur_jpeg, down_up], ids=["clean", "blur_jpeg", "down8_up"])
def test_scorer_passes_ground_truth(bg_clips: list[P.Clip], degrade) -> None:
    videos = [c.frames if degrade is None else degrade(c.frames) for c in bg_clips]
    table = S.score_many(videos, [c.prompt for c in bg_clips])
    acc = S.aggregate(table)
    assert acc["colour_acc"] == 1.0 and acc["direction_acc"] == 1.0 and acc["count_acc"] == 1.0, table
    assert acc["speed_acc"] >= 0.9 and acc["background_acc"] == 1.0
    assert len(table) == len(bg_clips) and set(S.CRITERIA) <= set(table.columns)


def test_scorer_rejects_wrong_prompts_and_noise(bg_clips: list[P.Clip]) -> None:
    clips = bg_clips[::2]
    wrong_dir, wrong_colour = [], []
    for clip in clips:
        scene = clip.spec.scene
        first = scene.objects[0]
        flipped = dataclasses.replace(first, direction=OPPOSITE[first.direction])
        wrong_dir.append(dataclasses.replace(scene, objects=(flipped, *scene.objects[1:])).prompt())
        unused = next(c for c in P.COLOURS if c not in {o.colour for o in scene.objects} | {scene.bg_colour})
        recoloured = dataclasses.replace(first, colour=unused)
        wrong_colour.append(dataclasses.replace(scene, objects=(recoloured, *scene.objects[1:])).prompt())
    frames = [c.frames for c in clips]
    by_dir = S.aggregate(S.score_many(frames, wrong_dir))
    assert by_dir["direction_acc"] == 0.0 and by_dir["colour_acc"] == 1.0
    by_colour = S.aggregate(S.score_many(frames, wrong_colour))
    assert by_colour["colour_acc"] == 0.0 and by_colour["all_acc"] == 0.0
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, c.frames.shape, dtype=np.uint8) for c in clips[:4]]
    by_noise = S.aggregate(S.score_many(noise, [c.prompt for c in clips[:4]]))
    assert by_noise["colour_acc"] == 0.0 and by_noise["count_acc"] == 0.0 and by_noise["direction_acc"] == 0.0


def test_score_video_details() -> None:
    clip = next(P.dataset(1, seed=4))
    score = S.score_video(clip.frames, clip.prompt)
    assert score.all_ok and score.n_detected == score.n_expected == len(clip.truth.objects)
    for obj_score, truth in zip(score.objects, clip.truth.objects, strict=True):
        assert obj_score.colour == truth.colour and obj_score.present_frac == 1.0
        np.testing.assert_allclose(obj_score.centroids, truth.centers, atol=1.5)
    # A static video: every colour is found but nothing moves.
    still = np.repeat(clip.frames[:1], len(clip.frames), axis=0)
    static = S.score_video(still, clip.prompt)
    assert static.colour_ok and not static.direction_ok and static.flicker == 0.0 and static.bg_flicker == 0.0
    row = score.as_row()
    assert row["all_ok"] is True and "objects" not in row
    with pytest.raises(ValueError):
        S.score_video(clip.frames.astype(np.float32), clip.prompt)


def test_every_prompt_the_app_and_the_readme_offer_is_in_the_grammar() -> None:
    """The embedded models learned the procedural grammar only: the app's default prompt, the bench scripts' default
    and every ``--prompt "..."`` of the README (its commands run on the embedded model) must parse."""
    import re
    from pathlib import Path

    from accel.ebc.spec import GRAMMAR_PROMPTS, default_prompts
    from accel.forms import DEFAULT_PROMPT, EXAMPLE_PROMPTS

    assert default_prompts("pocket-wan") == GRAMMAR_PROMPTS != default_prompts("wan2.1-1.3b")
    root = Path(__file__).resolve().parents[1]
    readme = re.findall(r'--prompt "([^"]+)"', (root / "README.md").read_text(encoding="utf-8"))
    device_check = re.findall(r'"--prompt", default="([^"]+)"', (root / "devicecheck/generate.py").read_text())
    offered = [DEFAULT_PROMPT, *EXAMPLE_PROMPTS, *readme, *device_check, *GRAMMAR_PROMPTS]
    assert len(offered) >= 5
    for prompt in offered:
        P.parse_prompt(prompt)  # raises on a prompt outside the grammar
    with pytest.raises(ValueError, match="without motion"):
        P.parse_prompt("a red circle moves left over a blue background")  # no speed word: not in the grammar


def test_the_embedded_tokenizers_know_every_grammar_word() -> None:
    """No grammar word may be <unk> (diamond, vertical/horizontal and upper/lower once were): the models could not
    tell a diamond from a star, or an upper-left motion from a lower-left one."""
    from transformers import AutoTokenizer

    from accel.paths import ASSETS

    words = {w for group in (P.COLOURS, P.SHAPES, P.BACKGROUNDS, P.DIRECTION_PHRASES.values(), P.SPEED_WORDS.values())
             for phrase in group for w in phrase.split()}  # fmt: skip
    words |= {"an", "over", "background", "moves", "move", "and", "while", "the", "camera", "pans"}
    for model in ("tiny-wan", "tiny-skyreels", "pocket-wan", "pocket-skyreels"):
        tok = AutoTokenizer.from_pretrained(ASSETS / model / "tokenizer")
        unknown = [w for w in sorted(words) if tok.convert_tokens_to_ids(w) == tok.unk_token_id]
        assert not unknown, (model, unknown)

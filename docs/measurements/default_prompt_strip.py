"""The README's picture of the app's first video: the default prompt on pocket-wan, seeds 0-3, frames 0 / 8 / 16.

``python docs/measurements/default_prompt_strip.py`` writes ``docs/images/default_prompt.jpg`` (dense runs in a
temporary store; each row captioned with its seed and the scorer's verdict).
"""

import tempfile

import cv2
import numpy as np

from accel.config import RunConfig
from accel.forms import DEFAULT_PROMPT
from accel.runner import generate
from accel.runs import RunStore
from accel.synthetic.scoring import score_video
from viz.images import captioned, enlarged

rows = []
with tempfile.TemporaryDirectory() as tmp:
    for seed in range(4):
        run = generate(RunConfig(prompt=DEFAULT_PROMPT, seed=seed), RunStore(tmp))
        frames = run.frames()
        s = score_video(frames, DEFAULT_PROMPT)
        checks = {"colour": s.colour_ok, "direction": s.direction_ok, "background": s.background_ok}
        verdict = ", ".join(f"{k} {'ok' if v else 'wrong'}" for k, v in checks.items())
        strip = np.concatenate([frames[i] for i in (0, len(frames) // 2, len(frames) - 1)], axis=1)
        rows.append(captioned(enlarged(strip[None], 3 * 192), f"seed {seed}: {verdict}")[0])
image = np.concatenate(rows, axis=0)
cv2.imwrite("docs/images/default_prompt.jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
print(f"docs/images/default_prompt.jpg {image.shape}")

#!/usr/bin/env bash
# Stage the device check on the CPU machine (the one with a package registry), from anywhere in the checkout:
#   bash devicecheck/stage.sh
# It fills .whl/ (git-ignored) with what the H200 image lacks: the diffusers 0.42.1, ftfy and wcwidth wheels,
# and imageio-ffmpeg's Python part (its ffmpeg binary is too large to carry; without it video.mp4 becomes an
# empty placeholder and the lossless frames.npz is kept). The scripts need no staging: devicecheck/ is part
# of the working tree that travels. Then, on the device machine (run tool: carry [".whl"], timeout_s 590):
#   python3 devicecheck/check.py
set -euo pipefail
root=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$root"
if ! git check-ignore -q .whl/probe.whl; then
  echo "stage: .whl/ is not git-ignored here; add the line '/.whl/' to .gitignore first" >&2
  exit 1
fi
py=${PYTHON:-python3}
rm -rf .whl.tmp
mkdir -p .whl.tmp/py
# pure-python wheels for the image's CPython 3.12 on x86_64 (the platform flags only matter for imageio-ffmpeg)
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
"$py" -m pip download -q --disable-pip-version-check --no-deps "${plat[@]}" -d .whl.tmp \
  diffusers==0.42.1 ftfy wcwidth imageio-ffmpeg
"$py" - <<'PY'
import glob
import os
import zipfile

[whl] = glob.glob(".whl.tmp/imageio_ffmpeg-*.whl")
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith("imageio_ffmpeg/") and name.endswith(".py"):
            z.extract(name, ".whl.tmp/py")
os.remove(whl)
PY
# which code the numbers will belong to (the device machine gets the working tree without .git)
echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . 2>/dev/null || echo '+dirty') staged $(date -u +%FT%TZ)" \
  > .whl.tmp/COMMIT
rm -rf .whl
mv .whl.tmp .whl
ls -1 .whl
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "staged $(du -sb .whl | cut -f1) bytes in .whl/; tracked files $tracked bytes (the run tool carries 64 MiB in all)"
echo "next: device run  command=\"python3 devicecheck/check.py\"  carry=[\".whl\"]  timeout_s=590"

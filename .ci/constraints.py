"""constraints.txt, the known-good install (a ``pip freeze`` of an environment the whole suite passed in), and the
floors of pyproject.toml as pins.

    python .ci/constraints.py write FREEZE constraints.txt   # .ci/run does this with UPDATE_CONSTRAINTS=1
    python .ci/constraints.py diff FREEZE constraints.txt    # what the newest releases changed (informational)
    python .ci/constraints.py floors pyproject.toml OUT      # pyproject's floors as exact pins (CI's floors leg)

Written as exact pins, except: a local version label is dropped (the CPU wheel ``torch==2.13.0+cpu`` becomes
``torch==2.13.0``, which a GPU machine resolves to the CUDA build of the same release), and ``triton`` is left to
torch (each CUDA build of torch pins its own Triton; the CPU build needs none, the suite runs Triton's interpreter).
"""

from __future__ import annotations

import re
import sys
import tomllib
from datetime import date
from pathlib import Path

LEFT_TO_TORCH = {"triton"}
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;+]+)(\+\S+)?")


def pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of the exact pins in a freeze or constraints file."""
    out = {}
    for line in path.read_text().splitlines():
        m = PIN.match(line.strip())
        if m:
            out[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return out


def write(freeze: Path, dest: Path) -> None:
    kept = {name: v for name, v in sorted(pins(freeze).items()) if name not in LEFT_TO_TORCH}
    head = (
        f"# Known-good install: the exact versions the whole suite last passed with ({date.today()}, Python "
        f"{sys.version_info.major}.{sys.version_info.minor}, CPU).\n"
        '#   pip install -c constraints.txt -e ".[dev]"\n'
        "# Written by .ci/constraints.py (UPDATE_CONSTRAINTS=1 .ci/run); triton is left to torch.\n"
    )
    dest.write_text(head + "".join(f"{name}=={v}\n" for name, v in kept.items()))
    print(f"wrote {len(kept)} pins to {dest}")


def floors(pyproject: Path, dest: Path) -> None:
    """Every ``name>=X`` of the project's dependencies and dev extra as ``name==X`` (markers kept)."""
    cfg = tomllib.loads(pyproject.read_text())
    reqs = cfg["project"]["dependencies"] + cfg["project"]["optional-dependencies"]["dev"]
    out = []
    for req in reqs:
        m = re.match(r"^([A-Za-z0-9._-]+)\s*>=\s*([^\s,;]+)\s*(;.*)?$", req)
        if not m:
            raise SystemExit(f"{pyproject}: {req!r} is not 'name>=floor' (every dependency has a tested floor)")
        out.append(f"{m.group(1)}=={m.group(2)}{m.group(3) or ''}\n")
    dest.write_text("".join(out))
    print(f"wrote {len(out)} floors to {dest}")


def diff(freeze: Path, known: Path) -> None:
    new, old = pins(freeze), pins(known)
    changed = [f"  {n}: {old.get(n, '-')} -> {new.get(n, '-')}" for n in sorted(set(new) | set(old))
               if n not in LEFT_TO_TORCH and new.get(n) != old.get(n)]  # fmt: skip
    print(f"newest releases against {known}: " + (f"{len(changed)} differ\n" + "\n".join(changed) if changed else
                                                   "the same versions"))  # fmt: skip


if __name__ == "__main__":
    commands = {"write": write, "diff": diff, "floors": floors}
    if len(sys.argv) != 4 or sys.argv[1] not in commands:
        raise SystemExit(__doc__)
    commands[sys.argv[1]](Path(sys.argv[2]), Path(sys.argv[3]))

"""Print the serving environment's requirements: pyproject.toml's pins, with requirements-serving.txt's winning.

    python3 images/pipeline/serving_requirements.py > requirements.txt

pyproject.toml stays the one place for the stage package's pins; the serving
list names only what the model server adds or must pin differently (kserve
0.21.0 caps pandas<3 and psutil<6). Standard library only, so it runs before
any venv exists.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTRAS = ("test",)


def requirement_name(line: str) -> str:
    """``tritonclient[http]==2.73.0`` -> ``tritonclient`` (normalised as pip compares names)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line.strip())
    if match is None:
        raise SystemExit(f"serving_requirements: cannot read a package name in {line!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def serving_requirements() -> list[str]:
    serving = [
        line.strip()
        for line in (HERE / "requirements-serving.txt").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    replaced = {requirement_name(line) for line in serving}
    project = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    stage = [*project["dependencies"], *(dep for extra in EXTRAS for dep in project["optional-dependencies"][extra])]
    return [dep for dep in stage if requirement_name(dep) not in replaced] + serving


if __name__ == "__main__":
    sys.stdout.write("\n".join(serving_requirements()) + "\n")

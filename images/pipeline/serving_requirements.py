"""Print the serving environment's requirements: pyproject.toml's pins, with requirements-serving*.txt's winning.

    python3 images/pipeline/serving_requirements.py > requirements.txt    # .venv/serving, with the tests' tools
    python3 images/pipeline/serving_requirements.py --image               # the image's /opt/serving (make lock)
    python3 images/pipeline/serving_requirements.py --constraints LOCK    # LOCK's pins the serving list keeps

pyproject.toml stays the one place for the stage package's pins; the serving
lists name only what the model server adds or must pin differently (kserve
0.21.0 caps pandas<3 and psutil<6): requirements-serving.txt what it runs on,
requirements-serving-test.txt what only its tests add. In the image the serving
environment sits on top of the stage venv and holds only what differs from it,
so ``make lock`` resolves the serving list under the stage lock's pins
(``--constraints``): every package both share is then the same file. Standard
library only, so it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
SERVING = HERE / "requirements-serving.txt"
SERVING_TEST = HERE / "requirements-serving-test.txt"
# ``name==version`` at the start of a lock entry (``uv pip compile`` output).
LOCK_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def requirement_name(line: str) -> str:
    """``tritonclient[http]==2.73.0`` -> ``tritonclient`` (normalised as pip compares names)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line.strip())
    if match is None:
        raise SystemExit(f"serving_requirements: cannot read a package name in {line!r}")
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def requirement_lines(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def serving_requirements(*, with_tests: bool = True) -> list[str]:
    """pyproject.toml's dependencies (and its test extra), the serving lists' pins replacing those of the same name."""
    serving = requirement_lines(SERVING) + (requirement_lines(SERVING_TEST) if with_tests else [])
    replaced = {requirement_name(line) for line in serving}
    project = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = ("test",) if with_tests else ()
    stage = [*project["dependencies"], *(dep for extra in extras for dep in project["optional-dependencies"][extra])]
    return [dep for dep in stage if requirement_name(dep) not in replaced] + serving


def shared_pins(lock: Path) -> list[str]:
    """The stage lock's ``name==version`` pins, less the packages the serving list pins differently."""
    replaced = {requirement_name(line) for line in requirement_lines(SERVING)}
    pins = (LOCK_PIN.match(line) for line in lock.read_text(encoding="utf-8").splitlines())
    return [f"{pin[1]}=={pin[2]}" for pin in pins if pin and requirement_name(pin[1]) not in replaced]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--image", action="store_true", help="the image's runtime list: no test tools")
    mode.add_argument("--constraints", type=Path, metavar="LOCK", help="LOCK's pins that the serving list keeps")
    args = parser.parse_args(argv)
    if args.constraints is not None:
        lines = shared_pins(args.constraints)
    else:
        lines = serving_requirements(with_tests=not args.image)
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

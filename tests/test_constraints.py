"""`make test` installs exactly what requirements/constraints.txt pins: every package setup.cfg asks for (the core
requirements and the `dev` extra) and everything those pull in. A package missing from the file is installed at
whatever its newest release is that day, so a release elsewhere could turn CI red between two sessions."""

from __future__ import annotations

import configparser
import re
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# The installer's own tools come with the interpreter's venv and are not pinned (`pip freeze` leaves them out).
INSTALLER_TOOLS = {"pip", "setuptools", "wheel"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def declared_requirements() -> list[Requirement]:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg", encoding="utf-8")
    lines = setup["options"]["install_requires"].splitlines()
    lines += setup["options.extras_require"]["dev"].splitlines()
    return [Requirement(line) for line in (line.split("#", 1)[0].strip() for line in lines) if line]


def installed_closure(requirements: list[Requirement]) -> set[str]:
    """The declared packages and, through their installed metadata, everything they depend on here (markers
    evaluated for this interpreter, extras not taken)."""
    seen: set[str] = set()
    queue = [r for r in requirements if r.marker is None or r.marker.evaluate()]
    while queue:
        requirement = queue.pop()
        name = canonical(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dependencies = distribution(requirement.name).requires or []
        except PackageNotFoundError:
            continue  # reported by the direct check below when it is a declared package
        for line in dependencies:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                queue.append(dependency)
    return seen


def test_every_declared_package_is_pinned() -> None:
    pins = pinned_versions()
    missing = sorted(canonical(r.name) for r in declared_requirements() if canonical(r.name) not in pins)
    assert not missing, (
        f"setup.cfg asks for {missing}, which requirements/constraints.txt lacks: run `make constraints`"
    )


def test_every_dependency_of_the_declared_packages_is_pinned() -> None:
    pins = pinned_versions()
    missing = sorted(installed_closure(declared_requirements()) - set(pins) - INSTALLER_TOOLS)
    assert not missing, (
        f"installed as dependencies of setup.cfg's packages but not pinned: {missing}; run `make constraints`"
    )

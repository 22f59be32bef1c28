#!/usr/bin/env python3
"""Print the project's dependencies from pyproject.toml as a requirements list (one per line).

The images install dependencies in their own layer, before the source is copied, so that a code
change does not reinstall torch.  ``--extra NAME`` adds an optional-dependency group;
``--override SPEC`` replaces the requirement of the same distribution (the CUDA image uses it to
take vLLM's torch/torchvision/transformers pins).  Standard library only: it runs before anything
is installed.

    python pyproject_deps.py pyproject.toml --extra gpu --override torch==2.14.0
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def dist_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement (``Ray[serve]>=2`` -> ``ray``)."""
    m = _NAME.match(requirement)
    if not m:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def requirements(pyproject: Path, extras: list[str], overrides: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"pyproject_deps: unknown extra {extra!r} (have: {', '.join(sorted(optional))})")
        reqs += optional[extra]
    by_name = {dist_name(o): o for o in overrides}
    out, seen = [], set()
    for r in reqs:
        name = dist_name(r)
        if name in by_name:
            r = by_name[name]
        seen.add(name)
        out.append(r)
    out += [o for n, o in by_name.items() if n not in seen]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pyproject", type=Path)
    p.add_argument("--extra", action="append", default=[], help="optional-dependency group to add (repeatable)")
    p.add_argument("--override", action="append", default=[], metavar="SPEC",
                   help="requirement replacing the one of the same distribution (repeatable)")
    args = p.parse_args(argv)
    print("\n".join(requirements(args.pyproject, args.extra, args.override)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

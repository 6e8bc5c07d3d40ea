"""Exit 0 when this checkout is installed in the running Python with every requirement of pyproject.toml
(and of the extras named on the command line) met; 1 otherwise, with what is missing.

``tools/install.sh`` asks this first, so that the example scripts and the test command do not run pip
again on a machine where everything is in place (seconds per start otherwise).

    python3 tools/check_install.py test
"""

from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "megatron-ds"


def unmet_requirements(extras: list[str]) -> list[str]:
    """What stands between this Python and a complete install of the checkout with ``extras``."""
    import tomllib  # Python 3.11+; on 3.10 the ImportError makes install.sh install
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [extra for extra in extras if extra not in optional]
    if unknown:
        raise ValueError(f"no extra {', '.join(unknown)} in pyproject.toml (it has {', '.join(optional)})")
    wanted = list(project["dependencies"]) + [line for extra in extras for line in optional[extra]]
    unmet = []
    try:
        direct_url = json.loads(metadata.distribution(DISTRIBUTION).read_text("direct_url.json") or "{}")
    except metadata.PackageNotFoundError:
        direct_url = {}
    if direct_url.get("url") != REPO_ROOT.as_uri() or not direct_url.get("dir_info", {}).get("editable"):
        unmet.append(f"{DISTRIBUTION} installed (editable) from {REPO_ROOT}")
    unmet += _missing_console_scripts(project.get("scripts", {}))
    for line in wanted:
        requirement = Requirement(line)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(line)
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{line} (found {version})")
    return unmet


def _missing_console_scripts(scripts: dict[str, str]) -> list[str]:
    """Commands of [project.scripts] that the installed distribution lacks: an editable install made before
    a command was added does not have it until pip installs the checkout again."""
    try:
        installed = {
            ep.name for ep in metadata.distribution(DISTRIBUTION).entry_points.select(group="console_scripts")
        }
    except metadata.PackageNotFoundError:
        return []  # reported as the distribution itself missing
    return [f"console script {name} ({target})" for name, target in scripts.items() if name not in installed]


def main(extras: list[str]) -> int:
    try:
        unmet = unmet_requirements(extras)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except ImportError as error:  # Python 3.10 (no tomllib), or no packaging module: let pip decide
        print(f"cannot tell what is installed ({error})", file=sys.stderr)
        return 1
    if unmet:
        print("to install: " + ", ".join(unmet), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

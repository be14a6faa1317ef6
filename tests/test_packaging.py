"""The installed layout: every package folder is installed under ``better.``, and nothing else is."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_folder_is_installed_under_better() -> None:
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping = setup["package-dir"]
    folders = {
        "better." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in mapping.values()
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert folders == set(setup["packages"])
    assert all(name == f"better.{folder}" for name, folder in mapping.items())


def test_the_installed_modules_come_from_the_folders() -> None:
    import better.engine
    import better.station_api

    assert Path(better.engine.__file__).parent == ROOT / "engine"
    assert Path(better.station_api.__file__).parent == ROOT / "station_api"


def test_the_layers_import_only_downwards__nothing_below_imports_jobs_or_cli() -> None:
    folders = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    # the command line stands on the jobs, the jobs on the coordinator and everything below it
    above = {folder: ("better.jobs", "better.cli") for folder in folders if folder not in ("jobs", "cli")}
    above["jobs"] = ("better.cli",)
    wrong = []
    for folder, forbidden in above.items():
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                wrong += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith(forbidden)]
    assert not wrong

"""The installed layout: every package folder is installed under ``better.``, and nothing else is."""

from __future__ import annotations

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

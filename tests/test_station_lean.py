"""A lean station: the server never imports the simulation and plotting libraries, and the optional
dependency groups describe the whole base list (docs/station.md, "A lean install")."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What a station never needs: `better synth` (msprime) and the GWAS job's plots (matplotlib).
NOT_FOR_A_STATION = ("msprime", "matplotlib")


def test_the_station_app_imports_no_simulation_or_plotting(tmp_path: Path) -> None:
    # A fresh interpreter: this test process has imported everything the other tests needed.
    code = f"""
import json, sys
from pathlib import Path

import pytest
from better.genomics.store import Store
from better.station_api.app import create_app
from better.station_api.config import StationConfig, write_config

station = Path({str(tmp_path / "station")!r})
Store.create(station)
write_config(station, StationConfig(name="lean"))
create_app(station).openapi()
print(json.dumps(sorted(m for m in {NOT_FOR_A_STATION!r} if m in sys.modules)))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_dependency_groups_split_the_base_list() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = {k: v for k, v in project["optional-dependencies"].items() if k != "test"}
    assert sorted(r for v in groups.values() for r in v) == sorted(project["dependencies"])
    assert not any(r.startswith(NOT_FOR_A_STATION) for r in groups["station"])


def test_a_command_missing_a_left_out_package_names_the_group_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import better.cli as cli

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    groups = project["optional-dependencies"]
    for module, group in cli.OPTIONAL_GROUPS.items():  # every named group exists and brings the package
        wanted = {"yaml": "pyyaml"}.get(module, module)
        assert any(r.startswith(wanted) for r in groups[group]), (module, group)

    def lean() -> None:
        raise ModuleNotFoundError("No module named 'msprime'", name="msprime")

    monkeypatch.setattr(cli, "app", lean)
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 1
    assert "pip install 'better-genomics[simulate]'" in capsys.readouterr().err.replace("\n", "")

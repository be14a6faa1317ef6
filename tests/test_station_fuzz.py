"""Fuzz every operation of the station's OpenAPI document (schemathesis): no 5xx, no traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis  # a declared test dependency (pyproject's "test" extra): missing, this file fails
from hypothesis import HealthCheck, given, settings

from tests.servers import StationSetup, auth, make_station, serve


@pytest.fixture(scope="module")
def station(small_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StationSetup, str]]:
    st = make_station(tmp_path_factory.mktemp("fuzz"), "barcelona", small_cohort)
    with serve(st.path) as url:
        yield st, url


@pytest.mark.parametrize("who", ["researcher", "admin", "nobody"])
def test_fuzz__no_server_error_and_no_traceback(station: tuple[StationSetup, str], who: str) -> None:
    st, url = station
    headers = {"researcher": auth(st.researcher), "admin": auth(st.admin), "nobody": {}}[who]
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "PUT" and operation.path == "/admin/policy":
            continue  # fuzzing the policy would change it for the other operations; tested on its own

        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def check(case: object) -> None:
            response = case.call(base_url=url, headers=headers, timeout=30)  # type: ignore[attr-defined]
            assert response.status_code < 500, (case, response.status_code, response.text[:500])
            assert "Traceback" not in response.text

        check()
        seen += 1
    assert seen >= 13

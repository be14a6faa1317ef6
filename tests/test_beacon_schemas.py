"""The vendored Beacon v2 schemas and ``tests/beacon_schema.validate``: complete, offline, and strict enough."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import urldefrag, urljoin

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing.exceptions import Unresolvable

from tests.beacon_schema import (
    SCHEMA_ROOT,
    BeaconSchemaError,
    local_path,
    registry,
    schema_files,
    schema_uri,
    validate,
)

RESPONSES = "framework/json/responses/"
ENTRY_POINTS = (
    *(
        RESPONSES + name
        for name in (
            "beaconBooleanResponse.json",
            "beaconCountResponse.json",
            "beaconResultsetsResponse.json",
            "beaconCollectionsResponse.json",
            "beaconErrorResponse.json",
            "beaconInfoResponse.json",
            "beaconConfigurationResponse.json",
            "beaconMapResponse.json",
            "beaconEntryTypesResponse.json",
            "beaconFilteringTermsResponse.json",
            "ga4gh-service-info-1-0-0-schema.json",
        )
    ),
    "framework/json/requests/beaconRequestBody.json",
    "models/json/beacon-v2-default-model/datasets/defaultSchema.json",
)
DATASET = "models/json/beacon-v2-default-model/datasets/defaultSchema.json"


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _load(name: str) -> Any:
    return json.loads((SCHEMA_ROOT / name).read_text(encoding="utf-8"))


# --- the vendored files ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", schema_files())
def test_each_vendored_file_is_a_2020_12_schema(name: str) -> None:
    schema = _load(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


def test_the_vendored_files_are_the_ref_closure_of_the_entry_points() -> None:
    """Nothing missing, nothing extra; every ``$ref`` (fragment included) resolves offline."""
    seen: set[str] = set()
    todo = list(ENTRY_POINTS)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        base = schema_uri(name)
        resolver = registry().resolver(base_uri=base)
        for ref in _refs(_load(name)):
            resolver.lookup(ref)  # raises Unresolvable if the target or its JSON pointer is missing
            target = urldefrag(urljoin(base, ref)).url
            if target != base:
                found = local_path(target)
                assert found is not None, f"{name}: $ref {ref!r} is not vendored"
                todo.append(found)
    assert seen == set(schema_files())


def test_remote_beacon_refs_are_served_locally_and_other_uris_are_refused() -> None:
    resolver = registry().resolver()
    remote = "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/framework/json/common/ontologyTerm.json"
    assert resolver.lookup(remote).contents == _load("framework/json/common/ontologyTerm.json")
    for uri in ("https://w3id.org/ga4gh/schema/vrs/1.3/vrs.json", "https://example.org/schema.json"):
        with pytest.raises(Unresolvable):
            resolver.lookup(uri)


# --- minimal valid instances -----------------------------------------------------------------------------------------

REQUEST_SUMMARY = {
    "apiVersion": "v2.0.0",
    "requestedSchemas": [],
    "pagination": {"skip": 0, "limit": 10},
    "requestedGranularity": "boolean",
}
META = {  # beaconResponseMeta: boolean, count, resultsets, collections, and error responses
    "beaconId": "org.example.station",
    "apiVersion": "v2.0.0",
    "returnedSchemas": [],
    "returnedGranularity": "boolean",
    "receivedRequestSummary": REQUEST_SUMMARY,
}
INFO_META = {"beaconId": "org.example.station", "apiVersion": "v2.0.0", "returnedSchemas": []}
ENTRY_TYPE = {
    "id": "dataset",
    "name": "Dataset",
    "partOfSpecification": "Beacon v2.0.0",
    "defaultSchema": {
        "id": "ga4gh-beacon-dataset-v2.0.0",
        "name": "Default dataset schema",
        "referenceToSchemaDefinition": "x",
    },
}

#: Per entry point: a minimal valid instance, and (dotted path, key) of a required field to delete.
MINIMAL: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {
    "beaconBooleanResponse.json": ({"meta": META, "responseSummary": {"exists": True}}, ("responseSummary", "exists")),
    "beaconCountResponse.json": (
        {"meta": META, "responseSummary": {"exists": True, "numTotalResults": 3}},
        ("responseSummary", "numTotalResults"),
    ),
    "beaconResultsetsResponse.json": (
        {
            "meta": META,
            "responseSummary": {"exists": True},
            "response": {
                "resultSets": [{"id": "ds1", "setType": "dataset", "exists": True, "resultsCount": 0, "results": []}]
            },
        },
        ("response.resultSets.0", "resultsCount"),
    ),
    "beaconCollectionsResponse.json": (
        {"meta": META, "responseSummary": {"exists": True}, "response": {"collections": []}},
        ("response", "collections"),
    ),
    "beaconErrorResponse.json": ({"meta": META, "error": {"errorCode": 400}}, ("meta", "receivedRequestSummary")),
    "beaconInfoResponse.json": (
        {
            "meta": INFO_META,
            "response": {
                "id": "org.example.station",
                "name": "Example station",
                "apiVersion": "v2.0.0",
                "environment": "test",
                "organization": {"id": "org.example", "name": "Example"},
            },
        },
        ("response", "organization"),
    ),
    "beaconConfigurationResponse.json": (
        {
            "meta": INFO_META,
            "response": {"$schema": "x", "maturityAttributes": {}, "entryTypes": {"dataset": ENTRY_TYPE}},
        },
        ("response", "$schema"),
    ),
    "beaconMapResponse.json": (
        {
            "meta": INFO_META,
            "response": {
                "$schema": "x",
                "endpointSets": {"dataset": {"entryType": "dataset", "rootUrl": "https://example.org/api/datasets"}},
            },
        },
        ("response.endpointSets.dataset", "rootUrl"),
    ),
    "beaconEntryTypesResponse.json": (
        {"meta": INFO_META, "response": {"entryTypes": {"dataset": ENTRY_TYPE}}},
        ("response.entryTypes.dataset", "partOfSpecification"),
    ),
    "beaconFilteringTermsResponse.json": ({"meta": INFO_META, "response": {}}, ("meta", "returnedSchemas")),
    "ga4gh-service-info-1-0-0-schema.json": (
        {
            "id": "org.example.station",
            "name": "Example station",
            "type": {"group": "org.ga4gh", "artifact": "beacon", "version": "v2.0.0"},
            "organization": {"name": "Example", "url": "https://example.org"},
            "version": "0.1.0",
        },
        ("organization", "url"),
    ),
}


def _without(instance: dict[str, Any], where: str, key: str) -> dict[str, Any]:
    broken = copy.deepcopy(instance)
    node: Any = broken
    for part in where.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    del node[key]
    return broken


@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_minimal_response_validates_and_a_missing_required_field_does_not(name: str) -> None:
    instance, (where, key) = MINIMAL[name]
    validate(instance, RESPONSES + name)
    with pytest.raises(BeaconSchemaError, match=re.escape(f"'{key}' is a required property")) as caught:
        validate(_without(instance, where, key), RESPONSES + name)
    assert len(caught.value.errors) == 1


def test_request_body_and_dataset_minimal_instances() -> None:
    validate({"meta": {"apiVersion": "v2.0.0"}}, "framework/json/requests/beaconRequestBody.json")
    validate({"id": "ds1", "name": "Dataset 1"}, DATASET)
    with pytest.raises(BeaconSchemaError, match=r"at \$: 'name' is a required property"):
        validate({"id": "ds1"}, DATASET)


def test_errors_are_listed_with_their_instance_paths() -> None:
    response = {"meta": {**META, "returnedGranularity": "rows"}, "responseSummary": {"exists": "yes"}}
    with pytest.raises(BeaconSchemaError) as caught:
        validate(response, RESPONSES + "beaconBooleanResponse.json")
    assert str(caught.value).splitlines() == [
        "2 error(s) against framework/json/responses/beaconBooleanResponse.json:",
        "  at $.meta.returnedGranularity: 'rows' is not one of ['boolean', 'count', 'record']",
        "  at $.responseSummary.exists: 'yes' is not of type 'boolean'",
    ]


def test_refs_through_remote_urls_and_the_missing_info_schema_are_enforced() -> None:
    """A DUO term must be an ontologyTerm (a remote ``$ref``); ``info`` must be an object (the aliased file)."""
    duo = {"id": "DUO:0000042", "version": "2022-01-01"}
    validate({"id": "ds1", "name": "d", "dataUseConditions": {"duoDataUse": [duo]}, "info": {}}, DATASET)
    with pytest.raises(BeaconSchemaError) as caught:
        validate({"id": "ds1", "name": "d", "dataUseConditions": {"duoDataUse": [{**duo, "id": "DUO"}]}}, DATASET)
    assert [list(e.absolute_path) for e in caught.value.errors] == [["dataUseConditions", "duoDataUse", 0, "id"]]
    with pytest.raises(BeaconSchemaError, match=r"at \$.info: 'x' is not of type 'object'"):
        validate({"id": "ds1", "name": "d", "info": "x"}, DATASET)


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("2017-01-17T20:33:40Z", True),
        ("2002-09-21T02:37:00.5-08:00", True),
        ("2017-01-17", False),
        ("2017-01-17 20:33:40Z", False),
        ("2017-01-17T20:33:40", False),
        ("2017-02-30T20:33:40Z", False),
    ],
)
def test_date_time_format_is_checked(value: str, ok: bool) -> None:
    if ok:
        validate({"id": "ds1", "name": "d", "createDateTime": value}, DATASET)
    else:
        with pytest.raises(BeaconSchemaError, match="is not a 'date-time'"):
            validate({"id": "ds1", "name": "d", "createDateTime": value}, DATASET)


def test_uri_format_is_checked() -> None:
    instance, _ = MINIMAL["beaconMapResponse.json"]
    broken = copy.deepcopy(instance)
    broken["response"]["endpointSets"]["dataset"]["rootUrl"] = "/api/datasets"
    with pytest.raises(BeaconSchemaError, match="'/api/datasets' is not a 'uri'"):
        validate(broken, RESPONSES + "beaconMapResponse.json")


def test_an_unknown_schema_name_is_refused() -> None:
    with pytest.raises(FileNotFoundError):
        validate({}, "framework/json/responses/nope.json")
    with pytest.raises(FileNotFoundError):
        validate({}, "examples/dataset-Max-example.json")


# --- upstream examples (tests/beacon_schemas/examples/) --------------------------------------------------------------

EXAMPLES = {
    "beaconConfigurationResponse-example.json": RESPONSES + "beaconConfigurationResponse.json",
    "beaconEntryTypesResponse-example.json": RESPONSES + "beaconEntryTypesResponse.json",
    "beaconFilteringTermsResponse-example.json": RESPONSES + "beaconFilteringTermsResponse.json",
    "beaconInfo-MIN-example.json": RESPONSES + "beaconInfoResponse.json",
    "beaconMapResponse-example.json": RESPONSES + "beaconMapResponse.json",
    "beaconRequestBody-MAX-example.json": "framework/json/requests/beaconRequestBody.json",
    "dataset-Max-example.json": DATASET,
}


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_upstream_example_validates(example: str) -> None:
    validate(_load(f"examples/{example}"), EXAMPLES[example])


def test_upstream_boolean_example_predates_the_required_granularity_fields() -> None:
    """v2.1.1's own boolean example lacks the granularity fields that its schema requires."""
    with pytest.raises(BeaconSchemaError) as caught:
        validate(_load("examples/beaconBooleanResponse-example.json"), RESPONSES + "beaconBooleanResponse.json")
    assert [e.message for e in caught.value.errors] == [
        "'returnedGranularity' is a required property",
        "'requestedGranularity' is a required property",
    ]
    assert {p.name for p in (SCHEMA_ROOT / "examples").iterdir()} == {*EXAMPLES, "beaconBooleanResponse-example.json"}

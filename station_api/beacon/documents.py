"""The JSON documents of the station's Beacon: the framework's (info, configuration, map, entry types,
filtering terms), the answers (boolean, count, collections) and errors, as Beacon v2 (framework 2.1.1)
shapes them. ``tests/beacon_schemas`` holds the schemas they are checked against.
"""

from __future__ import annotations

from typing import Any

from better.station_api import __version__
from better.station_api.beacon.requests import BeaconRequest
from better.station_api.config import StationConfig

#: The Beacon framework version these documents follow.
API_VERSION = "v2.1.1"
_SCHEMAS = "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/models/json/beacon-v2-default-model"

#: Entry types this Beacon serves: id, name, endpoint, default schema (folder, id), ontology term.
ENTRY_TYPES = {
    "genomicVariant": ("Genomic variants", "g_variants", "genomicVariations", "ga4gh-beacon-variant-v2.0.0",
                       ("ENSGLOSSARY:0000092", "Variant")),
    "individual": ("Individuals", "individuals", "individuals", "ga4gh-beacon-individual-v2.0.0",
                   ("NCIT:C25190", "Person")),
    "dataset": ("Datasets", "datasets", "datasets", "ga4gh-beacon-dataset-v2.0.0",
                ("NCIT:C47824", "Data set")),
}  # fmt: skip


def beacon_id(config: StationConfig) -> str:
    """The Beacon's id: ``[beacon] id``, else ``org.better.station.NAME``."""
    return config.beacon.id or f"org.better.station.{config.name}"


def informational_meta(config: StationConfig, entity: str | None = None) -> dict[str, Any]:
    """``meta`` of a framework document."""
    schemas = [_schema(entity)] if entity else []
    return {"beaconId": beacon_id(config), "apiVersion": API_VERSION, "returnedSchemas": schemas}


def response_meta(
    config: StationConfig, request: BeaconRequest, entity: str | None, granularity: str
) -> dict[str, Any]:
    """``meta`` of an answer or an error: what was returned, and the request as understood."""
    return {
        "beaconId": beacon_id(config),
        "apiVersion": API_VERSION,
        "returnedSchemas": [_schema(entity)] if entity else [],
        "returnedGranularity": granularity,
        "receivedRequestSummary": request.summary(API_VERSION),
    }


def _schema(entity: str) -> dict[str, str]:
    return {"entityType": entity, "schema": ENTRY_TYPES[entity][3]}


def info(config: StationConfig, base_url: str) -> dict[str, Any]:
    """``/beacon`` and ``/beacon/info``."""
    b = config.beacon
    org = b.organization or config.name
    return {
        "meta": informational_meta(config),
        "response": {
            "id": beacon_id(config),
            "name": f"BETTER station {config.name}",
            "apiVersion": API_VERSION,
            "environment": {"DEV": "dev", "TEST": "test", "PROD": "prod"}[b.production_status],
            "organization": {"id": org, "name": org},
            "description": b.description
            or "A BETTER station: genomic variants and individuals counted under the station's disclosure policy.",
            "version": f"better {__version__}",
            "welcomeUrl": base_url,
        },
    }


def service_info(config: StationConfig, base_url: str) -> dict[str, Any]:
    """``/beacon/service-info`` (GA4GH service-info 1.0)."""
    org = config.beacon.organization or config.name
    return {
        "id": beacon_id(config),
        "name": f"BETTER station {config.name} Beacon",
        "type": {"group": "org.ga4gh", "artifact": "beacon", "version": API_VERSION},
        "organization": {"name": org, "url": base_url},
        "version": __version__,
        "environment": {"DEV": "dev", "TEST": "test", "PROD": "prod"}[config.beacon.production_status],
    }


def entry_types() -> dict[str, Any]:
    """The entry types this Beacon serves, as configuration and ``/entry_types`` list them."""
    out = {}
    for entity, (name, _, folder, schema_id, (term, label)) in ENTRY_TYPES.items():
        out[entity] = {
            "id": entity,
            "name": name,
            "ontologyTermForThisType": {"id": term, "label": label},
            "partOfSpecification": "Beacon v2.0.0",
            "defaultSchema": {
                "id": schema_id,
                "name": f"Default schema for {name.lower()}",
                "referenceToSchemaDefinition": f"{_SCHEMAS}/{folder}/defaultSchema.json",
                "schemaVersion": "v2.0.0",
            },
            # a variant query needs a position; individuals and datasets may be asked about as a whole
            "nonFilteredQueriesAllowed": entity != "genomicVariant",
        }
    return out


def configuration(config: StationConfig) -> dict[str, Any]:
    """``/beacon/configuration``: maturity, security levels and entry types."""
    levels = ["PUBLIC", "REGISTERED", "CONTROLLED"] if config.beacon.public else ["REGISTERED", "CONTROLLED"]
    return {
        "meta": informational_meta(config),
        "response": {
            "$schema": "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/framework/json/configuration/"
            "beaconConfigurationSchema.json",
            "maturityAttributes": {"productionStatus": config.beacon.production_status},
            "securityAttributes": {"defaultGranularity": "boolean", "securityLevels": levels},
            "entryTypes": entry_types(),
        },
    }


def beacon_map(config: StationConfig, base_url: str) -> dict[str, Any]:
    """``/beacon/map``: where each entry type is served."""
    sets = {}
    for entity, (_, path, _, _, _) in ENTRY_TYPES.items():
        sets[entity] = {"entryType": entity, "rootUrl": f"{base_url}/{path}"}
    return {
        "meta": informational_meta(config),
        "response": {
            "$schema": "https://raw.githubusercontent.com/ga4gh-beacon/beacon-v2/main/framework/json/configuration/"
            "beaconMapSchema.json",
            "endpointSets": sets,
        },
    }


def entry_types_document(config: StationConfig) -> dict[str, Any]:
    """``/beacon/entry_types``."""
    return {"meta": informational_meta(config), "response": {"entryTypes": entry_types()}}


def filtering_terms(config: StationConfig, columns: dict[str, str]) -> dict[str, Any]:
    """``/beacon/filtering_terms``: one alphanumeric term per phenotype column (names only, no values)."""
    terms = [
        {"type": "alphanumeric", "id": name, "label": f"{name} ({kind})", "scopes": ["individual", "genomicVariant"]}
        for name, kind in sorted(columns.items())
    ]
    return {"meta": informational_meta(config), "response": {"filteringTerms": terms}}


def answer(
    config: StationConfig,
    request: BeaconRequest,
    entity: str,
    granularity: str,
    exists: bool,
    total: int | None,
    info: dict[str, Any],
) -> dict[str, Any]:
    """A boolean or count answer (``total`` is given only with count granularity)."""
    summary: dict[str, Any] = {"exists": exists}
    if granularity == "count":
        assert total is not None
        summary["numTotalResults"] = total
    return {
        "meta": response_meta(config, request, entity, granularity),
        "responseSummary": summary,
        "info": info,
    }


def collections(config: StationConfig, request: BeaconRequest, records: list[dict[str, Any]]) -> dict[str, Any]:
    """``/beacon/datasets``: dataset records (descriptions of datasets, not of people)."""
    return {
        "meta": response_meta(config, request, "dataset", "record"),
        "responseSummary": {"exists": bool(records), "numTotalResults": len(records)},
        "response": {"collections": records},
    }


def error(config: StationConfig, request: BeaconRequest, status: int, message: str) -> dict[str, Any]:
    """A Beacon error response."""
    return {
        "meta": response_meta(config, request, None, "boolean"),
        "error": {"errorCode": status, "errorMessage": message},
    }

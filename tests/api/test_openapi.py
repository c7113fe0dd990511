"""The OpenAPI document (/openapi.json, shown at /docs) is complete: every model a request or a
response uses has an example, every operation a summary and a description, the errors each one
can answer are documented in the one error shape, and the examples validate against their models.

No database: the document is built from the routes alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from telemetra.api import (
    accounts,
    alerts,
    auth,
    cleaning,
    clock,
    deadletters,
    devices,
    errors,
    health,
    ingest,
    live,
    overview,
    rules,
    session,
    telemetry,
)
from telemetra.api.app import create_app
from telemetra.config import Settings
from telemetra.store import timerange

from api_fixtures import SECRET

MODULES: tuple[ModuleType, ...] = (
    *(accounts, auth, deadletters, devices),
    *(errors, health, ingest, live, telemetry),
    *(rules, alerts, clock),
    *(session, overview, cleaning),
)
METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
REF = "#/components/schemas/"
ERROR_REF = f"{REF}ErrorOut"
OWN_ERROR_BODIES = {("get", "/ready", "503")}  # /ready reports on each dependency instead
# Operations with a device token; all other /api/v1 operations but logging in take a user's.
DEVICE_AUTH = {
    ("post", "/api/v1/ingest"),
    ("post", "/api/v1/ingest/batch"),
    ("post", "/api/v1/{device_token}/telemetry"),
}
# Signing in: a username and password, no credential yet.
LOGINS = {("post", "/api/v1/auth/token"), ("post", "/api/v1/auth/session")}


@pytest.fixture(scope="module")
async def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(Settings(secret_key=SECRET, data_dir=tmp_path_factory.mktemp("openapi")))
    transport = httpx.ASGITransport(app=app)  # no lifespan: nothing opens a database
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        reply = await client.get("/openapi.json")
    assert reply.status_code == 200, reply.text
    doc: dict[str, Any] = reply.json()
    return doc


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            if method in METHODS:
                yield method, path, operation


def routes() -> Iterator[APIRoute]:
    """The routes as declared in their modules (paths without the /api/v1 prefix)."""
    for module in MODULES:
        router = getattr(module, "router", None)
        for route in router.routes if router is not None else []:
            if isinstance(route, APIRoute) and route.include_in_schema:
                yield route


def refs(node: Any) -> Iterator[str]:
    """Names of the component schemas ``node`` refers to (not following them)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF):
            yield ref.removeprefix(REF)
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def used_schemas(doc: dict[str, Any]) -> set[str]:
    """Component schemas the requests and responses of operations use, directly or nested."""
    schemas = doc["components"]["schemas"]
    todo = [name for _, _, operation in operations(doc) for name in refs(operation)]
    used: set[str] = set()
    while todo:
        name = todo.pop()
        if name not in used:
            used.add(name)
            todo.extend(refs(schemas[name]))
    return used


def has_example(schema: dict[str, Any]) -> bool:
    if "examples" in schema or "example" in schema:
        return True
    properties = schema.get("properties", {})
    return bool(properties) and all("examples" in p or "example" in p for p in properties.values())


def models_by_schema_name() -> dict[str, type[BaseModel]]:
    """Our pydantic models under the names FastAPI gives their schemas: the class name, or
    module path and class name when two modules have a class of that name."""
    found = [
        model
        for module in MODULES
        for model in vars(module).values()
        if isinstance(model, type)
        and issubclass(model, BaseModel)
        and model.__module__ == module.__name__
    ]
    names: dict[str, type[BaseModel]] = {}
    for model in found:
        names[f"{model.__module__}.{model.__qualname__}".replace(".", "__")] = model
        if sum(m.__name__ == model.__name__ for m in found) == 1:
            names[model.__name__] = model
    return names


def declared_examples(model: type[BaseModel]) -> list[Any]:
    """The model's examples as declared: its own, else one made of its fields' first ones."""
    schema = model.model_json_schema()
    if "examples" in schema:
        return list(schema["examples"])
    properties = schema.get("properties", {})
    return [{name: p["examples"][0] for name, p in properties.items() if "examples" in p}]


def without_nulls(value: Any) -> Any:
    """``value`` as FastAPI publishes examples: without null members (fastapi#5559)."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def assert_valid(model: type[BaseModel], example: Any, where: str) -> None:
    """``example`` validates against ``model``, and holds nothing the model would ignore."""
    parsed = model.model_validate(example)
    assert parsed.model_dump(mode="json", exclude_unset=True) == example, where


# --- (a) examples -----------------------------------------------------------------------------


def test_every_model_of_a_request_or_response_has_an_example(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    missing = sorted(name for name in used_schemas(document) if not has_example(schemas[name]))
    assert missing == [], f"add examples to these models: {missing}"


def test_bodies_without_a_model_have_examples(document: dict[str, Any]) -> None:
    """Bodies described inline (raw ingest payloads, CSV export) show an example too."""
    missing = []
    for method, path, operation in operations(document):
        bodies = {"request": operation.get("requestBody", {}).get("content", {})}
        for status, response in operation["responses"].items():
            bodies[status] = response.get("content", {})
        for where, content in bodies.items():
            for media_type, body in content.items():
                schema = body.get("schema", {})
                if "$ref" in schema or schema.get("format") == "binary":
                    continue
                if "example" not in body and "examples" not in body:
                    missing.append(f"{method.upper()} {path} {where} {media_type}")
    assert missing == []


def test_parameters_are_described(document: dict[str, Any]) -> None:
    undescribed = [
        f"{method.upper()} {path} {parameter['name']}"
        for method, path, operation in operations(document)
        for parameter in operation.get("parameters", [])
        if not parameter.get("description")
    ]
    assert undescribed == []


def test_time_and_bucket_parameters_show_their_forms(document: dict[str, Any]) -> None:
    aggregate = document["paths"]["/api/v1/devices/{uid}/aggregate"]["get"]
    parameters = {p["name"]: p for p in aggregate["parameters"]}
    for name in ("uid", "metric", "from", "to", "bucket", "max_points", "fn", "tz"):
        assert parameters[name]["schema"].get("examples"), name
    assert "-24h" in parameters["from"]["description"]
    assert "1M" in parameters["bucket"]["description"]
    assert "IANA" in parameters["tz"]["description"]
    assert "auto" in parameters["max_points"]["description"]


# --- (b) summaries and descriptions -----------------------------------------------------------


def test_every_operation_has_a_summary_and_a_description(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        assert operation.get("summary") and operation.get("description"), f"{method} {path}"


def test_every_route_has_a_summary_of_its_own() -> None:
    """Not FastAPI's stand-in made of the function name ("List Devices" from list_devices)."""
    unnamed = [route.path for route in routes() if not route.summary]
    assert unnamed == [], "give these routes a summary"


# --- (c) errors -------------------------------------------------------------------------------


def test_authenticated_operations_document_401_in_the_error_shape(
    document: dict[str, Any],
) -> None:
    authenticated = 0
    for method, path, operation in operations(document):
        if not path.startswith("/api/v1/") or (method, path) in LOGINS:
            continue
        assert operation.get("security") or (method, path) in DEVICE_AUTH, (method, path)
        authenticated += 1
        content = operation["responses"]["401"]["content"]
        assert content["application/json"]["schema"] == {"$ref": ERROR_REF}, (method, path)
    assert authenticated > len(DEVICE_AUTH)


def test_the_errors_an_operation_can_answer_are_documented(document: dict[str, Any]) -> None:
    """Rate limits wherever a token is checked, 404 for a resource named in the path, 422 for
    anything read from the request, 413 for bodies over the limit (any request may carry one),
    503 while the database is unreachable."""
    missing = []
    for method, path, operation in operations(document):
        if not path.startswith("/api/v1/"):
            continue
        expected = {"401", "413", "503"}
        if operation.get("security") or (method, path) in DEVICE_AUTH:
            expected.add("429")
        ids = ("uid", "user_id", "rule_id", "alert_id", "cleaning_rule_id")
        if any(f"{{{name}}}" in path for name in ids):
            expected.add("404")
        if operation.get("parameters") or operation.get("requestBody"):
            expected.add("422")
        undocumented = sorted(expected - set(operation["responses"]))
        missing += [f"{method.upper()} {path} {status}" for status in undocumented]
    assert missing == []


def test_every_documented_error_has_the_error_shape(document: dict[str, Any]) -> None:
    wrong = []
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400 or (method, path, status) in OWN_ERROR_BODIES:
                continue
            content = response.get("content", {})
            json = content.get("application/json", {})
            if list(content) != ["application/json"] or json.get("schema") != {"$ref": ERROR_REF}:
                wrong.append(f"{method.upper()} {path} {status}: {content}")
            elif json.get("example", {}).get("error", {}).get("code") != errors._CODES[int(status)]:
                wrong.append(f"{method.upper()} {path} {status}: example {json.get('example')}")
    assert wrong == []


# --- (d) the examples validate ----------------------------------------------------------------


def test_model_examples_validate_against_their_models(document: dict[str, Any]) -> None:
    models = models_by_schema_name()
    schemas = document["components"]["schemas"]
    checked = 0
    for name in sorted(used_schemas(document)):
        assert name in models, f"which model has the schema {name}?"
        model = models[name]
        declared = declared_examples(model)
        for example in declared:
            assert_valid(model, example, name)
            checked += 1
        published = schemas[name].get("examples")
        if published is not None:  # the declared ones, less the nulls FastAPI leaves out
            assert published in (declared, without_nulls(declared)), name
    assert checked >= 30


def test_response_examples_validate_against_their_models() -> None:
    """The examples of the responses declared on the routes (errors, /ready's 503)."""
    declared = [
        (route.path, status, response)
        for route in routes()
        for status, response in route.responses.items()
    ]
    declared += [
        ("/api/v1/*", status, r) for status, r in errors.responses(*errors._DOCUMENTED).items()
    ]
    checked = 0
    for path, status, response in declared:
        model = response.get("model")
        for body in response.get("content", {}).values():
            if model is not None and "example" in body:
                assert_valid(model, body["example"], f"{path} {status}")
                checked += 1
    assert checked >= 40


def test_examples_are_what_the_code_reads_and_writes() -> None:
    """A few examples checked against the code that reads or writes such values."""
    history = telemetry.HistoryOut.model_json_schema()["examples"][0]
    assert telemetry.query._decode_cursor(history["next_cursor"], "h1", 2)  # cursors that work
    dead_letters = deadletters.DeadLetterPage.model_json_schema()["examples"][0]
    assert telemetry.query._decode_cursor(dead_letters["next_cursor"], "d1", 1)
    for aggregate in telemetry.AggregateOut.model_json_schema()["examples"]:
        if "tz" in aggregate:
            assert timerange.parse_zone(aggregate["tz"]).key == aggregate["tz"]
        width_us = timerange.parse_bucket(aggregate["bucket"])
        assert width_us == aggregate["bucket_s"] * timerange.US
    for response in errors.responses(*errors._DOCUMENTED).values():
        example = response["content"]["application/json"]["example"]
        assert example == errors.error_body(**example["error"])  # the shape the handlers write


# --- (e) /docs works offline ------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_load_nothing_from_another_host(tmp_path: Any, page: str) -> None:
    """Swagger UI and ReDoc come from the installed package: a classroom without internet
    sees them too."""
    import re

    app = create_app(Settings(secret_key=SECRET, data_dir=tmp_path))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        html = (await client.get(page)).text
        assert "://" not in html.replace("http://www.w3.org", ""), html  # no absolute URL
        assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
        assets += re.findall(r"""url: ?["']([^"']+)["']""", html)  # the OpenAPI document
        assert any(a.endswith(".js") for a in assets), html
        for asset in assets:
            assert asset.startswith("/"), asset
            reply = await client.get(asset)
            assert reply.status_code == 200 and reply.content, asset


def test_the_session_cookie_is_documented_beside_the_bearer_token(
    document: dict[str, Any],
) -> None:
    """The dashboard's cookie is a security scheme of its own, accepted wherever a user's
    bearer token is; signing in at /auth/session needs neither."""
    scheme = document["components"]["securitySchemes"]["SessionCookie"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == (
        "apiKey",
        "cookie",
        "telemetra_session",
    )
    assert "X-CSRF-Token" in scheme["description"]
    for method, path, operation in operations(document):
        security = operation.get("security")
        if security and {"OAuth2PasswordBearer": []} in security:
            assert {"SessionCookie": []} in security, f"{method} {path}"
    assert "security" not in document["paths"]["/api/v1/auth/session"]["post"]

"""Schemathesis against the API's own OpenAPI spec: whatever it sends, no 5xx."""

from __future__ import annotations

from typing import Any

import hypothesis
import redis
import schemathesis
from schemathesis.core.result import Ok

from ingest.settings import Settings
from telemetry.web.app import create_app
from tests.helpers import add

EXAMPLES_PER_OPERATION = 40


def test_no_request_makes_the_api_fail(settings: Settings, client: redis.Redis) -> None:
    add(client, settings.stream, {"sensor_id": "s1", "temp": "21.5"})
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    checked = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()

        @hypothesis.given(operation.as_strategy())
        @hypothesis.settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
                             suppress_health_check=list(hypothesis.HealthCheck))  # fmt: skip
        def no_server_error(case: schemathesis.Case[Any]) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        no_server_error()
        checked.append(operation.label)
    assert "POST /readings" in checked and "GET /alerts" in checked

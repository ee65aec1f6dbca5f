"""The API's write, health and live parts: POST /readings, /groups, /metrics, websockets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ingest.deadletter import dead_letter_record, queue_dead_letter
from ingest.keys import StreamKeys
from ingest.settings import Settings
from telemetry.web.app import create_app
from tests.helpers import add, entries


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    # One event loop for the client's lifetime, as under uvicorn: the live tails' Redis
    # connections belong to it.
    with TestClient(create_app(settings)) as client:
        yield client


def test_posted_readings_are_written_in_order_with_their_ids(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    one = api.post("/readings", json={"sensor_id": "s1", "temp": 21.5, "ts": 1_700_000_000_000})
    assert one.status_code == 202
    batch = [{"sensor_id": f"s{i}", "temp": i, "seq": i, "ts": "2026-01-01T00:00:00Z"}
             for i in range(5)]  # fmt: skip
    many = api.post("/readings", json=batch)
    assert many.status_code == 202
    ids = one.json()["ids"] + many.json()["ids"]
    stored = entries(client, settings.stream)
    assert [entry_id for entry_id, _ in stored] == ids
    assert stored[0][1] == {"sensor_id": "s1", "ts": "1700000000000", "temp": "21.5"}
    assert stored[3][1]["ts"] == "1767225600000" and stored[3][1]["seq"] == "2"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "payload is not JSON"),
        (b'{"sensor_id": "s1", "temp": "hot"}', "must be a number"),
        (b'{"sensor_id": "s1", "temp": NaN}', "payload is not JSON"),
        (b'{"sensor_id": "s 1", "temp": 1}', "sensor_id must be"),
        (b'{"temp": 1}', "sensor_id is missing"),
        (
            b'[{"sensor_id": "ok", "temp": 1}, {"sensor_id": "ok", "temp": true}]',
            "must be a number",
        ),
        (b'{"sensor_id": "s1"}', "no metrics"),
        (b"[]", "empty JSON array"),
    ],
)
def test_bad_readings_get_a_reason_and_nothing_is_written(
    api: TestClient, client: redis.Redis, settings: Settings, body: bytes, reason: str
) -> None:
    response = api.post("/readings?decoding=strict", content=body,
                        headers={"Content-Type": "application/json"})  # fmt: skip
    assert response.status_code == 422
    assert any(reason in problem["reason"] for problem in response.json()["detail"])
    assert client.exists(settings.stream) == 0


def test_lenient_posts_keep_what_they_can_and_list_what_they_dropped(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    body = [{"sensor_id": "s1", "temp": "21.5", "ok": True, "site": "gh-3", "bad": None},
            {"sensor_id": "s2", "temp": {"inner": 2}, "list": [1]}]  # fmt: skip
    response = api.post("/readings", json=body)
    assert response.status_code == 202
    assert response.json()["dropped"] == [
        {"sensor_id": "s1", "field": "bad", "reason": "null is not a value"},
        {"sensor_id": "s2", "field": "list", "reason": "a list is not a metric"},
    ]
    assert [fields for _, fields in entries(client, settings.stream)] == [
        {"sensor_id": "s1", "temp": "21.5", "ok": "1.0"},
        {"sensor_id": "s2", "temp_inner": "2.0"},
    ]
    assert api.get("/sensors/s1/device").json()["labels"] == {"site": "gh-3"}


def test_an_oversized_body_is_refused_unread(settings: Settings, client: redis.Redis) -> None:
    api = TestClient(create_app(settings.replace(api_max_body=1000)))
    body = json.dumps([{"sensor_id": "s1", "temp": 1.0}] * 100)
    response = api.post("/readings", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert client.exists(settings.stream) == 0


def test_each_token_grants_its_scope_and_nothing_more(
    settings: Settings, client: redis.Redis
) -> None:
    api = TestClient(create_app(settings.replace(
        api_token="adm1n", api_write_token="wr1te", api_read_token="re4d"
    )))  # fmt: skip
    reading = {"sensor_id": "s1", "temp": 1.0}

    def bearing(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    for public in ("/healthz", "/dashboard", "/docs", "/openapi.json", "/static/dashboard.js"):
        assert api.get(public).status_code == 200, public
    assert api.get("/sensors").status_code == 401
    assert api.get("/sensors", headers=bearing("nope")).status_code == 401
    assert api.post("/readings", json=reading).status_code == 401
    assert api.post("/readings", json=reading, headers=bearing("re4d")).status_code == 403
    for token in ("re4d", "wr1te", "adm1n"):
        assert api.get("/sensors", headers=bearing(token)).status_code == 200
    for token in ("wr1te", "adm1n"):
        assert api.post("/readings", json=reading, headers=bearing(token)).status_code == 202
    assert api.get("/dead-letters", headers=bearing("wr1te")).status_code == 403
    assert api.get("/dead-letters", headers=bearing("adm1n")).status_code == 200
    assert client.xlen(settings.stream) == 2


def test_writes_must_be_json_so_no_web_page_can_post_a_form(settings: Settings) -> None:
    api = TestClient(create_app(settings))
    body = json.dumps({"sensor_id": "s1", "temp": 1.0})
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = api.post("/readings", content=body, headers={"Content-Type": kind})
        assert response.status_code == 415, kind
    answer = api.get("/sensors")
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert api.get("/sensors", headers={"Host": "rebound.example"}).status_code == 400


def test_groups_and_metrics_report_the_stream(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    for i in range(3):
        add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)})
    client.xgroup_create(settings.stream, "aggregates", "0")
    groups = api.get("/groups").json()
    assert groups["length"] == 3
    assert [(g["name"], g["lag"]) for g in groups["groups"]] == [("aggregates", 3)]
    text = api.get("/metrics").text
    assert 'telemetry_stream_entries_added_total{stream="app:event"} 3.0' in text
    assert 'telemetry_group_lag{group="aggregates",stream="app:event"} 3.0' in text
    assert "telemetry_alert_changes_total 0.0" in text


def _close_code(api: TestClient, path: str, **headers: str) -> int:
    with (
        api.websocket_connect(path, headers=headers) as ws,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        ws.receive_json()
    return closed.value.code


def test_websockets_refuse_unknown_forbidden_unauthorised_and_foreign_clients(
    settings: Settings, client: redis.Redis
) -> None:
    add(client, "private:stream", {"sensor_id": "s1", "temp": "1"})
    with TestClient(create_app(settings)) as api:
        assert _close_code(api, "/stream/nothing-here") == 4404
        assert _close_code(api, "/stream/private:stream") == 4403
        assert _close_code(api, "/stream/app:event", origin="https://evil.example") == 4403
        assert _close_code(api, "/stream/app:event?last_id=1-99999999999999999999") == 4400
    tokens = settings.replace(api_token="t0k", api_read_token="r3ad")
    with TestClient(create_app(tokens)) as guarded:
        assert _close_code(guarded, "/stream/app:event") == 4401
        assert _close_code(guarded, "/ws/alerts?ticket=wrong") == 4401
        assert _close_code(guarded, "/ws/alerts?token=t0k") == 4401
        reader = {"Authorization": "Bearer r3ad", "Content-Type": "application/json"}
        ticket = guarded.post("/ws-ticket", headers=reader).json()["ticket"]
        assert _close_code(guarded, f"/stream/{settings.stream}:dead?ticket={ticket}") == 4403
        ticket = guarded.post("/ws-ticket", headers=reader).json()["ticket"]
        path = f"/stream/{settings.stream}?ticket={ticket}"
        with guarded.websocket_connect(path) as ws:
            add(client, settings.stream, {"sensor_id": "s1", "temp": "2"})
            assert ws.receive_json()["fields"]["temp"] == "2"
        # A ticket opens one websocket.
        assert _close_code(guarded, path) == 4401


def test_more_streams_by_glob_even_before_their_first_entry(
    settings: Settings, client: redis.Redis
) -> None:
    exposed = settings.replace(api_streams="test, lab:*")
    client.hset("lab:not-a-stream", "k", "v")
    with TestClient(create_app(exposed)) as api:
        assert not client.exists("test")
        with api.websocket_connect("/stream/test?max_frequency=1") as ws:
            client.xadd("test", {"greeting": "hello there", "from": "kyle"})
            assert ws.receive_json()["fields"] == {"greeting": "hello there", "from": "kyle"}
        assert _close_code(api, "/stream/lab:not-a-stream") == 4403
        assert _close_code(api, f"/stream/lab:{'x' * 300}") == 4400
        assert _close_code(api, "/stream/other") == 4404


def test_resuming_with_last_id_replays_then_tails_without_a_gap(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    ids = [add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)}) for i in range(100)]
    path = f"/stream/{settings.stream}?last_id={ids[49]}"
    with api.websocket_connect(path, headers={"origin": "http://testserver"}) as ws:
        replayed = [ws.receive_json() for _ in range(50)]
        assert [m["id"] for m in replayed] == ids[50:]
        assert replayed[0]["fields"] == {"sensor_id": "s1", "temp": "50"}
        live = [add(client, settings.stream, {"sensor_id": "s1", "temp": str(i)})
                for i in range(10)]  # fmt: skip
        assert [ws.receive_json()["id"] for _ in range(10)] == live


def test_alert_changes_arrive_on_their_websocket(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    with api.websocket_connect("/ws/alerts") as ws:
        entry_id = add(client, settings.alerts_stream, {"sensor_id": "s1", "state": "raised"})
        message = ws.receive_json()
        assert message == {"id": entry_id, "fields": {"sensor_id": "s1", "state": "raised"}}


def test_dead_letters_are_listed_and_replayed_with_the_token(
    settings: Settings, client: redis.Redis
) -> None:
    keys = StreamKeys(settings.stream)
    pipe = client.pipeline()
    reason = "metric 'temp' must be a finite decimal number"
    for fields in ({"sensor_id": "s1", "temp": "oops"}, {"sensor_id": "s1", "temp": "20.5"}):
        record = dead_letter_record(
            keys.stream, "aggregates", "1700000000000-0", "c1", 1, reason, fields
        )
        queue_dead_letter(pipe, keys, 1000, record)
    pipe.execute()
    with TestClient(create_app(settings.replace(api_token="t0k"))) as api:
        assert api.get("/dead-letters").status_code == 401
        listed = api.get("/dead-letters", headers={"Authorization": "Bearer t0k"}).json()
        assert [d["fields"]["temp"] for d in listed] == ["oops", "20.5"]
        ids = [d["dead_id"] for d in listed]
        assert api.post("/dead-letters/replay", json={"ids": ids}).status_code == 401
        auth = {"Authorization": "Bearer t0k"}
        results = api.post("/dead-letters/replay", json={"ids": ids}, headers=auth).json()
        assert results[0]["new_id"] is None and "finite decimal" in results[0]["error"]
        assert results[1]["new_id"] is not None and results[1]["error"] is None
        assert api.post("/dead-letters/replay", json={"ids": ["1-1"]},
                        headers=auth).status_code == 404  # fmt: skip
    assert [f["temp"] for _, f in entries(client, settings.stream)] == ["20.5"]
    assert client.xlen(keys.dead) == 1


def test_a_sensor_filtered_tail_gets_only_that_sensor(
    api: TestClient, client: redis.Redis, settings: Settings
) -> None:
    path = f"/stream/{settings.stream}"
    with api.websocket_connect(f"{path}?sensor=s2") as one, api.websocket_connect(path) as every:
        ids = [add(client, settings.stream, {"sensor_id": f"s{i % 3}", "temp": str(i)})
               for i in range(9)]  # fmt: skip
        assert [every.receive_json()["id"] for _ in range(9)] == ids
        assert [one.receive_json()["fields"]["temp"] for _ in range(3)] == ["2", "5", "8"]

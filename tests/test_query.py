"""Query answers (Python, HTTP, command line) against numpy over the same readings."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analytics import fleet, query
from analytics.fleet import fleet_top
from analytics.groupby import group_by
from analytics.query import Store, Stores
from analytics.rollup import Rollup
from analytics.sketch import RELATIVE_ERROR
from analytics.tiers import parse_tiers
from analytics.times import iso
from analytics.worker import aggregator_runner
from ingest.devices import DeviceRegistry
from ingest.keys import StreamKeys
from ingest.labels import parse_selector
from ingest.redis.connection import connect
from ingest.settings import Settings
from simulator.dataset import Made, make_readings, write
from telemetry.localserver import LocalRedis
from telemetry.web.app import create_app
from tests.aggregates_reference import QS
from tests.conftest import RedisProcess, child_env, make_settings
from tests.helpers import drain, drain_without_rollup

PER_SENSOR = 2400  # 40 minutes at 1 Hz


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Made]]:
    """Five sensors' last 40 minutes, aggregated once for every test in this module; the
    coarse tiers are rolled up to 15 minutes in and partly through the sensors of the pass
    after, so answers from them must add the fine buckets not rolled up."""
    server = LocalRedis(workdir=tmp_path_factory.mktemp("query-redis"))
    server.start()
    settings = make_settings(server.url)
    client = connect(settings)
    made = make_readings(sensors=5, per_sensor=PER_SENSOR, burst=100, seed=9)
    write(client, made)
    drain_without_rollup(client, settings)
    rollup = Rollup(client, StreamKeys(settings.stream), parse_tiers(settings.tiers), 2)
    rollup.catch_up(int(made.ts.min()) + 15 * 60_000)
    rollup.step(int(made.ts.max()))
    mark = rollup.mark()
    assert mark is not None and 0 < mark.sensor < 5
    yield settings, made
    server.close()


def numpy_window(
    made: Made, sensor: int, metric: str, start: int, end: int
) -> npt.NDArray[np.float64]:
    mask = (made.sensor == sensor) & (made.ts >= start) & (made.ts < end)
    return np.sort(made.values[metric][mask])


def assert_matches(stats: query.Stats | dict[str, Any], values: npt.NDArray[np.float64]) -> None:
    answer = stats if isinstance(stats, dict) else asdict(stats)

    def get(name: str) -> Any:
        return answer[name]

    assert get("count") == len(values)
    assert (get("min"), get("max")) == (values.min(), values.max())
    assert abs(get("mean") - values.mean()) <= 1e-9 * abs(values.mean())
    assert abs(get("std") - values.std()) <= 1e-6 * values.std() + 1e-9
    for q, name in zip(QS, ("p50", "p90", "p95", "p99"), strict=True):
        exact = float(np.percentile(values, q * 100, method="lower"))
        assert abs(get(name) - exact) <= RELATIVE_ERROR * abs(exact) + 1e-9


span = st.tuples(st.integers(0, PER_SENSOR * 1000), st.integers(1_000, PER_SENSOR * 1000))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(span=span, sensor=st.integers(0, 4), metric=st.sampled_from(["temp", "humidity"]),
       tier=st.sampled_from(["10s", "1m", None]))  # fmt: skip
def test_windows_equal_numpy_over_the_buckets_they_cover(
    loaded: tuple[Settings, Made], span: tuple[int, int], sensor: int, metric: str,
    tier: str | None,
) -> None:  # fmt: skip
    settings_, made = loaded
    store = Store.from_settings(settings_)
    oldest = int(made.ts.min())
    start = oldest + span[0]
    end = start + span[1]
    window = query.window(store, made.sensor_id(sensor), metric, start, end, tier)
    values = numpy_window(made, sensor, metric, window.covered_from_ms, window.covered_to_ms)
    if window.stats is None:
        assert len(values) == 0
        return
    assert window.covered_from_ms <= max(start, int(made.ts[made.sensor == sensor].min()))
    assert window.partial_first_bucket == (window.covered_from_ms < start)
    assert window.partial_last_bucket == (window.covered_to_ms > end)
    assert_matches(window.stats, values)
    buckets = query.buckets(store, made.sensor_id(sensor), metric, window.tier, start, end)
    assert sum(b.count for b in buckets) == len(values)


def test_the_http_api_answers_as_the_python_functions_do(loaded: tuple[Settings, Made]) -> None:
    settings_, made = loaded
    api = TestClient(create_app(settings_))
    store = Store.from_settings(settings_)
    sensors = api.get("/sensors").json()
    assert [s["sensor_id"] for s in sensors] == [made.sensor_id(i) for i in range(5)]
    assert api.get("/sensors/dev-0002").json()["metrics"] == ["humidity", "temp"]

    rolling = api.get("/sensors/dev-0001/rolling", params={"metric": "temp", "last": "15m"})
    assert rolling.status_code == 200
    body = rolling.json()
    values = numpy_window(made, 1, "temp", body["covered_from_ms"], body["covered_to_ms"])
    assert_matches(body["stats"], values)

    start, end = int(made.ts.min()), int(made.ts.max()) + 1
    listed = api.get(
        "/sensors/dev-0003/aggregates",
        params={"metric": "humidity", "tier": "1m", "from": iso(start), "to": iso(end)},
    ).json()
    python = query.buckets(store, "dev-0003", "humidity", "1m", start, end)
    assert [b["count"] for b in listed] == [b.count for b in python]
    assert [b["p95"] for b in listed] == [b.p95 for b in python]

    top = api.get("/fleet/top", params={"metric": "temp", "by": "max", "last": "1h", "n": 3})
    ranked = top.json()
    maxima = sorted(
        ((made.values["temp"][made.sensor == k].max(), made.sensor_id(k)) for k in range(5)),
        reverse=True,
    )
    assert [r["sensor_id"] for r in ranked] == [name for _, name in maxima[:3]]
    assert [r["value"] for r in ranked] == [value for value, _ in maxima[:3]]


@pytest.mark.parametrize(
    ("path", "params", "status", "reason"),
    [
        ("/sensors/nobody", {}, 404, "unknown sensor"),
        ("/sensors/nobody/rolling", {"metric": "temp"}, 404, "unknown sensor"),
        ("/sensors/dev-0001/rolling", {"metric": "temp", "last": "soon"}, 422, "last:"),
        ("/sensors/dev-0001/rolling", {"metric": "temp", "last": "1y"}, 422, "last:"),
        ("/sensors/dev-0001/rolling", {"metric": "bad name"}, 422, "metric"),
        ("/sensors/dev-0001/aggregates", {"metric": "temp", "tier": "2m"}, 422, "unknown tier"),
        ("/sensors/dev-0001/aggregates", {"metric": "temp", "from": "yesterday"}, 422, "from:"),
        ("/sensors/dev-0001/aggregates", {"metric": "temp", "from": "now", "to": "1h"}, 422,
         "from must be before to"),
        ("/fleet/top", {"metric": "temp", "by": "median"}, 422, "by"),
        ("/fleet/top", {"metric": "temp", "n": "0"}, 422, "n"),
        ("/sensors/bad%20id", {}, 422, "sensor_id"),
    ],
)  # fmt: skip
def test_bad_requests_get_a_reason(
    loaded: tuple[Settings, Made], path: str, params: dict[str, str], status: int, reason: str
) -> None:
    response = TestClient(create_app(loaded[0])).get(path, params=params)
    assert response.status_code == status
    assert reason in json.dumps(response.json())


def test_openapi_documents_every_endpoint(loaded: tuple[Settings, Made]) -> None:
    paths = TestClient(create_app(loaded[0])).get("/openapi.json").json()["paths"]
    assert {"/sensors", "/sensors/{sensor_id}", "/sensors/{sensor_id}/aggregates",
            "/sensors/{sensor_id}/rolling", "/fleet/top"} <= set(paths)  # fmt: skip


def telemetry(settings_: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "telemetry", *args],
        env=child_env(settings_), capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_command_line_answers_as_the_python_functions_do(
    loaded: tuple[Settings, Made],
) -> None:
    settings_, made = loaded
    rolled = telemetry(settings_, "query", "dev-0004", "--metric", "temp", "--last", "20m",
                       "--format", "json")  # fmt: skip
    assert rolled.returncode == 0, rolled.stderr
    [window] = json.loads(rolled.stdout)
    values = numpy_window(made, 4, "temp", window["covered_from_ms"], window["covered_to_ms"])
    assert_matches(window["stats"], values)

    table = telemetry(settings_, "query", "dev-0004", "--since", "30m", "--tier", "1m")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["metric", "tier", "start", "end"]
    csv = telemetry(settings_, "query", "--fleet", "--metric", "humidity", "--top", "2",
                    "--by", "p99", "--last", "1h", "--format", "csv")  # fmt: skip
    assert csv.returncode == 0, csv.stderr
    assert csv.stdout.splitlines()[0].startswith("rank,sensor,p99")
    assert len(csv.stdout.splitlines()) == 3
    listing = telemetry(settings_, "sensors", "--tz", "Europe/Paris")
    assert "+01:00" in listing.stdout and "dev-0000" in listing.stdout
    unknown = telemetry(settings_, "query", "nobody")
    assert unknown.returncode == 2 and "unknown sensor 'nobody'" in unknown.stderr


def test_queries_on_an_empty_store_say_so(own_redis: RedisProcess) -> None:
    store = Store.from_settings(make_settings(own_redis.url))
    assert query.list_sensors(Stores((store,))) == []
    assert query.rolling(store, "s1", "temp", 60_000).stats is None
    assert fleet_top(Stores((store,)), "temp", "mean", 60_000, 5) == []


@pytest.mark.parametrize("by", ["last", "count", "min", "mean"])
def test_fleet_rankings_from_merged_summaries_equal_numpy(
    loaded: tuple[Settings, Made], by: str
) -> None:
    settings_, made = loaded
    at = int(made.ts.max()) + 1
    ranked = fleet_top(Stores.from_settings(settings_), "temp", by, 3_600_000, 5, at_ms=at)
    expected = {}
    for k in range(5):
        mine = made.sensor == k
        values = made.values["temp"][mine]
        expected[made.sensor_id(k)] = {
            "last": values[np.argmax(made.ts[mine])],
            "count": len(values),
            "min": values.min(),
            "mean": values.mean(),
        }[by]
    order = sorted(expected, key=lambda name: (-expected[name], name))
    assert [r.sensor_id for r in ranked] == order
    for r in ranked:
        assert r.value == pytest.approx(expected[r.sensor_id], rel=1e-12)


@pytest.mark.parametrize("tier_name", ["10s", "1m", "1h"])
def test_fleet_summaries_merged_from_fleet_buckets_equal_numpy(
    loaded: tuple[Settings, Made], tier_name: str
) -> None:
    """What fleet rankings are built on, for every sensor: the coarse tiers' fleet buckets and
    the fine ones not rolled up yet count each reading once."""
    settings_, made = loaded
    store = Store.from_settings(settings_)
    tier = store.tier(tier_name)
    to = int(made.ts.max()) + 1
    start = tier.bucket_of(to - 2_000_000)
    merged = fleet._merge_fleet_buckets(store, tier, "temp", start, to)
    assert merged is not None
    names, columns = merged
    end = tier.bucket_of(to - 1) + tier.bucket_ms
    for k in range(5):
        mine = (made.sensor == k) & (made.ts >= start) & (made.ts < end)
        at = names.index(made.sensor_id(k))
        values = made.values["temp"][mine]
        assert columns["count"][at] == len(values)
        assert columns["mean"][at] == pytest.approx(values.mean(), rel=1e-12)
        assert (columns["min"][at], columns["max"][at]) == (values.min(), values.max())
        assert columns["last"][at] == values[np.argmax(made.ts[mine])]


@pytest.mark.parametrize("by", ["p50", "p99", "mean"])
def test_fleet_rankings_equal_ranking_every_sensors_own_window(
    own_redis: RedisProcess, by: str
) -> None:
    """Hundreds of sensors, more than one batch of percentile reads: the fleet answer is what
    ranking every sensor's window one by one gives."""
    settings_ = make_settings(own_redis.url)
    client = connect(settings_)
    made = make_readings(sensors=700, per_sensor=30, burst=30, seed=4)
    write(client, made)
    drain(aggregator_runner(client, settings_, "c1"))
    store = Store.from_settings(settings_)
    at = int(made.ts.max()) + 1
    ranked = fleet_top(Stores((store,)), "humidity", by, 600_000, 10, at_ms=at)
    tier = ranked[0].window.tier
    every = query.windows(
        store, [made.sensor_id(k) for k in range(700)], "humidity", at - 600_000, at, tier
    )
    best = sorted(
        ((getattr(w.stats, by), w.sensor_id, w) for w in every if w.stats is not None),
        key=lambda found: (-found[0], found[1]),
    )[:10]
    assert [(r.value, r.sensor_id, r.window) for r in ranked] == best


def test_groups_by_label_equal_numpy_over_their_sensors(loaded: tuple[Settings, Made]) -> None:
    """Counts, sums, extremes exact; percentiles merged from the histograms of the group's
    sensors, within the sketch's error: from Python, the command line and HTTP alike."""
    settings_, made = loaded
    registry = DeviceRegistry(settings_)
    members: dict[str | None, list[int]] = {"a": [0, 1, 3], "b": [2], None: [4]}
    for site, sensors in members.items():
        if site is not None:
            registry.label([made.sensor_id(k) for k in sensors], {"site": site}, [])
    registry.label([made.sensor_id(2)], {"kind": "test"}, [])
    to = (int(made.ts.max()) // 60_000 + 1) * 60_000
    start = to - 30 * 60_000

    def values(sensors: list[int]) -> npt.NDArray[np.float64]:
        mask = np.isin(made.sensor, sensors) & (made.ts >= start) & (made.ts < to)
        return np.sort(made.values["temp"][mask])

    try:
        stores = Stores.from_settings(settings_)
        groups = group_by(stores, registry, "temp", "site", to - start, at_ms=to)
        assert [(g.value, g.sensors) for g in groups] == [("a", 3), ("b", 1), (None, 1)]
        for group in groups:
            assert group.stats is not None
            assert_matches(group.stats, values(members[group.value]))
        picked = parse_selector("site=*,kind!=test")
        [together] = group_by(stores, registry, "temp", None, to - start, at_ms=to,
                              selector=picked)  # fmt: skip
        assert together.stats is not None and together.sensors == 3
        assert_matches(together.stats, values([0, 1, 3]))

        done = telemetry(settings_, "query", "--fleet", "--metric", "temp", "--group-by", "site",
                         "--last", "30m", "--until", iso(to), "--format", "json")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == json.loads(json.dumps([asdict(g) for g in groups]))
        api = TestClient(create_app(settings_))
        # The API's window ends now and reaches back past the oldest reading: every one counts.
        assert made.ts.min() > query.now_ms() - 7_000_000
        asked = {"metric": "temp", "group_by": "site", "last": "2h", "where": "site=a"}
        answer = api.get("/fleet/groups", params=asked).json()
        assert [(g["value"], g["sensors"], g["stats"]["count"]) for g in answer] == [
            ("a", 3, int(np.isin(made.sensor, [0, 1, 3]).sum()))
        ]
        listed = api.get("/sensors", params={"where": "site=a,kind!=test"}).json()
        assert [s["sensor_id"] for s in listed] == [made.sensor_id(k) for k in (0, 1, 3)]
        assert listed[0]["labels"] == {"site": "a"}
        top = api.get("/fleet/top", params={"metric": "temp", "where": "site=b", "last": "2h"})
        assert [r["sensor_id"] for r in top.json()] == [made.sensor_id(2)]
        assert api.get("/fleet/groups", params={"metric": "temp", "where": "site"}).status_code \
            == 422  # fmt: skip
    finally:
        registry.forget([made.sensor_id(k) for k in range(5)])

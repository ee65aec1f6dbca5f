"""Alert changes reach people through apprise: Slack and Teams (a local HTTP receiver standing in
for each service, checking the body that service expects), e-mail (a real SMTP server), routed
per rule and severity, rendered by templates, never retried after a 4xx, held back by
maintenance silences; acknowledgements recorded."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi.testclient import TestClient

from analytics.alerts.config import parse_config
from analytics.alerts.fanout import GROUP as FANOUT_GROUP
from analytics.alerts.rules import RulesError
from analytics.alerts.silences import (
    MAX_SILENCES,
    SilenceView,
    active_silences,
    add_silence,
    new_silence,
)
from analytics.query import now_ms
from ingest.keys import AlertKeys
from ingest.settings import Settings
from telemetry.localserver import free_port
from telemetry.web.app import create_app
from tests.alerting import changes
from tests.conftest import child_env
from tests.test_alert_fanout import groups_of

SLACK_PATH = "/services/T000/B000/XXXX"
TEAMS_PATH = "/workflows/teams/triggers/manual/paths/invoke"


@dataclass
class Receiver:
    """A real HTTPS server standing in for the services: records each POST (path, JSON body)
    and answers with the statuses scripted per path (then 200). Its certificate, for 127.0.0.1,
    is made here; the worker trusts it through REQUESTS_CA_BUNDLE."""

    folder: Path
    scripted: dict[str, list[int]] = field(default_factory=dict)
    received: list[tuple[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.path.split("?")[0], json.loads(body)))
                answers = receiver.scripted.get(self.path, [])
                self.send_response(answers.pop(0) if answers else 200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *_args: Any) -> None:
                pass

        self.certificate, key = self.folder / "receiver.pem", self.folder / "receiver.key"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(self.certificate)],
            check=True, capture_output=True,
        )  # fmt: skip
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, key)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self, path: str) -> list[Any]:
        return [body for at, body in self.received if at == path]


class Mailbox:
    """A real SMTP server (aiosmtpd) keeping every message it is sent."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        mailbox = self

        class Handler:
            async def handle_DATA(  # noqa: N802 (the name aiosmtpd calls)
                self, _server: SMTP, _session: Session, envelope: Envelope
            ) -> str:
                assert isinstance(envelope.content, bytes)
                mailbox.messages.append(message_from_bytes(envelope.content))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    serving = Receiver(tmp_path)
    yield serving
    serving.server.shutdown()


@pytest.fixture
def mailbox() -> Iterator[Mailbox]:
    serving = Mailbox()
    yield serving
    serving.controller.stop()


RULES = """
[[rule]]
name = "hot"
type = "threshold"
metric = "temp"
severity = "critical"
above = 40.0
clear = 38.0

[[rule]]
name = "damp"
type = "threshold"
metric = "humidity"
severity = "warning"
above = 90.0

[[notify]]
name = "ops-slack"
url = "${SLACK_URL}"
severities = ["critical"]
states = ["raised", "resolved", "acknowledged"]
title = "[$severity] $rule $state on $sensor_id"
body = "$message (value $value, at $time)"

[[notify]]
name = "facilities-teams"
url = "workflows://127.0.0.1:${RECEIVER_PORT}/teams/signature"
rules = ["damp"]

[[notify]]
name = "on-call-mail"
url = "mailto://127.0.0.1:${SMTP_PORT}?from=alerts@example.com&to=oncall@example.com"
sensors = "room-*"
title = "$rule on $sensor_id is $state"

[[notify]]
name = "revoked-hook"
url = "jsons://127.0.0.1:${RECEIVER_PORT}/revoked"
rules = ["hot"]

[[notify]]
name = "flaky-hook"
url = "jsons://127.0.0.1:${RECEIVER_PORT}/flaky"
rules = ["hot"]
"""


def start_worker(settings: Settings, rules: Path, receiver: Receiver, mailbox: Mailbox,
                 ) -> subprocess.Popen[bytes]:  # fmt: skip
    # Slack's webhooks live at one fixed address; the worker's apprise is pointed at the
    # receiver instead, which checks the body Slack expects.
    slack_base = f"https://127.0.0.1:{receiver.port}/services"
    launch = (
        "import sys; from apprise.plugins.slack import NotifySlack; "
        f"NotifySlack.webhook_url = {slack_base!r}; "
        "from telemetry.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = child_env(
        settings,
        SLACK_URL=f"https://hooks.slack.com{SLACK_PATH}",
        RECEIVER_PORT=str(receiver.port),
        SMTP_PORT=str(mailbox.port),
        REQUESTS_CA_BUNDLE=str(receiver.certificate),
    )
    return subprocess.Popen(
        [sys.executable, "-c", launch, "alert-worker", "--rules", str(rules)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def wait_for(what: str, done: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def telemetry(settings: Settings, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "telemetry", *args], env=child_env(settings),
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_alerts_reach_slack_teams_and_mail_routed_silenced_and_acknowledged(
    client: redis.Redis, settings: Settings, receiver: Receiver, mailbox: Mailbox,
    tmp_path: Path,
) -> None:  # fmt: skip
    receiver.scripted = {"/revoked": [403] * 10, "/flaky": [503, 503]}
    rules = tmp_path / "alerts.toml"
    rules.write_text(RULES)
    worker = start_worker(settings, rules, receiver, mailbox)
    try:
        wait_for("the fan-out group", lambda: FANOUT_GROUP in groups_of(
            client, settings.alerts_stream))  # fmt: skip
        # Silence one sensor's alerts (maintenance), then raise and resolve on two sensors.
        out = telemetry(settings, "alerts", "silence", "--sensor", "room-2", "--for", "1h",
                        "--by", "maria", "--comment", "replacing the probe")  # fmt: skip
        silence_id = out.split()[1].rstrip(":")
        for sensor in ("room-1", "room-2"):
            client.xadd(settings.stream, {"sensor_id": sensor, "temp": "45.5"})
        client.xadd(settings.stream, {"sensor_id": "cellar", "humidity": "95"})
        wait_for("the slack raise", lambda: len(receiver.bodies(SLACK_PATH)) >= 1)
        out = telemetry(settings, "alerts", "ack", "room-1", "hot", "--by", "lee",
                        "--comment", "opening the window")  # fmt: skip
        assert out.startswith("acknowledged hot on room-1")
        opened = json.loads(telemetry(settings, "alerts", "--open", "--format", "json"))
        room1 = next(a for a in opened if a["sensor_id"] == "room-1")
        assert room1["by"] == "lee" and room1["acknowledged_ms"] and room1["id"]
        assert room1["value"] == 45.5 and room1["limit"] == 40.0
        assert room1["raised_ms"] == room1["ts_ms"]
        client.xadd(settings.stream, {"sensor_id": "room-1", "temp": "30"})
        wait_for("slack: raised, acknowledged, resolved",
                 lambda: len(receiver.bodies(SLACK_PATH)) >= 3)  # fmt: skip
        wait_for("the flaky hook, third time lucky", lambda: len(receiver.bodies("/flaky")) >= 4)
        wait_for("the mail", lambda: len(mailbox.messages) >= 2)
        wait_for("teams", lambda: len(receiver.bodies(TEAMS_PATH)) >= 1)
        time.sleep(1.0)  # room for anything that should not come
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0

    # Slack: its own attachment format, rendered by the route's templates, critical only.
    slack = receiver.bodies(SLACK_PATH)
    titles = [body["attachments"][0]["title"] for body in slack]
    assert titles == ["[critical] hot raised on room-1", "[critical] hot acknowledged on room-1",
                      "[critical] hot resolved on room-1"]  # fmt: skip
    # Slack's text escapes <, > and & itself.
    assert slack[0]["attachments"][0]["text"].startswith("temp &gt; 40 (got 45.5) (value 45.5, at ")
    assert all(isinstance(body["attachments"][0]["color"], str) for body in slack)
    # Teams (Workflows): an Adaptive Card; only the damp rule goes there.
    teams = receiver.bodies(TEAMS_PATH)
    assert len(teams) == 1
    card = json.dumps(teams[0])
    assert "AdaptiveCard" in card and "damp raised on cellar" in card and "room-1" not in card
    # E-mail: room-* sensors, every severity; room-2 is silenced.
    subjects = sorted(str(m["Subject"]) for m in mailbox.messages)
    assert subjects == ["hot on room-1 is raised", "hot on room-1 is resolved"]
    assert all(m["To"] == "oncall@example.com" for m in mailbox.messages)
    # A 403 is the request's fault: each change tried once. A 503 is tried again.
    assert len(receiver.bodies("/revoked")) == 2
    flaky = [body["title"] for body in receiver.bodies("/flaky")]
    assert flaky.count("[critical] hot raised on room-1") == 3
    assert len(flaky) == 4
    # The alerts stream records everything, silenced alerts included.
    recorded = [(c["sensor_id"], c["rule"], c["state"])
                for c in changes(client, settings.alerts_stream)]  # fmt: skip
    assert recorded[0] == ("room-2", "*", "silenced")
    assert ("room-2", "hot", "raised") in recorded
    assert ("room-1", "hot", "acknowledged") in recorded
    assert telemetry(settings, "alerts", "silences").count(silence_id) == 1
    telemetry(settings, "alerts", "unsilence", silence_id, "--by", "maria")
    assert telemetry(settings, "alerts", "silences").strip() == "no silences"
    assert changes(client, settings.alerts_stream)[-1]["state"] == "unsilenced"


def test_a_silence_lapses_at_its_end_and_is_then_forgotten(
    client: redis.Redis, settings: Settings
) -> None:
    keys = AlertKeys(settings.alerts_stream)
    silence = new_silence(sensors="room-*", duration_ms=1000, by="maria", now_ms=now_ms())
    add_silence(client, keys, silence, settings.alerts_maxlen)
    view = SilenceView(client, keys)
    change = {"sensor_id": "room-1", "rule": "hot", "state": "raised"}
    covering = view.covering(change, {})
    assert covering is not None and covering.id == silence.id
    assert view.covering({**change, "sensor_id": "cellar"}, {}) is None
    time.sleep(max(0, silence.ends_ms - now_ms()) / 1000 + 0.05)
    # Lapsed at once, though the view has not read the silences again yet ...
    assert view.covering(change, {}) is None
    # ... and forgotten once read.
    assert active_silences(client, keys, now_ms()) == []
    assert client.hlen(keys.silences) == 0
    assert telemetry(settings, "alerts", "silences").strip() == "no silences"


def config_error(text: str, **environ: str) -> str:
    with pytest.raises(RulesError) as caught:
        parse_config(text, "alerts.toml", environ)
    return str(caught.value)


RULE = '[[rule]]\nname = "hot"\ntype = "threshold"\nmetric = "t"\nabove = 1\n'


def test_a_bad_notify_table_names_its_line_and_never_the_url() -> None:
    secret = "https://hooks.slack.example/T0/B0/secret-token"
    assert config_error(RULE + f'[[notify]]\nname = "x"\nurl = "{secret}"\n').startswith(
        "alerts.toml:8: notify x: url is not a notification URL apprise knows"
    )
    assert "secret" not in config_error(RULE + f'[[notify]]\nname = "x"\nurl = "{secret}"\n')
    assert config_error(RULE + '[[notify]]\nname = "x"\nurl = "${HOOK}"\n') == (
        "alerts.toml:8: url needs the environment variable HOOK, which is not set"
    )
    good = '[[notify]]\nname = "x"\nurl = "json://localhost/"\n'
    assert "no field 'passwd'" in config_error(RULE + good + 'body = "$passwd"\n')
    assert "a $ must start a field name" in config_error(RULE + good + 'title = "cost: 5$"\n')
    assert "'pager' is not one of" in config_error(RULE + good + 'severities = ["pager"]\n')
    assert "'retry' is not a setting" in config_error(RULE + good + "retry = 3\n")
    assert "used twice" in config_error(RULE + good + good)
    assert "at most 32 [[notify]] tables" in config_error(RULE + good * 33)
    assert "longer than 2000" in config_error(RULE + good + f'body = "{"x" * 2001}"\n')
    config = parse_config(RULE + good + 'title = "$$5 on ${sensor_id}"\n', "alerts.toml", {})
    title, _, kind = config.notifications[0].message(
        {"sensor_id": "s1", "state": "raised", "severity": "critical", "ts": "0"})  # fmt: skip
    assert (title, kind) == ("$5 on s1", "failure")


def test_rules_check_passes_a_good_file_and_fails_a_bad_one_in_one_line(
    tmp_path: Path, settings: Settings
) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(RULE + '[[notify]]\nname = "ops"\nurl = "ntfy://ntfy.example/alerts"\n')
    bad.write_text(RULE + "above = 2\n")
    run = [sys.executable, "-m", "telemetry", "rules", "check"]
    passed = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert passed.returncode == 0, passed.stderr
    assert "1 rules, 1 notify targets" in passed.stdout
    failed = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.count("\n") == 1 and "bad.toml" in failed.stderr


def test_hostile_silences_and_acknowledgements_are_refused_at_bounded_cost(
    settings: Settings, client: redis.Redis
) -> None:
    api = TestClient(create_app(settings))
    silence = {"sensors": "room-*", "duration": "1h", "by": "test"}
    refused = [
        {**silence, "duration": "0s"},
        {**silence, "duration": "400d"},
        {**silence, "duration": "x" * 33},
        {**silence, "sensors": "*"},  # everything: not offered
        {**silence, "sensors": "room-\x00\n"},
        {**silence, "sensors": "s" * 257},
        {**silence, "comment": "c" * 501},
        {**silence, "labels": ",".join(f"k{i}=v" for i in range(17))},
        {**silence, "rules": "bad rule!"},
    ]
    for body in refused:
        assert api.post("/silences", json=body).status_code == 422, body
    # A thousand silences at most; the next one is refused, the first ones still listed.
    for _ in range(MAX_SILENCES):
        assert api.post("/silences", json=silence).status_code == 201
    assert api.post("/silences", json=silence).status_code == 409
    listed = api.get("/silences").json()
    assert len(listed) == MAX_SILENCES
    assert client.hlen(f"{settings.alerts_stream}:silences") == MAX_SILENCES
    json_body = {"Content-Type": "application/json"}
    assert api.delete("/silences/00000000", headers=json_body).status_code == 404
    assert api.delete("/silences/..%2F..%2Fx", headers=json_body).status_code in (404, 422)
    assert api.delete(f"/silences/{listed[0]['id']}?by=test", headers=json_body).status_code == 204
    # Acknowledging: only open alerts, only real names.
    assert api.post("/alerts/room-1/hot/ack", json={}).status_code == 404
    assert api.post(f"/alerts/{'s' * 300}/hot/ack", json={}).status_code == 422
    assert api.post("/alerts/room-1/hot/ack", json={"by": "b" * 65}).status_code == 422

"""`telemetry secrets`: the credentials a deployment needs, made on the machine that runs it and
never committed: a Redis user per role with only what the role does, broker users, a private CA
with the broker's TLS certificate (and device certificates), and the API token. What exists is
kept, so running it again only adds what is missing (a new device's certificate, say).

Files, in the folder given (compose.yaml reads `deploy/secrets`):

- `compose.env`: the variables compose.yaml needs (`docker compose --env-file ...`);
- `redis-users.acl`: Redis users (passwords stored as SHA-256), for `redis-server --aclfile`;
- `mosquitto-passwords`: the bridge's and the alert workers' broker users;
- `tls/ca.pem` (give it to devices), `tls/ca.key`, `tls/server.pem`, `tls/server.key`, and
  `tls/devices/NAME.pem` and `.key` for each device (its certificate's CN is its sensor id).
"""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ingest.errors import IngestError
from ingest.keys import DEFAULT_ALERTS_STREAM
from telemetry.localserver import mosquitto_password_line, private_file

CERT_DAYS = 825
# Redis users: what each role's processes run. Keys are the stream's and the alerts stream's
# (`{stream}` and `{alerts}` below), or their shards' (`app:event:{0}`...); no role may run the
# dangerous or administrative commands (FLUSHALL, CONFIG SET, KEYS, DEBUG, ...) beyond reading
# the durability settings and, on a Redis Cluster, which node serves which slot.
ROLES = {
    # The simulator, the bridge and any producer: add readings, record MAXLEN and the shard
    # count, dead-letter, and see how far behind the groups are (backpressure).
    "writer": "~{stream} ~{stream}:dead ~{stream}:meta "
    "~{stream}:{{*}} ~{stream}:{{*}}:dead ~{stream}:{{*}}:meta "
    "+xadd +xinfo|groups +hset +hsetnx +hget +config|get +cluster|nodes +ping +hello",
    # Aggregators and alert workers: everything under their streams, scripts included.
    "worker": "~{stream} ~{stream}:* ~{alerts} ~{alerts}:* "
    "+@all -@dangerous -@admin -script|flush -script|kill -function|flush -function|delete "
    "+config|get +info +cluster|nodes",
    # The API: reads everything, adds readings, replays dead letters.
    "api": "~{stream} ~{stream}:* ~{alerts} ~{alerts}:* "
    "+@read +@connection +@transaction +xadd +xdel +hset +hsetnx +config|get +info "
    "+evalsha +eval +script|load +cluster|nodes",
}
BROKER_USERS = ("telemetry-bridge", "telemetry-alerts")


class SecretsError(IngestError):
    """A secret could not be made (openssl missing or failing)."""


def make_secrets(
    folder: Path,
    *,
    hosts: Sequence[str] = (),
    devices: Sequence[str] = (),
    stream: str = "app:event",
    alerts_stream: str = DEFAULT_ALERTS_STREAM,
) -> list[Path]:
    """Create what is missing in `folder`; return the files created."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    made: list[Path] = []
    env_file = folder / "compose.env"
    env = _read_env(env_file)
    wanted = {
        "API_TOKEN": secrets.token_urlsafe(32),
        "API_READ_TOKEN": secrets.token_urlsafe(32),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(24),
        **{f"REDIS_{role.upper()}_PASSWORD": secrets.token_urlsafe(32) for role in ROLES},
        **{_broker_variable(user): secrets.token_urlsafe(32) for user in BROKER_USERS},
    }
    if any(name not in env for name in wanted):
        env = {**wanted, **env}
        made.append(private_file(env_file, "".join(f"{k}={v}\n" for k, v in env.items())))
    read_token = folder / "api-read-token"
    if not read_token.exists():
        # Prometheus reads its bearer token from a file.
        made.append(private_file(read_token, env["API_READ_TOKEN"]))
    acl = folder / "redis-users.acl"
    if not acl.exists():
        lines = ["user default off"]
        for role, rules in ROLES.items():
            digest = hashlib.sha256(env[f"REDIS_{role.upper()}_PASSWORD"].encode()).hexdigest()
            lines.append(f"user {role} on #{digest} resetchannels "
                         + rules.format(stream=stream, alerts=alerts_stream))  # fmt: skip
        # compose's health check: PING and nothing else.
        lines.append("user health on nopass resetchannels +ping")
        made.append(private_file(acl, "\n".join(lines) + "\n"))
    passwords = folder / "mosquitto-passwords"
    if not passwords.exists():
        made.append(private_file(passwords, "".join(
            mosquitto_password_line(user, env[_broker_variable(user)]) for user in BROKER_USERS
        )))  # fmt: skip
    tls = folder / "tls"
    tls.mkdir(exist_ok=True)
    if not (tls / "ca.pem").exists():
        _openssl(tls, "req", "-x509", "-newkey", "rsa:3072", "-nodes", "-days", str(CERT_DAYS),
                 "-subj", "/CN=telemetry private CA", "-keyout", "ca.key",
                 "-out", "ca.pem")  # fmt: skip
        made.append(tls / "ca.pem")
    if not (tls / "server.pem").exists():
        names = ["DNS:mosquitto", "DNS:localhost", "IP:127.0.0.1"]
        names += [f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts]
        made.append(_signed(tls, "server", "mosquitto", names))
    for device in devices:
        if not (tls / "devices" / f"{device}.pem").exists():
            (tls / "devices").mkdir(exist_ok=True)
            made.append(_signed(tls, f"devices/{device}", device, []))
    for key in tls.rglob("*.key"):
        key.chmod(0o600)
    return made


def _broker_variable(user: str) -> str:
    return f"MQTT_{user.removeprefix('telemetry-').upper()}_PASSWORD"


def _read_env(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {name: value for name, value in pairs}


def _signed(tls: Path, name: str, common_name: str, alt_names: Sequence[str]) -> Path:
    """A key and a certificate for `common_name`, signed by the CA in `tls`."""
    with tempfile.TemporaryDirectory() as scratch:
        request = Path(scratch) / "request.csr"
        extensions = Path(scratch) / "extensions.cnf"
        extensions.write_text(f"subjectAltName={','.join(alt_names)}\n" if alt_names else "\n")
        _openssl(tls, "req", "-newkey", "rsa:3072", "-nodes", "-subj", f"/CN={common_name}",
                 "-keyout", f"{name}.key", "-out", str(request))  # fmt: skip
        _openssl(tls, "x509", "-req", "-in", str(request), "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", str(CERT_DAYS), "-extfile", str(extensions),
                 "-out", f"{name}.pem")  # fmt: skip
    return tls / f"{name}.pem"


def _openssl(cwd: Path, *args: str) -> None:
    try:
        done = subprocess.run(
            ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
        )
    except FileNotFoundError:
        raise SecretsError("openssl not found: install it (Debian/Ubuntu: apt-get install "
                           "openssl)") from None  # fmt: skip
    if done.returncode != 0:
        raise SecretsError(f"openssl {args[0]} failed: {done.stderr.strip()[:200]}")

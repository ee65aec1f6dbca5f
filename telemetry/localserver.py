"""Private server processes (redis-server, later mosquitto) started from the binaries on PATH.

`telemetry up` uses them when no server is configured, and the tests use them so that every test
run owns its servers and can kill, pause and restart them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from ingest.errors import IngestError


class LocalServerError(IngestError):
    """A private server could not be started."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (10000 above) is free too."""
    while True:
        port = free_port()
        if port + 10000 <= 65535 and not port_open(port + 10000):
            return port


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# Rewrite the append-only file once it has grown to four times what the last rewrite wrote, and
# never below 256 MiB: a capped stream keeps the dataset steady while the file grows by every
# write, so Redis's defaults (twice, 64 MiB) fork for a rewrite every few seconds at fleet rates.
AOF_REWRITE_SETTINGS = ("--auto-aof-rewrite-percentage", "300",
                        "--auto-aof-rewrite-min-size", "256mb")  # fmt: skip


# A cluster node keeps its view of the cluster in its folder, and a replica takes over a master
# that has not answered for a second (Redis's default waits 15 s).
CLUSTER_NODE_SETTINGS = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                         "--cluster-node-timeout", "1000")  # fmt: skip


# How often a private mosquitto saves its sessions and queued messages.
BROKER_AUTOSAVE_S = 1


class LocalServer:
    binary = ""
    install_hint = ""

    def __init__(self, port: int | None = None, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self._owned_dir = workdir is None
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"{self.binary}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout_s: float = 10.0) -> None:
        # Debian installs the brokers in /usr/sbin, which is not on every user's PATH.
        path = shutil.which(self.binary) or shutil.which(
            self.binary, path="/usr/sbin:/usr/local/sbin"
        )
        if path is None:
            raise LocalServerError(f"{self.binary} not found on PATH: {self.install_hint}")
        log = open(self.workdir / f"{self.binary}.log", "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [path, *self.command()],
            cwd=self.workdir,
            stdout=log,
            stderr=log,
            # Its own session: a Ctrl-C meant for `telemetry up` must not stop the server
            # before the services using it have finished their work in hand.
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while not port_open(self.port):
            if self.process.poll() is not None:
                raise LocalServerError(
                    f"{self.binary} exited at start; see {self.workdir / (self.binary + '.log')}"
                )
            if time.monotonic() > deadline:
                raise LocalServerError(f"{self.binary} did not listen on {self.port} in time")
            time.sleep(0.02)
        self.wait_ready(deadline)

    def wait_ready(self, deadline: float) -> None:
        """Return once the server, already listening, serves requests."""

    def stop(self) -> None:
        """SIGTERM and wait: the server shuts down cleanly."""
        if self.process is None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def pause(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        if self._owned_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.close()


def private_file(path: Path, text: str) -> Path:
    """`text` in a file only its owner may read."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
    return path


def mosquitto_password_line(user: str, password: str) -> str:
    """A line of a mosquitto password file (PBKDF2-SHA512, as mosquitto_passwd writes it),
    made here so the password never appears on a command line."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101)
    return f"{user}:$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


class LocalRedis(LocalServer):
    binary = "redis-server"
    install_hint = (
        "install Redis 7 (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis) "
        "or set REDIS_URL to a running server"
    )

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        aclfile: Path | None = None,
        tls_folder: Path | None = None,
        cluster: bool = False,
    ) -> None:
        """With `password`, clients must authenticate (it is kept in a config file only the
        caller may read, not on the command line); with `aclfile` (as `telemetry secrets` makes
        it), its users are the server's; with `tls_folder` (ca.pem, server.pem, server.key) it
        speaks TLS only (rediss://); with `cluster`, it is a Redis Cluster node (its bus on the
        port + 10000; telemetry/localcluster.py joins nodes into a cluster)."""
        super().__init__(port, workdir)
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.aclfile = aclfile
        self.tls_folder = tls_folder
        self.cluster = cluster

    @property
    def address(self) -> str:
        """The URL without its password, to show."""
        if self.tls_folder:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls_folder / 'ca.pem'}"
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return self.address.replace("://", f"://{auth}", 1)

    def wait_ready(self, deadline: float) -> None:
        # A restarted server with an append-only file answers LOADING until it has replayed it.
        # With users from an ACL file, the health user (nopass: any password) checks it.
        username, password = ("health", "-") if self.aclfile else (None, self.password)
        client = redis.Redis.from_url(self.address, socket_timeout=2, username=username,
                                      password=password)  # fmt: skip
        while True:
            try:
                client.ping()
                return
            except redis.BusyLoadingError:
                if time.monotonic() > deadline:
                    raise LocalServerError("redis-server still loading its data") from None
                time.sleep(0.02)
            finally:
                client.close()

    def command(self) -> list[str]:
        config = []
        if self.password:
            config = [str(private_file(self.workdir / "redis.conf",
                                       f"requirepass {self.password}\n"))]  # fmt: skip
        tls = self.tls_folder
        listen = ["--port", str(self.port)] if tls is None else [
            "--port", "0", "--tls-port", str(self.port),
            "--tls-cert-file", str(tls / "server.pem"), "--tls-key-file", str(tls / "server.key"),
            "--tls-ca-cert-file", str(tls / "ca.pem"), "--tls-auth-clients", "no",
        ]  # fmt: skip
        return [
            *config,
            *listen,
            "--bind", "127.0.0.1",
            "--protected-mode", "yes",
            *(["--aclfile", str(self.aclfile)] if self.aclfile else []),
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            *AOF_REWRITE_SETTINGS,
            *(CLUSTER_NODE_SETTINGS if self.cluster else ()),
        ]  # fmt: skip


class LocalMosquitto(LocalServer):
    binary = "mosquitto"
    install_hint = (
        "install Mosquitto 2 (Debian/Ubuntu: apt-get install mosquitto; macOS: brew install "
        "mosquitto) or set MQTT_URL to a running broker"
    )

    def __init__(
        self,
        port: int | None = None,
        workdir: Path | None = None,
        *,
        tls_folder: Path | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        """With `tls_folder` (holding ca.pem, server.pem and server.key) it listens for mqtts://
        only; with `credentials` (user, password) only that user may connect."""
        super().__init__(port, workdir)
        self.tls_folder = tls_folder
        self.credentials = credentials

    @property
    def address(self) -> str:
        """The URL without credentials, to show."""
        scheme = "mqtts" if self.tls_folder else "mqtt"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        if self.credentials is None:
            return self.address
        user, password = (quote(part, safe="") for part in self.credentials)
        return self.address.replace("://", f"://{user}:{password}@", 1)

    def command(self) -> list[str]:
        config = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.workdir}/",
            # Mosquitto writes what it holds to disk only this often: a crash loses the
            # messages it acknowledged since (see the README's Operations section).
            f"autosave_interval {BROKER_AUTOSAVE_S}",
            # A bridge that is down must find its devices' backlog kept, not dropped.
            "max_queued_messages 1000000",
            "max_inflight_messages 1000",
            "log_dest stderr",
        ]
        if self.credentials is None:
            lines.append("allow_anonymous true")
        else:
            passwords = private_file(self.workdir / "passwords",
                                     mosquitto_password_line(*self.credentials))  # fmt: skip
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        if os.geteuid() == 0:
            # Started by root, mosquitto would switch to its own user, which cannot write to a
            # folder of root's: it would run without ever saving. It stays the caller's.
            lines.append("user root")
        if self.tls_folder:
            lines += [
                f"cafile {self.tls_folder / 'ca.pem'}",
                f"certfile {self.tls_folder / 'server.pem'}",
                f"keyfile {self.tls_folder / 'server.key'}",
            ]
        config.write_text("\n".join(lines) + "\n")
        return ["-c", str(config)]

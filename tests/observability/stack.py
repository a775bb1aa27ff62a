"""What the observability tests run: gateways (embedded broker and RabbitMQ), a TCP proxy in
front of RabbitMQ that can cut the gateway's connections, and a Prometheus of our own.

Everything listens on 127.0.0.1 only, on ports picked at random. Every child process gets
PR_SET_PDEATHSIG, so it dies with the test process even when that is killed outright, and
every `stop()` is bounded in time.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import pathlib
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Callable

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the thread that started it exits."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.1) -> Any:
    """Calls check() until it returns something truthy; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - reported below if it never succeeds
            last_error = err
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request; returns (status, headers, body) for every status."""
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


class Process:
    """A child process whose stdout and stderr go to a log file."""

    def __init__(self, name: str, argv: list[str], log: pathlib.Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._log.close()


def gateway_env() -> dict[str, str]:
    """The environment without LONGPOLL_* settings that could leak into the gateways."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LONGPOLL_", "OTEL_"))}
    env["RUST_LOG"] = "info"
    return env


class Gateway:
    """`longpoll-gateway serve` on ports 0, with helpers for its HTTP API."""

    def __init__(self, binary: pathlib.Path, name: str, workdir: pathlib.Path, token: str, args: list[str]):
        self.name = name
        self.token = token
        argv = [
            str(binary), "serve",
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--log-format", "json",
            "--api-token", token,
            *args,
        ]  # fmt: skip
        self.process = Process(name, argv, workdir / f"{name}.log", env=gateway_env())
        self.public = ""
        self.admin = ""

    def wait_listening(self, timeout: float = 20) -> None:
        def bound():
            if not self.process.alive():
                raise RuntimeError(f"{self.name} exited:\n{self.process.log()[-3000:]}")
            for line in self.process.log().splitlines():
                if '"public"' in line and '"admin"' in line:
                    fields = json.loads(line)
                    return fields["public"], fields["admin"]
            return None

        public, admin = wait_for(f"{self.name} to listen", bound, timeout)
        self.public = f"http://{public}"
        self.admin = f"http://{admin}"

    def ready(self) -> bool:
        try:
            return http("GET", f"{self.admin}/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """The /metrics samples, `name{labels}` → value."""
        _, _, body = http("GET", f"{self.admin}/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def _api(self, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
        return http(method, f"{self.public}{path}", body, {"Authorization": f"Bearer {self.token}"})

    def subscribe(self, event_key: str) -> str:
        status, _, body = self._api("POST", "/api/v1/subscriptions", {"event_keys": [event_key]})
        assert status == 201, (status, body)
        return json.loads(body)["key"]

    def emit(self, event_key: str, event: dict[str, Any]) -> str:
        status, _, body = self._api("POST", f"/api/v1/events/{urllib.parse.quote(event_key)}", event)
        assert status == 202, (status, body)
        return json.loads(body)["message_id"]

    def poll(self, uuid: str, sequence: int | str, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
        query = urllib.parse.urlencode({"uuid": uuid, "sequence": sequence})
        return http("GET", f"{self.public}/?{query}", timeout=timeout)

    def stop(self) -> None:
        self.process.stop()


class ChaosProxy:
    """A TCP proxy (127.0.0.1:port → 127.0.0.1:upstream) whose connections can be cut."""

    def __init__(self, upstream: int):
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._closed = False
        self._refuse_until = 0.0
        threading.Thread(target=self._accept, name="chaos-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refuse_until:
                client.close()  # the broker is "down": the AMQP handshake fails
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._closed:
                    client.close()
                    server.close()
                    return
                self._sockets |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def connections(self) -> int:
        with self._lock:
            return len(self._sockets) // 2

    def cut(self) -> None:
        """Closes every proxied connection (the broker seems to vanish, then come back)."""
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            self._drop(sock)

    def outage(self, seconds: float) -> None:
        """Cuts every connection and refuses new ones for `seconds`: a short broker outage."""
        self._refuse_until = time.monotonic() + seconds
        self.cut()

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self.listener.close()
        self.cut()


class Prometheus:
    """Our own Prometheus: own config, own TSDB directory, own loopback port."""

    def __init__(self, binary: str, workdir: pathlib.Path, config: str):
        self.workdir = workdir
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(config)
        self.data = workdir / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [
            binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        self.process = Process("prometheus", argv, workdir / "prometheus.log")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            if not self.process.alive():
                raise RuntimeError(f"prometheus exited:\n{self.process.log()[-3000:]}")
            return http("GET", f"{self.url}/-/ready", timeout=2)[0] == 200

        wait_for("prometheus to be ready", ready, timeout)
        # The server on this port is ours (not the Debian package's service, say): it runs on
        # our config and our TSDB directory.
        flags = self.api("/api/v1/status/flags")
        assert flags["storage.tsdb.path"] == str(self.data), flags["storage.tsdb.path"]
        assert flags["config.file"] == str(self.config_path), flags["config.file"]

    def api(self, path: str, **params: str | list[str]) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        status, _, body = http("GET", f"{self.url}{path}?{query}", timeout=10)
        payload = json.loads(body)
        assert status == 200 and payload["status"] == "success", (path, params, status, payload)
        return payload["data"]

    def query(self, expr: str) -> dict[str, Any]:
        """An instant query at the current time: {"resultType": ..., "result": ...}."""
        return self.api("/api/v1/query", query=expr)

    def stop(self) -> None:
        self.process.stop()


def finite_values(data: dict[str, Any]) -> list[float]:
    """The finite sample values of an instant query's result."""
    if data["resultType"] == "scalar":
        values = [float(data["result"][1])]
    elif data["resultType"] == "vector":
        values = [float(sample["value"][1]) for sample in data["result"]]
    else:  # matrix (a range selector as the whole expression)
        values = [float(v) for series in data["result"] for _, v in series["values"]]
    return [v for v in values if math.isfinite(v)]


def label_values_query(query: str) -> tuple[str, str]:
    """Grafana's label_values(selector, label) → (selector, label)."""
    match = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query.strip(), re.S)
    assert match, query
    return match.group(1).strip(), match.group(2)

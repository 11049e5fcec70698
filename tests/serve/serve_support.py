"""A real ``python -m maskrcnn.serve`` on a free loopback port, and a plain HTTP client for it.

    with running_server(weights, "--max-batch", "4") as server:
        status, headers, body = server.post("/predict?score_thresh=0", png_bytes)
        server.json("/healthz")

The server is the command line itself, started as a subprocess on 127.0.0.1 only; the client is urllib and
raw sockets (no extra package), so the tests see exactly what any HTTP client sees.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Dict, Iterator, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOST = "127.0.0.1"
STARTUP_SECONDS = 180  # importing torch and FastAPI on a loaded 2-core machine can take half a minute


def free_port() -> int:
    """A TCP port free on the loopback interface now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def multipart(field: str, file_name: str, data: bytes, content_type: str = "application/octet-stream"):
    """``(body, content type header)`` of a multipart/form-data upload of one file."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{file_name}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Server:
    """A running server: its process, base URL and log file."""

    def __init__(self, process: subprocess.Popen, port: int, log_path: str):
        self.process, self.port, self.log_path = process, port, log_path
        self.url = f"http://{HOST}:{port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as file:
            return file.read()

    def request(self, method: str, path: str, data: Optional[bytes] = None, content_type: Optional[str] = None,
                timeout: float = 120) -> Tuple[int, Dict[str, str], bytes]:
        """``(status, headers, body)``; 4xx/5xx answers are returned, not raised."""
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def post(self, path: str, data: bytes, content_type: str = "application/octet-stream", timeout: float = 120):
        return self.request("POST", path, data, content_type, timeout)

    def upload(self, path: str, file_name: str, data: bytes, timeout: float = 120):
        """POST ``data`` as the multipart field ``image``."""
        body, content_type = multipart("image", file_name, data)
        return self.post(path, body, content_type, timeout)

    def json(self, path: str) -> dict:
        status, _headers, body = self.request("GET", path)
        assert status == 200, (status, body)
        return json.loads(body)


@contextlib.contextmanager
def running_server(weights: str, *options: str, log_dir: str) -> Iterator[Server]:
    """``python -m maskrcnn.serve --weights WEIGHTS OPTIONS`` on a free port, ready (``/healthz`` answers)."""
    port = free_port()
    log_path = os.path.join(log_dir, f"server_{port}.log")
    environment = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    command = [sys.executable, "-m", "maskrcnn.serve", "--weights", weights, "--host", HOST, "--port", str(port),
               "--device", "cpu", "--log-level", "warning", *options]
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)
    server = Server(process, port, log_path)
    try:
        _wait_until_ready(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.process.returncode}:\n{server.log()}")
        try:
            with urllib.request.urlopen(server.url + "/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the server did not answer /healthz within {STARTUP_SECONDS} s:\n{server.log()}")


def raw_exchange(port: int, request: bytes, then: bytes = b"", pause: float = 0.0) -> bytes:
    """Send ``request`` on a raw socket, optionally ``then`` after ``pause`` s; return all the server sent."""
    with socket.create_connection((HOST, port), timeout=60) as connection:
        connection.sendall(request)
        if then:
            time.sleep(pause)
            connection.sendall(then)
        received = []
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            received.append(chunk)
        return b"".join(received)

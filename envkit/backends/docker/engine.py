"""The Docker engine envkit talks to: where it is, its SDK client, and the Compose CLI.

Where: ``DOCKER_HOST`` (unix, tcp, ssh), else the Docker context named by
``DOCKER_CONTEXT`` or the CLI's ``currentContext``, else the local socket.
The host in connection URLs follows it (``tcp://build-box:2375`` gives
``build-box``; a local socket gives ``127.0.0.1``), unless the ``host``
setting (``ENVKIT_HOST``) says otherwise. Ports are published on 127.0.0.1
for a local engine and on all of a remote engine's interfaces (its loopback
would be unreachable from here).

The ``docker`` package is imported only here and only when needed: it costs
about 0.2 s.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ...errors import BackendUnavailable, CommandFailed
from ...proc import run

log = logging.getLogger("envkit")

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
#: Variables the docker and compose CLIs need to find the engine; everything else they get is scrubbed of COMPOSE_*.
ENGINE_VARIABLES = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY",
                    "DOCKER_API_VERSION", "PATH", "HOME", "XDG_RUNTIME_DIR", "SSH_AUTH_SOCK")
_compose_cache: dict[str, list[str]] = {}


@dataclass(frozen=True)
class Engine:
    """A located engine: how to reach it, and what that means for ports and URLs."""

    url: str  # unix:///..., tcp://h:p, ssh://user@h
    context: str | None = None
    url_host: str = "127.0.0.1"  # the host tests connect to
    bind: str = "127.0.0.1"  # the address ports are published on

    @property
    def remote(self) -> bool:
        return self.bind != "127.0.0.1"


def locate(environ: Mapping[str, str], host_override: str | None = None) -> Engine:
    """Find the engine from the environment and the Docker CLI's configuration (no connection is made)."""
    url, context = environ.get("DOCKER_HOST"), None
    if not url:
        context = environ.get("DOCKER_CONTEXT") or _current_context(environ)
        url = _context_host(environ, context) if context and context != "default" else None
    url = url or DEFAULT_SOCKET
    host = remote_host(url)
    bind = "127.0.0.1" if host is None or _loopback(host) else "0.0.0.0"
    url_host = host_override or (host if host and not _loopback(host) else "127.0.0.1")
    return Engine(url=url, context=context if context != "default" else None, url_host=url_host, bind=bind)


def remote_host(url: str) -> str | None:
    """The host part of a tcp:// or ssh:// engine URL; None for a local socket."""
    parts = urlsplit(url)
    if parts.scheme in ("tcp", "ssh", "http", "https"):
        return parts.hostname
    return None


def client(engine: Engine, environ: Mapping[str, str]) -> Any:
    """A docker SDK client for ``engine``; BackendUnavailable (with what to do) when it does not answer."""
    try:
        import docker
        import docker.errors
    except ImportError:
        raise BackendUnavailable("the docker backend needs the 'docker' package: pip install docker") from None
    # a fixed version, so that constructing it does not talk to the engine yet: see the CA below
    kwargs: dict[str, Any] = {"use_ssh_client": engine.url.startswith("ssh://"), "timeout": 30, "version": "1.24"}
    try:
        if environ.get("DOCKER_HOST") or not engine.context:
            found = docker.from_env(environment=dict(environ), **kwargs)
        else:
            found = docker.DockerClient(base_url=engine.url, tls=_context_tls(environ, engine.context), **kwargs)
        if isinstance(found.api.verify, str):
            # requests lets REQUESTS_CA_BUNDLE (set on many CI images) override a session's own CA, so
            # the engine's certificate would be checked against the system's CAs and refused
            found.api.trust_env = False
        found.api._version = found.api._retrieve_server_version()  # the engine's API version; fails if none answers
        return found
    except docker.errors.DockerException as exc:
        raise BackendUnavailable(
            f"no Docker engine answers at {engine.url} ({reason(exc)}). Start Docker (or set DOCKER_HOST / a docker "
            "context), or use --backend native"
        ) from None


_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()\]]+)")


def reason(exc: BaseException) -> str:
    """The cause of an SDK or HTTP error in a few words: urllib3's nested repr names it deep inside."""
    text = str(exc)
    found = _ERRNO.findall(text)
    if found:
        return found[-1].strip().rstrip(".").lower()
    for cause in ("timed out", "certificate verify failed", "Permission denied", "No such file or directory"):
        if cause.lower() in text.lower():
            return cause.lower()
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


class Inspector:
    """The engine's API version and images, read before the SDK is imported.

    On a local unix socket these are two plain HTTP requests, so the render and
    ``compose up`` need not wait for the SDK (0.1 s to import, imported meanwhile
    in ``connecting``); elsewhere the SDK answers.
    """

    def __init__(self, engine: Engine, connecting: Future[Any]) -> None:
        self._socket = engine.url[len("unix://"):] if engine.url.startswith("unix://") else None
        self._connecting = connecting
        self._version: str | None = None
        self._images: dict[str, dict[str, Any] | None] = {}  # asked once per run: plan, snapshot and render all need it

    def _get(self, path: str) -> Any:
        status, body = get(self._socket or "", path)
        if status == 404:
            return None
        if status != 200:
            raise OSError(f"GET {path}: HTTP {status}")
        return body

    @property
    def api_version(self) -> str:
        if self._version is None:
            try:
                self._version = str(self._get("/version")["ApiVersion"]) if self._socket else None
            except (OSError, ValueError, KeyError, TypeError):
                self._version = None
            if self._version is None:
                self._version = str(self._connecting.result().api.api_version)
        return self._version

    def at_least(self, version: str) -> bool:
        have = [int(x) for x in self.api_version.split(".")]
        return have >= [int(x) for x in version.split(".")]

    def image(self, name: str) -> dict[str, Any] | None:
        """``docker image inspect``; None when the image is not here yet (compose pulls it)."""
        if name not in self._images:
            self._images[name] = self._inspect(name)
        return self._images[name]

    def _inspect(self, name: str) -> dict[str, Any] | None:
        if self._socket:
            try:
                return self._get(f"/images/{quote(name, safe='')}/json")  # type: ignore[no-any-return]
            except (OSError, ValueError):
                pass  # the SDK reports what is wrong, below
        api = self._connecting.result().api  # first: that thread imports docker; two importing at once deadlock
        import docker.errors

        try:
            return api.inspect_image(name)  # type: ignore[no-any-return]
        except docker.errors.ImageNotFound:
            return None


def image_env(image: dict[str, Any]) -> dict[str, str]:
    """An inspected image's environment (``ENV``)."""
    return dict(item.split("=", 1) for item in (image.get("Config") or {}).get("Env") or [] if "=" in item)


def image_volumes(image: dict[str, Any]) -> list[str]:
    """An inspected image's declared ``VOLUME`` paths."""
    return sorted((image.get("Config") or {}).get("Volumes") or {})


def get(socket_path: str, path: str) -> tuple[int, Any]:
    """A plain GET on the engine's unix socket (no SDK: its import costs 0.2 s); the JSON body when the status is 200."""
    conn = _UnixHTTPConnection(socket_path)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return response.status, json.loads(body) if response.status == 200 else None


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=10)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(self._path)
        self.sock = sock


def compose_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for compose: everything but COMPOSE_*, so nothing in the shell can redirect it."""
    return {k: v for k, v in environ.items() if not k.startswith("COMPOSE_")}


def docker_cli(environ: Mapping[str, str]) -> str | None:
    """The ``docker`` command line client, if installed (snapshots stream through ``docker exec``)."""
    return shutil.which("docker", path=environ.get("PATH", os.defpath))


def compose_cli(environ: Mapping[str, str]) -> list[str]:
    """``docker compose`` (v2), or ``docker-compose`` where only that exists.

    A Compose plugin file in one of the CLI's plugin folders is taken on trust
    (asking ``docker compose version`` costs a Go process start, 60 ms); a
    ``compose up`` that finds no plugin after all falls back (see :func:`legacy_compose`).
    """
    path = environ.get("PATH", os.defpath)
    if path in _compose_cache:
        return _compose_cache[path]
    docker = shutil.which("docker", path=path)
    legacy = shutil.which("docker-compose", path=path)
    candidates = ([[docker, "compose"]] if docker else []) + ([[legacy]] if legacy else [])
    if docker and any((folder / "docker-compose").is_file() for folder in _plugin_dirs(environ)):
        _compose_cache[path] = [docker, "compose"]
        return _compose_cache[path]
    for argv in candidates:
        try:
            run([*argv, "version"], env=compose_env(environ), timeout=30)
        except CommandFailed:
            continue
        _compose_cache[path] = argv
        log.debug("compose: using %s", " ".join(argv))
        return argv
    raise BackendUnavailable(
        "neither `docker compose` (Compose v2) nor `docker-compose` works here; install the Docker Compose plugin, "
        "or use --backend native"
    )


def legacy_compose(environ: Mapping[str, str], output: str) -> list[str] | None:
    """``docker-compose``, when ``docker compose`` just said it has no such command; else None."""
    if "is not a docker command" not in output and "unknown command" not in output:
        return None
    legacy = shutil.which("docker-compose", path=environ.get("PATH", os.defpath))
    if legacy:
        _compose_cache[environ.get("PATH", os.defpath)] = [legacy]
    return [legacy] if legacy else None


def _plugin_dirs(environ: Mapping[str, str]) -> list[Path]:
    return [_docker_config_dir(environ) / "cli-plugins"] + [
        Path(p) / "docker" / "cli-plugins" for p in ("/usr/local/lib", "/usr/local/libexec", "/usr/lib", "/usr/libexec")]


def _docker_config_dir(environ: Mapping[str, str]) -> Path:
    if environ.get("DOCKER_CONFIG"):
        return Path(environ["DOCKER_CONFIG"])
    return Path(environ.get("HOME") or "~").expanduser() / ".docker"


def _current_context(environ: Mapping[str, str]) -> str | None:
    try:
        data = json.loads((_docker_config_dir(environ) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    name = data.get("currentContext")
    return str(name) if name else None


def _context_host(environ: Mapping[str, str], name: str) -> str | None:
    digest = hashlib.sha256(name.encode()).hexdigest()
    meta = _docker_config_dir(environ) / "contexts" / "meta" / digest / "meta.json"
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        log.warning("docker context %r has no readable metadata at %s; using the default socket", name, meta)
        return None
    host = data.get("Endpoints", {}).get("docker", {}).get("Host")
    return str(host) if host else None


def _context_tls(environ: Mapping[str, str], name: str) -> Any:
    """The TLS settings of a context made with ``docker context create --docker "host=tcp://...,ca=,cert=,key="``.

    The CLI keeps the files in ``contexts/tls/<sha256 of the name>/docker/{ca,cert,key}.pem`` and
    ``SkipTLSVerify`` in the context's metadata; None when the context has neither (plain tcp, ssh, unix).
    """
    digest = hashlib.sha256(name.encode()).hexdigest()
    config = _docker_config_dir(environ)
    folder = config / "contexts" / "tls" / digest / "docker"
    try:
        meta = json.loads((config / "contexts" / "meta" / digest / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    skip = bool(meta.get("Endpoints", {}).get("docker", {}).get("SkipTLSVerify"))
    ca, cert, key = (folder / f"{part}.pem" for part in ("ca", "cert", "key"))
    if not skip and not any(p.is_file() for p in (ca, cert, key)):
        return None
    import docker.tls

    return docker.tls.TLSConfig(
        client_cert=(str(cert), str(key)) if cert.is_file() and key.is_file() else None,
        ca_cert=str(ca) if ca.is_file() else None,
        verify=False if skip else (str(ca) if ca.is_file() else True),
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False

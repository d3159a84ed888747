"""What a container backend needs of a service: one record, the same for the built-ins and ``[services.NAME]``.

    postgres.container(config, password)  ->  Container   the built-ins declare theirs
    redis.container(config, password)     ->  Container
    user.container(spec, config)          ->  Container   a user service's, from its ServiceSpec

The docker backend runs a list of these (``envkit.services.containers``) and
never asks which service it holds: ports to publish, the compose partial and
its values, tmpfs for the image's data, the host-side probe and the endpoint
all come from the record. A user service carries its :class:`ServiceSpec`
instead of a partial: the backend renders its template or image and probes it
as ``probe =`` says.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..config import port_request

if TYPE_CHECKING:
    from .user import ServiceSpec

E = TypeVar("E")


@dataclass(frozen=True)
class Port:
    """One port a service listens on inside its container, and what the host side asks of it."""

    container: int
    default: int | None = None  # the host port envkit prefers; None: the engine picks one (the committed file: ``container``)
    request: int | str | None = None  # the config's setting: None (``default``, or a free one), 0/"auto", or N (pinned)

    @property
    def movable(self) -> bool:
        """envkit chose the host port (it was not pinned), so a run may move it when another takes it first."""
        return self.default is not None and not port_request(self.request, 0)[1]

    def committed(self) -> int:
        """The host port of the committed compose file: a pinned port, else the default, else the container's."""
        if self.default is None:
            return self.container
        port, strict = port_request(self.request, self.default)
        return port if strict else self.default


@dataclass(frozen=True)
class Container(Generic[E]):
    """A service as a container backend runs it. ``E`` is its endpoint type."""

    name: str
    image: str | None  # None: a user's template names it
    ports: dict[str, Port]  # by port name
    endpoint: Callable[[str, dict[str, int]], E]  # from the host and the published ports (by port name)
    template: str | None = None  # the compose partial (built-ins; a user's own folder may override it)
    values: Mapping[str, Any] = field(default_factory=dict)  # what the partial renders with, besides the plan's
    #: tmpfs mounts from the image's environment and declared VOLUMEs (None: not inspected, e.g. not pulled yet)
    tmpfs: Callable[[Mapping[str, str], list[str] | None], list[str]] | None = None
    #: readiness from the host, against the published ports: the endpoint as the server describes itself (its
    #: version), or None for "not yet"; an exception also means "not yet". It suffices without the health check.
    probe: Callable[[E], E | None] | None = None
    facts: Callable[[E], dict[str, str]] = lambda endpoint: {}  # what the state notes of it (image, version)
    healthcheck: bool = False  # the partial declares a health check: dependants wait for "service_healthy"
    setting: str = ""  # where the image is configured, for messages ("postgres.image")
    spec: ServiceSpec | None = None  # a user-defined service: rendered from its template or image, probed as it says


def tmpfs_paths(volumes: list[str], data: str | None = None) -> list[str]:
    """tmpfs mounts for an image: each declared VOLUME (Docker creates an anonymous volume for any VOLUME
    without a mount at exactly that path), plus the data path unless a volume already holds it."""
    out = sorted({v.rstrip("/") or "/" for v in volumes})
    if data and not any(data.rstrip("/") == v or data.startswith(v.rstrip("/") + "/") for v in out):
        out.append(data.rstrip("/"))
    return sorted(out)

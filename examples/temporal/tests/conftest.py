"""Fixtures for the chat example's tests: the real database and Temporal dev server, a fake model.

The environment comes from envkit (`envkit test`): DATABASE_URL, migrated from chat.models, and
TEMPORAL_ADDRESS of the dev server the `temporal` recipe runs. Without them the tests are skipped, unless
CI=true or ENVKIT_REQUIRE=1, in which case they fail.

Only the model is faked, at its boundary (chat.llm.LLMClient.complete): the API, the workflow, the agent's
activity and the database all run for real, the workflow on a worker of this process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parent.parent
if str(APP_DIR) not in sys.path:  # make "chat" importable however pytest is run
    sys.path.insert(0, str(APP_DIR))

from chat.llm import LLMClient, LLMError  # noqa: E402


def _required() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"} or os.environ.get("ENVKIT_REQUIRE") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    missing = [n for n in ("DATABASE_URL", "TEMPORAL_ADDRESS") if not os.environ.get(n)]
    if missing and not _required():
        skip = pytest.mark.skip(reason=f"{', '.join(missing)} not set: run the tests with `envkit test`")
        for item in items:
            item.add_marker(skip)


class FakeLLM(LLMClient):
    """The model, replaced: answers from ``replies`` in order (an exception in it is raised), records each input."""

    def __init__(self) -> None:
        super().__init__(base_url="http://model.invalid", api_key="", model="fake")
        self.replies: list[str | Exception] = []
        self.calls: list[list[dict[str, str]]] = []

    def complete(self, messages: list[dict[str, str]]) -> str:
        self.calls.append([dict(m) for m in messages])
        if not self.replies:
            raise LLMError("the fake model has no reply left")
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


@pytest.fixture
def fake_llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
async def temporal() -> AsyncIterator[object]:
    from temporalio.client import Client

    yield await Client.connect(os.environ["TEMPORAL_ADDRESS"], namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"))


@pytest.fixture
async def worker(temporal: object, fake_llm: FakeLLM) -> AsyncIterator[None]:
    """The app's own worker (chat.worker.build), with the fake model, polling the dev server during the test."""
    from chat import worker as chat_worker

    with ThreadPoolExecutor(4) as executor:
        async with chat_worker.build(temporal, fake_llm, executor):  # type: ignore[arg-type]
            yield


@pytest.fixture
def api() -> Iterator[object]:
    """FastAPI's TestClient; entering it runs the app's lifespan, which connects to Temporal."""
    from fastapi.testclient import TestClient

    from chat.api import app

    with TestClient(app) as client:
        yield client


# temporalio's Rust threads can abort CPython's finalization once the tests are over ("Fatal Python error:
# PyGILState_Release", sdk-python issue 300), turning a green run into exit code 134 now and then. Once
# pytest has reported and every plugin (envkit's too) has cleaned up, leave with pytest's own exit code and
# skip that finalization.
_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _status
    _status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if "temporalio" in sys.modules and not hasattr(config, "workerinput"):  # not in an xdist worker
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status)

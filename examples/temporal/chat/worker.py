"""The worker: runs the workflow and the agent's activity (python -m chat.worker)."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.worker import Worker

from .agent import ChatActivities
from .llm import LLMClient
from .workflows import TASK_QUEUE, AnswerMessage


def build(client: Client, llm: LLMClient, executor: ThreadPoolExecutor) -> Worker:
    return Worker(client, task_queue=TASK_QUEUE, workflows=[AnswerMessage],
                  activities=[ChatActivities(llm).answer], activity_executor=executor)


async def main() -> None:
    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"], namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    with ThreadPoolExecutor(4) as executor:
        await build(client, LLMClient.from_env(), executor).run()


if __name__ == "__main__":
    asyncio.run(main())

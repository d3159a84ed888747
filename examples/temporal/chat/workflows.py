"""The workflow that answers one message: the agent's activity, retried when the model fails."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from .agent import ChatActivities

TASK_QUEUE = "chat"


@workflow.defn(name="AnswerMessage")
class AnswerMessage:
    @workflow.run
    async def run(self, message_id: int) -> int:
        return await workflow.execute_activity_method(
            ChatActivities.answer, message_id, start_to_close_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(initial_interval=timedelta(milliseconds=100), maximum_attempts=5))

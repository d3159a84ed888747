"""POST /chat against the real database and Temporal dev server; only the model is faked."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from temporalio.client import WorkflowExecutionStatus

from chat import db
from chat.agent import SYSTEM_PROMPT
from chat.llm import LLMError
from chat.models import ChatMessage


def row(message_id: int) -> ChatMessage:
    with db.session() as session:
        found = session.get(ChatMessage, message_id)
        assert found is not None, f"no chat_messages row {message_id}"
        return found


def conversation() -> str:
    return f"c-{uuid.uuid4().hex[:12]}"


async def test_post_chat_stores_the_message_and_a_workflow_answers_it(api, temporal, worker, fake_llm) -> None:
    fake_llm.replies = ["  Your order left the warehouse this morning.  "]
    talk = conversation()
    response = api.post("/chat", json={"conversation_id": talk, "content": "Where is my order?"})
    assert response.status_code == 202, response.text
    accepted = response.json()

    stored = row(accepted["message_id"])  # committed before the workflow started
    assert (stored.conversation_id, stored.role, stored.content) == (talk, "user", "Where is my order?")
    assert stored.workflow_id == accepted["workflow_id"]

    handle = temporal.get_workflow_handle(accepted["workflow_id"])
    answer_id = await handle.result()
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED

    answer = row(answer_id)
    assert (answer.role, answer.content, answer.reply_to) == ("assistant", "Your order left the warehouse this morning.",
                                                              stored.id)
    assert answer.workflow_id == accepted["workflow_id"]
    assert fake_llm.calls == [[{"role": "system", "content": SYSTEM_PROMPT},
                               {"role": "user", "content": "Where is my order?"}]]


async def test_the_model_sees_the_conversation_so_far(api, temporal, worker, fake_llm) -> None:
    fake_llm.replies = ["Hello! How can I help?", "It costs 12 euros."]
    talk = conversation()
    for text in ("Hi", "How much is shipping?"):
        accepted = api.post("/chat", json={"conversation_id": talk, "content": text}).json()
        await temporal.get_workflow_handle(accepted["workflow_id"]).result()

    assert fake_llm.calls[1][1:] == [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello! How can I help?"},
                                     {"role": "user", "content": "How much is shipping?"}]
    listed = api.get(f"/chat/{talk}").json()
    assert [(m["role"], m["content"]) for m in listed] == [
        ("user", "Hi"), ("assistant", "Hello! How can I help?"),
        ("user", "How much is shipping?"), ("assistant", "It costs 12 euros.")]


async def test_a_failing_model_call_is_retried_and_answered_once(api, temporal, worker, fake_llm) -> None:
    fake_llm.replies = [LLMError("503 from the model"), "Sorry for the wait: here it is."]
    talk = conversation()
    accepted = api.post("/chat", json={"conversation_id": talk, "content": "Anyone there?"}).json()
    answer_id = await temporal.get_workflow_handle(accepted["workflow_id"]).result()

    assert len(fake_llm.calls) == 2  # the first attempt failed, Temporal retried the activity
    with db.session() as session:
        answers = session.scalars(select(ChatMessage).where(ChatMessage.conversation_id == talk,
                                                            ChatMessage.role == "assistant")).all()
    assert [a.id for a in answers] == [answer_id]
    assert answers[0].content == "Sorry for the wait: here it is."


def test_a_message_is_validated_before_anything_is_stored(api) -> None:
    talk = conversation()
    assert api.post("/chat", json={"conversation_id": talk, "content": ""}).status_code == 422
    with db.session() as session:
        assert session.scalars(select(ChatMessage).where(ChatMessage.conversation_id == talk)).all() == []

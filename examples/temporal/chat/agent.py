"""The agent: answer a stored user message with the model, and store the answer.

Runs as a Temporal activity (see chat/workflows.py), so a model call that fails is retried by Temporal, and a
retry after the answer was stored does not store a second one.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from temporalio import activity

from . import db
from .llm import LLMClient
from .models import ChatMessage

SYSTEM_PROMPT = "You are a concise, friendly support assistant. Answer in at most three sentences."
HISTORY = 20  # the messages of the conversation the model sees, the newest last
MAX_REPLY = 2000


def prompt(history: list[ChatMessage]) -> list[dict[str, str]]:
    """The model's input: the system prompt, then the conversation so far."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            *({"role": m.role, "content": m.content} for m in history[-HISTORY:])]


def tidy(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_REPLY else text[:MAX_REPLY - 1].rstrip() + "…"


@dataclass
class ChatActivities:
    llm: LLMClient

    @activity.defn(name="answer")
    def answer(self, message_id: int) -> int:
        """Answer message ``message_id``; returns the id of the stored answer."""
        with db.session() as session:
            message = session.get(ChatMessage, message_id)
            if message is None:
                raise ValueError(f"no chat message {message_id}")
            stored = session.scalar(select(ChatMessage).where(ChatMessage.reply_to == message_id))
            if stored is not None:  # a retry after the answer was committed
                return stored.id
            history = list(session.scalars(
                select(ChatMessage).where(ChatMessage.conversation_id == message.conversation_id,
                                          ChatMessage.id <= message_id).order_by(ChatMessage.id)))
        reply = tidy(self.llm.complete(prompt(history)))
        with db.session() as session, session.begin():
            answer = ChatMessage(conversation_id=message.conversation_id, role="assistant", content=reply,
                                 reply_to=message_id, workflow_id=activity.info().workflow_id)
            session.add(answer)
            session.flush()
            return answer.id

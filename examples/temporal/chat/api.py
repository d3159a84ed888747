"""The HTTP API: POST /chat stores the message and starts the workflow that answers it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from pydantic import BaseModel, Field
from sqlalchemy import select
from temporalio.client import Client

from . import db
from .models import ChatMessage
from .workflows import TASK_QUEUE, AnswerMessage


class ChatIn(BaseModel):
    conversation_id: str = Field(min_length=1, max_length=64)
    content: str = Field(min_length=1, max_length=4000)


class ChatAccepted(BaseModel):
    message_id: int
    workflow_id: str


class MessageOut(BaseModel):
    id: int
    role: str
    content: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.temporal = await Client.connect(os.environ["TEMPORAL_ADDRESS"],
                                              namespace=os.environ.get("TEMPORAL_NAMESPACE", "default"))
    yield


app = FastAPI(title="chat", lifespan=lifespan)


def _store(body: ChatIn) -> int:
    with db.session() as session, session.begin():
        message = ChatMessage(conversation_id=body.conversation_id, role="user", content=body.content)
        session.add(message)
        session.flush()
        message.workflow_id = f"answer-{message.id}"
        return message.id


@app.post("/chat", status_code=202)
async def chat(body: ChatIn, request: Request) -> ChatAccepted:
    message_id = await asyncio.to_thread(_store, body)
    workflow_id = f"answer-{message_id}"
    await request.app.state.temporal.start_workflow(AnswerMessage.run, message_id, id=workflow_id, task_queue=TASK_QUEUE)
    return ChatAccepted(message_id=message_id, workflow_id=workflow_id)


def _history(conversation_id: str) -> list[MessageOut]:
    with db.session() as session:
        rows = session.scalars(select(ChatMessage).where(ChatMessage.conversation_id == conversation_id)
                               .order_by(ChatMessage.id))
        return [MessageOut(id=m.id, role=m.role, content=m.content) for m in rows]


@app.get("/chat/{conversation_id}")
async def history(conversation_id: str) -> list[MessageOut]:
    return await asyncio.to_thread(_history, conversation_id)

"""The model behind the assistant, behind one small class: the boundary the tests replace.

LLMClient speaks the chat-completions HTTP shape most model servers offer. Everything around it (the prompt,
the history, storing the answer) is the agent's code in chat/agent.py and runs in the tests as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx


class LLMError(RuntimeError):
    """The model did not answer (a timeout, an error status): the activity fails and Temporal retries it."""


@dataclass
class LLMClient:
    base_url: str
    api_key: str
    model: str
    timeout: float = 30.0

    @classmethod
    def from_env(cls) -> LLMClient:
        return cls(os.environ.get("LLM_BASE_URL", "http://127.0.0.1:11434/v1"), os.environ.get("LLM_API_KEY", ""),
                   os.environ.get("LLM_MODEL", "small-chat-model"))

    def complete(self, messages: list[dict[str, str]]) -> str:
        """The model's answer to ``messages`` (``[{"role": ..., "content": ...}]``)."""
        try:
            response = httpx.post(f"{self.base_url}/chat/completions", timeout=self.timeout,
                                  headers={"Authorization": f"Bearer {self.api_key}"} if self.api_key else {},
                                  json={"model": self.model, "messages": messages})
            response.raise_for_status()
            return str(response.json()["choices"][0]["message"]["content"])
        except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
            raise LLMError(f"the model at {self.base_url} did not answer: {exc}") from exc

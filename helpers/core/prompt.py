"""The prompt format every stage shares: the user turn that asks for a rewrite, and the
chat messages (system, user, and the answer when training).
"""
from __future__ import annotations


def rewrite_request(draft: str) -> str:
    """The user turn that asks for a rewrite (the same at training and inference)."""
    return f"Rewrite this text:\n\n{draft}"


def chat_messages(draft: str, system: str, answer: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": rewrite_request(draft)}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages

"""Text of chat messages: the one place that turns prompts and completions into strings.

TRL passes prompts and completions either as plain strings or as conversations, lists of
``{"role": ..., "content": ...}`` messages whose content may itself be a list of
``{"type": "text", "text": ...}`` parts. The verifier, the sample log, the evaluation and the
dataset loader all read them through these two functions.
"""

from __future__ import annotations

from typing import Any


def content_text(content: Any) -> str:
    """Text of one message's content: a string, or the text parts of a multimodal list."""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def message_text(value: Any, role: str | None = "user") -> str:
    """Readable text of a prompt or completion.

    A string is returned as is. For a conversation: the last ``role`` message ("user" for a
    prompt), or all ``role`` messages joined by newlines when ``role`` is "assistant" (a
    completion may come in several messages); ``role=None`` joins every message. A message
    without a role counts as ``role``. No matching message gives "". Never raises: a value
    whose ``str()`` fails reads as "" (the verifier must score such a completion as wrong).
    """
    try:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return str(value)
        texts = []
        for message in value:
            if isinstance(message, str):
                texts.append(message)
            elif isinstance(message, dict) and (role is None or message.get("role", role) == role):
                texts.append(content_text(message.get("content")))
        if role in (None, "assistant"):
            return "\n".join(texts)
        return texts[-1] if texts else ""
    except Exception:  # a hostile __str__ and the like
        return ""


def render_prompt(tokenizer, messages: Any) -> str:
    """The prompt exactly as the model sees it: the tokenizer's chat template with the generation
    prompt appended, or the message contents one per line for a tokenizer without a template."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return "\n".join(content_text(m.get("content")) for m in messages)

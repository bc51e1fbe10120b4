"""Secrets the console never shows: card tokens (the payments table's `token`, a request's `payment_token`).

Everything the console reads passes through `redact` before it is rendered: items, message bodies and
history events alike. JSON held in strings (a history event's input, a message body, an error's cause) is
parsed and redacted too, and a string that is JSON cut short still has the token's value masked.
"""

from __future__ import annotations

import json
import re
from typing import Any

HIDDEN = "(hidden)"
_SECRET_KEY = re.compile(r"(^|_)token$", re.IGNORECASE)  # token, payment_token, card_token; not nextToken
# "token": "value", at any level of escaping (JSON inside a JSON string): the value's characters are masked.
_SECRET_IN_TEXT = re.compile(r'((\\*)"(?:[A-Za-z]+_)?token\2"\s*:\s*\2")[^"\\]*', re.IGNORECASE)


def is_secret(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: HIDDEN if isinstance(k, str) and is_secret(k) else redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _redact_text(value)
    return value


def _redact_text(text: str) -> str:
    if "token" not in text.lower():
        return text
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return json.dumps(redact(json.loads(text)))
        except ValueError:
            pass  # JSON cut short (a truncated history event): mask by pattern below
    return _SECRET_IN_TEXT.sub(lambda m: m.group(1) + HIDDEN, text)

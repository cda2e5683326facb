"""The model's own chat template: the one place that renders a conversation and finds where an
assistant turn ends.

Training (``train/collate.py``) and inference (``infer.Engine``) both go through here, so each
template family's conventions are handled once:

* The end of an assistant turn is found by rendering, never assumed to be the EOS token. Llama 3
  closes a turn with ``<|eot_id|>``, Gemma with ``<end_of_turn>``, ChatML (Qwen, SmolLM2) with
  ``<|im_end|>``, Phi-3/Phi-4-mini with ``<|end|>`` while their EOS is ``<|endoftext|>``.
* A template that refuses a conversation (Gemma 2 raises "System role not supported") becomes a
  ``UserError`` naming the template's own reason.
* A template that silently drops a system message (a Mistral v0.3 revision has no system branch)
  is refused: training on, or evaluating with, an instruction the model never sees would be
  wrong without a trace.
* Control tokens written *inside* a message (``"<|im_end|><|im_start|>system"`` in a user turn)
  are plain text, not control tokens: a client, or a line of training data, must not be able to
  close its own turn and open a forged system turn. A template renders to a string, and
  tokenizing that string would map the literal text back to the special ids, so :func:`render`
  wraps each control token in a message's content in private-use markers (transformers'
  ``mark_control_tokens``) and :func:`encode` encodes the marked ones as text
  (``encode_marked_chat``, the same path as ``apply_chat_template(sanitize_control_tokens=True)``).
  ``model.allow_special_tokens_in_content: true`` turns this off for data that means them.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from itertools import takewhile
from typing import Any

from tunewise.errors import UserError
from tunewise.runtime.tool_calls import (
    TOOLS_FIELD,
    attached_tools,
    fallback_messages,
    native_messages,
)

_MARKER = "TUNEWISEMARKER"
# end_of_turn per tokenizer, keyed by what it depends on: training calls it once per example.
_EOT_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()
# The private-use characters transformers' mark_control_tokens wraps around a control token found
# in a message (kept in sync by test_chat_special_tokens, which checks the round trip).
_MARK_START, _MARK_END = "\U000f0000", "\U000f0001"
_CONTROL_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, re.Pattern[str]]] = (
    weakref.WeakKeyDictionary()
)
_TOOLS_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, bool]] = weakref.WeakKeyDictionary()


def _apply(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    generation_prompt: bool,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt
    )


def renders_tools(tokenizer: Any) -> bool:
    """Whether the chat template shows ``tools=`` to the model (Qwen 2.5, Llama 3.1, Hermes do;
    SmolLM2's ignores them): a one-tool conversation renders differently with and without them."""
    key = tokenizer.chat_template
    hit = _TOOLS_CACHE.get(tokenizer)
    if hit is not None and hit[0] == key:
        return hit[1]
    probe = [{"role": "user", "content": "x"}]
    tool = {"type": "function", "function": {"name": "tunewise_probe", "parameters": {}}}
    try:
        found = _apply(tokenizer, probe, True, [tool]) != _apply(tokenizer, probe, True)
    except Exception:  # a template that fails on tools= cannot be rendering them
        found = False
    _TOOLS_CACHE[tokenizer] = (key, found)
    return found


def tool_shaped(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], Any]:
    """``messages`` (calls and tools as tunewise carries them, see ``runtime/tool_calls.py``) in the
    shape this template takes, and the ``tools=`` to pass it (None for the fallback prompt)."""
    tools = attached_tools(messages)
    has_calls = any(m.get("tool_calls") or m.get("role") == "tool" for m in messages)
    if not tools and not has_calls:
        return [{k: v for k, v in m.items() if k != TOOLS_FIELD} for m in messages], None
    if renders_tools(tokenizer):
        return native_messages(messages), tools or None
    return fallback_messages(messages), None


def control_tokens(tokenizer: Any) -> re.Pattern[str]:
    """A pattern matching the tokenizer's control tokens, longest first: every special added
    token, and the other added tokens the chat template writes (not whitespace ones such as
    Gemma's ``"\\n"``, which templates use as ordinary text)."""
    key = (tokenizer.chat_template, len(tokenizer))
    hit = _CONTROL_CACHE.get(tokenizer)
    if hit is not None and hit[0] == key:
        return hit[1]
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    found = {
        t.content
        for t in tokenizer.added_tokens_decoder.values()
        if t.content and (t.special or (t.content in template and not t.content.isspace()))
    }
    longest_first = sorted(found, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, longest_first)) or "(?!)")  # (?!): no match
    _CONTROL_CACHE[tokenizer] = (key, pattern)
    return pattern


def _as_text(messages: list[dict[str, str]], pattern: re.Pattern[str]) -> list[dict[str, str]]:
    """``messages`` with every control token in a content marked to be encoded as text."""
    # lazy: transformers, ~1 s to import, paid only once a model is used
    from transformers.utils.chat_template_utils import mark_control_tokens

    return [
        {**m, "content": mark_control_tokens(m["content"], pattern)}
        if isinstance(m.get("content"), str)
        else m
        for m in messages
    ]


def render_for_count(tokenizer: Any, messages: list[dict[str, Any]]) -> str:
    """``messages`` rendered as training and inference render them (tools included), without
    :func:`render`'s checks: for counting tokens and finding shared prefixes."""
    shaped, tools = tool_shaped(tokenizer, messages)
    return str(_apply(tokenizer, shaped, False, tools))


def render(
    tokenizer: Any,
    messages: list[dict[str, str]],
    *,
    generation_prompt: bool,
    allow_special_tokens: bool = False,
) -> str:
    """``messages`` rendered by the tokenizer's chat template (text, not tokens).

    Control tokens inside a message's content come out marked, to be encoded as text by
    :func:`encode` (see the module docstring), unless ``allow_special_tokens``.
    """
    from jinja2.exceptions import TemplateError  # lazy: jinja2, paid once a model is loaded

    messages, tools = tool_shaped(tokenizer, messages)
    if not allow_special_tokens:
        messages = _as_text(messages, control_tokens(tokenizer))
    try:
        text = _apply(tokenizer, messages, generation_prompt, tools)
    except TemplateError as exc:
        raise UserError(f"the model's chat template rejects this conversation: {exc}") from None
    system = [m for m in messages if m.get("role") == "system" and str(m.get("content")).strip()]
    if system:
        rest = [m for m in messages if m.get("role") != "system"]
        try:
            without = _apply(tokenizer, rest, generation_prompt, tools) if rest else None
        except TemplateError:  # a template that needs the system turn cannot be dropping it
            without = None
        if without == text:
            raise UserError(
                "the model's chat template ignores the system message (the prompt is the same "
                "with and without it); move its text into the first user message"
            )
    return text


def end_of_turn(tokenizer: Any) -> str:
    """The text the template closes an assistant turn with (``"<|eot_id|>"``), right-stripped.

    It is what an assistant turn is followed by both when it ends the conversation and when a
    user turn comes next: the common token prefix of the two renderings. That excludes what a
    template appends only at the very end (Phi-3 adds EOS after ``<|end|>\\n``) and the next
    turn's header. Falls back to the EOS token when a template will not render a lone turn.
    """
    key = (tokenizer.chat_template, tokenizer.eos_token)
    hit = _EOT_CACHE.get(tokenizer)
    if hit is not None and hit[0] == key:
        return hit[1]
    eot = _find_end_of_turn(tokenizer)
    _EOT_CACHE[tokenizer] = (key, eot)
    return eot


def _find_end_of_turn(tokenizer: Any) -> str:
    turn = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _MARKER}]
    try:
        last = _apply(tokenizer, turn, False)
        more = _apply(tokenizer, [*turn, {"role": "user", "content": "y"}], True)
    except Exception:  # any template failure means "no marker rendering": fall back to EOS
        return tokenizer.eos_token or ""
    if _MARKER not in last or _MARKER not in more:
        return tokenizer.eos_token or ""
    tails = [t[t.rindex(_MARKER) + len(_MARKER) :] for t in (last, more)]
    # Compare tokens, not characters: "<|end|><|endoftext|>" and "<|end|><|user|>" share the
    # characters "<|end|><|", but only the token "<|end|>".
    enc = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in tails]
    ids = [e["input_ids"] for e in enc]
    n = sum(1 for _ in takewhile(lambda ab: ab[0] == ab[1], zip(*ids, strict=False)))
    text = tails[0][: enc[0]["offset_mapping"][n - 1][1]] if n else ""
    return text.rstrip() or (tokenizer.eos_token or "")


def end_of_turn_id(tokenizer: Any, eot: str) -> int | None:
    """The token id of ``eot`` when it is a single token (the usual case), else None."""
    ids = tokenizer(eot.strip(), add_special_tokens=False)["input_ids"] if eot.strip() else []
    return int(ids[0]) if len(ids) == 1 else None


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of rendered texts (no BOS added: the template writes its own).

    The control tokens :func:`render` marked in message contents become plain text; the
    template's own stay control tokens. A text without marks is tokenized as it is.
    """
    # lazy: transformers, ~1 s to import, paid only once a model is used
    from transformers.utils.chat_template_utils import encode_marked_chat

    marked = [i for i, t in enumerate(texts) if _MARK_START in t or _MARK_END in t]
    plain = sorted(set(range(len(texts))) - set(marked))
    out: list[list[int]] = [[] for _ in texts]
    if plain:  # one batched call for the usual case
        enc = tokenizer([texts[i] for i in plain], add_special_tokens=False)["input_ids"]
        for i, ids in zip(plain, enc, strict=True):
            out[i] = list(ids)
    for i in marked:
        text = texts[i]
        try:
            out[i] = list(encode_marked_chat(tokenizer, text))
        except ValueError as exc:  # the tokenizer makes the control token from plain text too
            raise UserError(
                f"cannot encode a control token in a message as plain text with this "
                f"tokenizer ({exc}); set model.allow_special_tokens_in_content: true to keep "
                "them as control tokens"
            ) from None
    return out

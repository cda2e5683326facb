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
"""

from __future__ import annotations

import weakref
from itertools import takewhile
from typing import Any

from tunewise.errors import UserError

_MARKER = "TUNEWISEMARKER"
# end_of_turn per tokenizer, keyed by what it depends on: training calls it once per example.
_EOT_CACHE: weakref.WeakKeyDictionary[Any, tuple[Any, str]] = weakref.WeakKeyDictionary()


def _apply(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )


def render(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> str:
    """``messages`` rendered by the tokenizer's chat template (text, not tokens)."""
    from jinja2.exceptions import TemplateError

    try:
        text = _apply(tokenizer, messages, generation_prompt)
    except TemplateError as exc:
        raise UserError(f"the model's chat template rejects this conversation: {exc}") from None
    system = [m for m in messages if m.get("role") == "system" and str(m.get("content")).strip()]
    if system:
        rest = [m for m in messages if m.get("role") != "system"]
        try:
            without = _apply(tokenizer, rest, generation_prompt) if rest else None
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

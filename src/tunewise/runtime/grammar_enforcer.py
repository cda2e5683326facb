"""lm-format-enforcer behind :mod:`tunewise.runtime.grammar`: the tool-call parser, the
tokenizer data it needs (cached per tokenizer) and the per-row state the decode loop asks.

Imported only when a constrained row starts: lm-format-enforcer imports torch.

Three things lm-format-enforcer 0.11 leaves to its caller, done here:

* Its transformers integration does not import under transformers 5 (it reads
  ``transformers.tokenization_utils``), so the tokenizer data is built here the same way: every
  token that is not a control token, as the text it adds after another token. Control tokens
  (``<|im_end|>``, SmolLM2's ``<repo_name>``...) are never part of a call: the decoder drops them
  from the answer, so a call spelled with one would not be the call the grammar saw.
* Its ``SequenceParser`` hides the JSON parser's "inside a free string" shortcut (every token
  without a quote is allowed), which makes a step inside a string walk the whole vocabulary
  (about 1 s for SmolLM2's 49k tokens). :class:`CallsParser` passes the shortcut through.
* Its number parser takes digits forever; a model that keeps writing digits never closes its
  call. A number stops taking digits after :data:`MAX_NUMBER_CHARS` characters.
* Inside a string it allows tokens holding a raw tab or other control character, which JSON
  forbids there (the library checks only newlines), and byte tokens that are a piece of a
  character, whose text and length it cannot know in advance (it then miscounts ``maxLength``
  and can lose track of the string): both are left out of strings. A character that the
  vocabulary spells only with several byte tokens (a rare CJK character, most emoji with
  SmolLM2) cannot be written inside a constrained string.
* Its string parser ignores a string's leading whitespace (not counted against ``maxLength``)
  and takes only the characters of the tokenizer's one-character tokens (any other, ``ę``,
  silently ends the string in the parser's view while the text goes on). Inside a free string
  (no ``enum``, ``const`` or ``pattern``) every character is passed on as a plain one.
* Its object parser accepts ``}`` right after a ``,`` (``{"a": 1,}``, not JSON): refused here.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Collection, Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from lmformatenforcer import (
    CharacterLevelParser,
    CharacterLevelParserConfig,
    JsonSchemaParser,
    TokenEnforcer,
    TokenEnforcerTokenizerData,
)
from lmformatenforcer.characterlevelparser import ForceStopParser, UnionParser
from lmformatenforcer.jsonschemaparser import (
    NumberParsingState,
    ObjectParsingStage,
    ObjectParsingState,
)
from lmformatenforcer.tokenizerprefixtree import JsonFreetextTokenCache

from tunewise.errors import UserError
from tunewise.runtime.tool_calls import CALL_CLOSE, CALL_OPEN


class ToolConstraint(Protocol):
    """What this module reads of a :class:`tunewise.runtime.grammar.ToolConstraint` (named here,
    not imported: that module imports this one)."""

    mode: str
    schema: str
    names: tuple[str, ...]
    max_calls: int


MAX_NUMBER_CHARS = 24  # beyond any JSON number a call means (2**64 has 20 digits)
_NUMBER_CHARS = frozenset("0123456789.eE+-")
_TAIL = 2 * len(CALL_OPEN)  # tokens that surely hold a freshly written <tool_call>


@dataclass
class TokenizerData:
    """What lm-format-enforcer needs of one tokenizer. ``end`` is an id past the vocabulary that
    the enforcer reports where the grammar may end; the row turns it into the real end-of-turn
    ids (which depend on the model, not only the tokenizer)."""

    lmfe: TokenEnforcerTokenizerData
    vocab: int
    end: int
    alphabet: str


_DATA: weakref.WeakKeyDictionary[Any, TokenizerData] = weakref.WeakKeyDictionary()
_DATA_LOCK = threading.Lock()  # two threads would both spend a second building the same data


def tokenizer_data(tokenizer: Any) -> TokenizerData:
    """The enforcer's data for ``tokenizer``, built once per tokenizer object (about a second)."""
    with _DATA_LOCK:
        hit = _DATA.get(tokenizer)
        if hit is not None and hit.vocab == len(tokenizer):
            return hit
        vocab = len(tokenizer)
        regular = _regular_tokens(tokenizer)
        lmfe = TokenEnforcerTokenizerData(regular, _Decoder(tokenizer), [vocab], False, vocab + 1)
        lmfe.tokenizer_tree.json_freetext_tokens = _string_tokens(regular, vocab + 1)
        alphabet = "".join(ch for ch in lmfe.tokenizer_alphabet if not _control(ch))
        data = TokenizerData(lmfe, vocab, vocab, alphabet)
        _DATA[tokenizer] = data
        return data


def _regular_tokens(tokenizer: Any) -> list[tuple[int, str, bool]]:
    """(id, text, starts a word) of every non-control token, as lm-format-enforcer's own
    transformers integration computes them: a token's text is what it adds after "0", so a
    word-initial space (SentencePiece's "▁") is kept."""
    control = set(tokenizer.all_special_ids) | {
        i for i, t in tokenizer.added_tokens_decoder.items() if t.special
    }
    ids = [i for i in range(len(tokenizer)) if i not in control]
    zero = tokenizer.encode("0", add_special_tokens=False)[-1]
    after_zero = tokenizer.batch_decode([[zero, i] for i in ids])
    alone = tokenizer.batch_decode([[i] for i in ids])
    return [
        (i, after[1:], len(after) - 1 > len(own))
        for i, after, own in zip(ids, after_zero, alone, strict=True)
    ]


def _control(text: str) -> bool:
    """Whether ``text`` holds a character JSON forbids raw inside a string (U+0000 to U+001F), or
    a piece of a character (a byte token decodes alone to U+FFFD): its length and its text
    depend on the tokens around it, which the parser cannot know when it lists tokens."""
    return any(ord(ch) < 0x20 or ch == "\ufffd" for ch in text)


def _string_tokens(regular: list[tuple[int, str, bool]], size: int) -> JsonFreetextTokenCache:
    """The tokens allowed inside a free JSON string, as the library lists them but without those
    holding a raw control character (a tab, a byte 0x19: ``json.loads`` refuses the string) or
    a piece of a character (see :func:`_control`)."""
    cache = JsonFreetextTokenCache(False, size)
    for i, text, _ in regular:
        if not _control(text):
            cache.add_token(text, i)
    cache.freeze()
    return cache


class _Stripped:
    """A decode function whose trailing partial UTF-8 character is left out, as the library
    expects of its decoder."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode

    def __call__(self, ids: list[int]) -> str:
        return self.decode(ids).rstrip("\ufffd")


class _Decoder:
    """Token ids to text for the enforcer; a trailing partial UTF-8 character is left out.

    Holds its tokenizer weakly: the data is cached under the tokenizer as a weak key, and a
    strong reference from the value would keep both alive forever."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = weakref.ref(tokenizer)

    def __call__(self, ids: list[int]) -> str:
        tokenizer = self.tokenizer()
        assert tokenizer is not None, "the tokenizer of this grammar data is gone"
        return str(tokenizer.decode(ids)).rstrip("\ufffd")


# --------------------------------------------------------------------------------------------
# the parser


class CallsParser(CharacterLevelParser):
    """``<tool_call>`` JSON ``</tool_call>`` blocks joined by ``"\\n"``, character by character.

    ``stage`` is ``"open"`` or ``"close"`` (``pending`` holds the rest of the tag), ``"json"``
    (``inner`` parses the call object) or ``"sep"`` (a block closed: a newline opens another
    while ``calls_left``, or the grammar may end). Immutable, as lm-format-enforcer requires.
    """

    def __init__(
        self,
        call: CharacterLevelParser,
        stage: str,
        *,
        pending: str = "",
        inner: CharacterLevelParser | None = None,
        calls_left: int = 0,
    ) -> None:
        super().__init__(call.config)
        self.call = call  # the JSON parser of a call object, before its first character
        self.stage = stage
        self.pending = pending
        self.inner = inner
        self.calls_left = calls_left

    def _to(self, stage: str, **kw: Any) -> CallsParser:
        kw.setdefault("calls_left", self.calls_left)
        return CallsParser(self.call, stage, **kw)

    def add_character(self, new_character: str) -> CharacterLevelParser:
        c = new_character
        if self.stage in ("open", "close"):
            if not self.pending.startswith(c):
                raise ValueError(f"expected {self.pending[:1]!r}, got {c!r}")
            rest = self.pending[len(c) :]
            if rest:
                return self._to(self.stage, pending=rest)
            return self._to("json", inner=self.call) if self.stage == "open" else self._to("sep")
        if self.stage == "json":
            assert self.inner is not None
            # Once the call object is closed only whitespace continues it, so "<" closes the
            # block; anything else is the JSON parser's to take (or refuse).
            if c == CALL_CLOSE[0] and self.inner.can_end():
                return self._to("close", pending=CALL_CLOSE[1:])
            if (c.isspace() or c not in self.call.config.alphabet) and _in_free_string(self.inner):
                c = "a"  # a plain stand-in: in a free string the parser only counts characters
            return self._to("json", inner=self.inner.add_character(c))
        if c == "\n" and self.calls_left > 0:
            return self._to("open", pending=CALL_OPEN, calls_left=self.calls_left - 1)
        raise ValueError(f"{c!r} after a closed call")

    def _json_characters(self) -> str:
        assert self.inner is not None
        allowed = self.inner.get_allowed_characters()
        states = list(_json_states(self.inner))
        if any(_number_is_long(p) for p in states):
            allowed = "".join(ch for ch in allowed if ch not in _NUMBER_CHARS)
        if any(_after_comma(p) for p in states):
            allowed = allowed.replace("}", "")
        return allowed

    def get_allowed_characters(self) -> str:
        if self.stage in ("open", "close"):
            return self.pending[:1]
        if self.stage == "json":
            assert self.inner is not None
            extra = CALL_CLOSE[0] if self.inner.can_end() else ""
            return self._json_characters() + extra
        return "\n" if self.calls_left > 0 else ""

    def can_end(self) -> bool:
        return self.stage == "sep"

    def shortcut_key(self) -> Hashable | None:
        # Inside a free JSON string the enforcer may take its cached "any token without a quote"
        # list; the call cannot close there, so the inner parser alone decides.
        if self.stage == "json" and self.inner is not None and not self.inner.can_end():
            return self.inner.shortcut_key()
        return None


def _in_free_string(parser: CharacterLevelParser) -> bool:
    key = parser.shortcut_key()
    return isinstance(key, tuple) and bool(key) and key[0] == "json_freetext"


def _json_states(parser: CharacterLevelParser) -> Iterator[JsonSchemaParser]:
    """The JSON parsers ``parser`` holds: itself, or each branch of a union (``anyOf`` over the
    tools splits the call object into one branch per tool)."""
    if isinstance(parser, JsonSchemaParser):
        yield parser
    elif isinstance(parser, UnionParser):
        for p in parser.parsers:
            yield from _json_states(p)


def _number_is_long(parser: JsonSchemaParser) -> bool:
    """Whether the parser is in a number that has taken its share of characters and may end
    there (then only what follows a number is allowed)."""
    top = parser.object_stack[-1] if parser.object_stack else None
    return (
        isinstance(top, NumberParsingState)
        and len(top.parsed_string) >= MAX_NUMBER_CHARS
        and top.can_end()
    )


def _after_comma(parser: JsonSchemaParser) -> bool:
    """Whether the parser is in an object right after a ``,``, where the library would accept
    ``}`` (a trailing comma, which is not JSON)."""
    top = parser.object_stack[-1] if parser.object_stack else None
    return (
        isinstance(top, ObjectParsingState)
        and top.current_stage == ObjectParsingStage.PARSING_KEY_OR_END
        and parser.last_non_whitespace_character == ","
    )


def calls_parser(constraint: ToolConstraint, data: TokenizerData, *, at_json: bool) -> CallsParser:
    """The grammar's first state: before ``<tool_call>`` or, ``at_json``, right after it."""
    config = CharacterLevelParserConfig(alphabet=data.alphabet)
    try:
        call = JsonSchemaParser(_loads(constraint.schema), config)
    except Exception as exc:  # pydantic's or the library's own: a schema it cannot read
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"tools ({', '.join(constraint.names)}): a parameters schema cannot be used for "
            f"constrained decoding: {first}"
        ) from None
    left = constraint.max_calls - 1
    if at_json:
        return CallsParser(call, "json", inner=call, calls_left=left)
    return CallsParser(call, "open", pending=CALL_OPEN, calls_left=left)


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    assert isinstance(value, dict)
    return value


# --------------------------------------------------------------------------------------------
# the per-row state


class ToolCallRow:
    """One row's constraint for the decode loop: :meth:`allowed` is the mask of the next token.

    ``required``/``named`` rows are constrained from their first token; an ``auto`` row is not
    (``allowed`` returns None, and the loop does nothing for it) until the text it generated
    contains ``<tool_call>``; then the grammar starts at the call's JSON, fed whatever the
    same token wrote after the tag.
    """

    def __init__(
        self,
        constraint: ToolConstraint,
        data: TokenizerData,
        eos_ids: Collection[int],
        decode: Callable[[list[int]], str] | None = None,
    ) -> None:
        self.constraint = constraint
        self.data = data
        # The caller's decode (an engine's holds its tokenizer lock) when given.
        self.decode: Callable[[list[int]], str] = (
            data.lmfe.decoder if decode is None else _Stripped(decode)
        )
        self.eos = np.array(sorted({int(e) for e in eos_ids if 0 <= int(e) < data.vocab}), np.int64)
        self.enforcer: TokenEnforcer | None = None
        self.offset = 0  # tokens generated before the grammar started
        if constraint.mode != "auto":
            self._enforce(calls_parser(constraint, data, at_json=False))
        else:
            calls_parser(constraint, data, at_json=True)  # a bad schema fails now, not mid-answer

    def allowed(self, gen: list[int]) -> torch.Tensor | None:
        """Which tokens may follow ``gen`` (the tokens generated so far): a bool tensor over the
        tokenizer's vocabulary, or None where the row is free."""
        if self.enforcer is None and not self._started(gen):
            return None
        assert self.enforcer is not None
        tokens = self.enforcer.get_allowed_tokens(gen[self.offset :]).allowed_tokens
        # numpy, not torch: torch runs a 49k-element fill on its thread pool, whose wake-up
        # costs more than the fill itself on a busy CPU.
        mask = np.zeros(self.data.vocab + 1, dtype=bool)
        mask[np.fromiter(tokens, dtype=np.int64, count=len(tokens))] = True
        may_end = bool(mask[self.data.end])
        mask = mask[: self.data.vocab]
        # An end-of-turn token that is also ordinary text must not end a call half-way.
        mask[self.eos] = may_end
        if not mask.any():  # a dead end: end the turn rather than pick a random token
            mask[self.eos] = True
        return torch.from_numpy(mask)

    def _started(self, gen: list[int]) -> bool:
        """In auto mode: whether ``gen`` has just opened a call (and then start the grammar)."""
        if not gen or CALL_OPEN not in self.decode(gen[-_TAIL:]):
            return False
        text = self.decode(gen)
        after = text[text.index(CALL_OPEN) + len(CALL_OPEN) :]
        parser: CharacterLevelParser = calls_parser(self.constraint, self.data, at_json=True)
        try:
            for ch in after:
                parser = parser.add_character(ch)
        except Exception:  # the same token already broke the call: only the end is left
            parser = ForceStopParser()
        self._enforce(parser)
        self.offset = len(gen)
        return True

    def _enforce(self, parser: CharacterLevelParser) -> None:
        self.enforcer = TokenEnforcer(self.data.lmfe, parser)
        self.enforcer.decoder = self.decode  # the library reads it from here on


def start_row(
    constraint: ToolConstraint,
    tokenizer: Any,
    eos_ids: Collection[int],
    decode: Callable[[list[int]], str] | None = None,
) -> ToolCallRow:
    """A fresh :class:`ToolCallRow` of ``constraint`` for ``tokenizer``."""
    return ToolCallRow(constraint, tokenizer_data(tokenizer), eos_ids, decode)

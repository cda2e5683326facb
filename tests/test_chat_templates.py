"""Chat-template conformance on the real published templates of the major families.

Each family's template (tests/fixtures/chat_templates/, sources in SOURCES.md) is put on a tiny
model whose tokenizer is SmolLM2's BPE plus that family's special tokens, BOS/EOS and pad, as
the family's tokenizer_config.json sets them. For every family:

* the training labels decode to exactly the assistant contents (in the template's own rendering)
  plus the family's end-of-turn token, for multi-turn examples and for train_on=last;
* the training prompt equals ``apply_chat_template(add_generation_prompt=True)`` token for token;
* the Engine stops on the family's end-of-turn token even where EOS is another token;
* a system message is kept, folded in by the template's own convention (Gemma 3), or refused
  with a clear error (Gemma 2 raises, a Mistral v0.3 revision drops it) - never silently lost.

The merges are SmolLM2's, not each family's: what is tested is tunewise's handling of the
templates and special tokens, not each family's own BPE.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tunewise.data.schema import Example
from tunewise.errors import DataError, UserError
from tunewise.runtime import chat, models
from tunewise.runtime.engine import Engine, GenRequest
from tunewise.train.collate import IGNORE_INDEX, encode, encode_all

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"

LLAMA3 = ("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
LLAMA3_MORE = ("<|eom_id|>", "<|python_tag|>")
MISTRAL = ("<unk>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]", "[/AVAILABLE_TOOLS]")
MISTRAL_MORE = ("[TOOL_RESULTS]", "[/TOOL_RESULTS]")
PHI = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


@dataclass(frozen=True)
class Family:
    """A template and the tokenizer settings its model ships with (tokenizer_config.json)."""

    template: str
    eot: str  # the token that closes an assistant turn
    eos: str
    bos: str | None
    specials: tuple[str, ...] = ()
    pad: str | None = None
    plain: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>)
    answer: str = "{content}{eot}"  # an assistant turn as the template renders it, after the cue
    system: str = "kept"  # "kept" | "folded" (into the first user turn) | "rejected" | "dropped"
    rewrites_history: bool = False  # renders past turns differently once a turn is appended


FAMILIES: dict[str, Family] = {
    "llama3_1": Family("llama3_1", "<|eot_id|>", "<|eot_id|>", "<|begin_of_text|>", LLAMA3),
    # Meta-Llama-3-8B-Instruct first shipped with EOS <|end_of_text|>, so a generate() that only
    # knew EOS never stopped; the template's end of turn must stop it anyway.
    "llama3_1-eos-end_of_text": Family(
        "llama3_1", "<|eot_id|>", "<|end_of_text|>", "<|begin_of_text|>", LLAMA3 + LLAMA3_MORE
    ),
    "llama3_2": Family("llama3_2", "<|eot_id|>", "<|eot_id|>", "<|begin_of_text|>", LLAMA3),
    "qwen2_5": Family("qwen2_5", "<|im_end|>", "<|im_end|>", None, pad="<|endoftext|>"),
    "qwen3": Family(
        "qwen3",
        "<|im_end|>",
        "<|im_end|>",
        None,
        pad="<|endoftext|>",
        plain=("<think>", "</think>"),
        # a final turn without reasoning is rendered with an empty think block
        answer="<think>\n\n</think>\n\n{content}{eot}",
        rewrites_history=True,
    ),
    "mistral_v0_3": Family(
        "mistral_v0_3",
        "</s>",
        "</s>",
        "<s>",
        MISTRAL + MISTRAL_MORE,
        answer=" {content} {eot}",
        system="dropped",
    ),
    "gemma2": Family(
        "gemma2",
        "<end_of_turn>",
        "<eos>",
        "<bos>",
        ("<start_of_turn>", "<end_of_turn>"),
        pad="<pad>",
        system="rejected",
    ),
    "gemma3": Family(
        "gemma3",
        "<end_of_turn>",
        "<eos>",
        "<bos>",
        ("<start_of_turn>", "<end_of_turn>", "<start_of_image>"),
        pad="<pad>",
        system="folded",
    ),
    "phi3": Family("phi3", "<|end|>", "<|endoftext|>", "<s>", PHI),
    "phi3_5": Family("phi3_5", "<|end|>", "<|endoftext|>", "<s>", PHI),
    "phi4_mini": Family(
        "phi4_mini", "<|end|>", "<|endoftext|>", "<|endoftext|>", (*PHI, "<|tool|>", "<|/tool|>")
    ),
    "smollm2": Family("smollm2", "<|im_end|>", "<|im_end|>", "<|im_start|>"),
}

# With train_on=all each piece is tokenized on its own, so every turn starts exactly where
# inference starts; the history before a later turn is then the same text, but a BPE that merges
# across a cue/answer boundary tokenizes it differently from the whole string. SmolLM2's merges do
# that on Llama 3's "<|end_header_id|>\n\n" cue (one token of difference); train_on=last is exact.
HISTORY_RETOKENIZED = {"llama3_1", "llama3_1-eos-end_of_text", "llama3_2"}

SYSTEM = "You triage support tickets."
TURNS = [
    {"role": "user", "content": "My card was charged twice."},
    {"role": "assistant", "content": "Category: billing"},
    {"role": "user", "content": "How urgent is it?"},
    {"role": "assistant", "content": "Priority: high\nWe will refund you today."},
]
ANSWERS = [TURNS[1]["content"], TURNS[3]["content"]]
REPLY, AFTER_EOT = "Hello", " banana"  # what the scripted model says, and what it says next


def _with_system(fam: Family) -> bool:
    return fam.system in ("kept", "folded")


def _conversation(fam: Family) -> list[dict[str, str]]:
    head = [{"role": "system", "content": SYSTEM}] if _with_system(fam) else []
    return [*head, *TURNS]


def _single_id(tok, text: str) -> int:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 1, f"{text!r} is not one token: {ids}"
    return ids[0]


def _build(fam: Family, base: Path, out: Path) -> Path:
    """Save a tiny 'scripted' Llama with the family's tokenizer to ``out``.

    Attention and MLP outputs are zeroed, so the last hidden state is the (normalised) embedding
    of the last input token and the LM head is a bigram table: the generation prompt's last
    token -> REPLY -> end-of-turn -> AFTER_EOT forever. An Engine that does not stop on the
    end-of-turn token therefore prints AFTER_EOT.
    """
    import torch
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(base)
    named = [fam.bos, fam.eos, fam.pad]
    specials = list(dict.fromkeys([*fam.specials, fam.eot, *[t for t in named if t]]))
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in specials], True)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.plain])
    tok.bos_token, tok.eos_token = fam.bos, fam.eos
    tok.pad_token = fam.pad or fam.eos
    tok.chat_template = (FIXTURES / f"{fam.template}.jinja").read_text()

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,  # the checkpoint's EOS only, as its config ships it
        pad_token_id=None,  # a padding_idx would zero the pad (= EOS) embedding the script uses
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    prompt = tok.apply_chat_template(
        [TURNS[0]], add_generation_prompt=True, tokenize=True, return_dict=True
    )["input_ids"]
    reply, eot, after = (_single_id(tok, t) for t in (REPLY, fam.eot, AFTER_EOT))
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.model.embed_tokens.weight
        head = model.lm_head.weight
        head.zero_()
        for prev, nxt in [(prompt[-1], reply), (reply, eot), (eot, after), (after, after)]:
            head[nxt] += 10 * emb[prev] / emb[prev].norm()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def family_dirs(real_model, tmp_path_factory):
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            out = tmp_path_factory.mktemp(f"chat-{name}")
            built[name] = _build(FAMILIES[name], real_model.path, out)
        return built[name]

    return get


def _tokenizer(family_dirs, name: str):
    return models.load_tokenizer(models.resolve(str(family_dirs(name))))


def _label_runs(enc) -> list[list[int]]:
    runs, cur = [], []
    for t in [*enc.labels, IGNORE_INDEX]:
        if t != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    return runs


def _inference_ids(tok, messages: list[dict[str, str]]) -> list[int]:
    out = tok.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True
    )
    return list(out["input_ids"])


def test_every_fixture_is_tested():
    assert {f.template for f in FAMILIES.values()} == {p.stem for p in FIXTURES.glob("*.jinja")}


def test_every_fixture_is_listed_with_its_checksum():
    # SOURCES.md names where each template was copied from; the checksum ties that to the file.
    sources = (FIXTURES / "SOURCES.md").read_text()
    for path in sorted(FIXTURES.glob("*.jinja")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{digest}  {path.name}" in sources, path.name


@pytest.mark.parametrize("name", FAMILIES)
def test_end_of_turn_is_found_by_rendering(family_dirs, name):
    tok = _tokenizer(family_dirs, name)
    fam = FAMILIES[name]
    assert chat.end_of_turn(tok).strip() == fam.eot
    assert chat.end_of_turn_id(tok, chat.end_of_turn(tok)) == tok.convert_tokens_to_ids(fam.eot)


@pytest.mark.parametrize("train_on", ["all", "last"])
@pytest.mark.parametrize("name", FAMILIES)
def test_labels_are_the_answers_plus_end_of_turn(family_dirs, name, train_on):
    fam = FAMILIES[name]
    tok = _tokenizer(family_dirs, name)
    example = Example(_conversation(fam))
    if train_on == "all" and fam.rewrites_history:
        # Qwen3 renders a past turn without the think block it trained the turn with: no single
        # sequence holds every turn exactly as inference shows it, so tunewise refuses.
        with pytest.raises(UserError, match="train_on=last"):
            encode(tok, example, train_on="all")
        return
    enc = encode(tok, example, train_on=train_on)
    expected = [fam.answer.format(content=a, eot=fam.eot) for a in ANSWERS]
    if train_on == "last":
        expected = expected[-1:]
    runs = _label_runs(enc)
    assert [tok.decode(r) for r in runs] == expected
    eot_id = tok.convert_tokens_to_ids(fam.eot)
    assert all(r[-1] == eot_id for r in runs)  # the model learns to emit the end of turn
    assert all(lab in (IGNORE_INDEX, i) for i, lab in zip(enc.input_ids, enc.labels, strict=True))
    if fam.eos != fam.eot:  # EOS is not trained where the template never emits it mid-chat
        assert tok.eos_token_id not in [t for r in runs for t in r]


@pytest.mark.parametrize("turns", [2, 4], ids=["single-turn", "multi-turn"])
@pytest.mark.parametrize("name", FAMILIES)
def test_training_prompt_equals_the_inference_prompt(family_dirs, name, turns):
    fam = FAMILIES[name]
    tok = _tokenizer(family_dirs, name)
    messages = _conversation(fam)[: len(_conversation(fam)) - len(TURNS) + turns]
    enc = encode(tok, Example(messages), train_on="last")
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert enc.input_ids[:first_label] == _inference_ids(tok, messages[:-1])
    if fam.rewrites_history:
        return
    # train_on=all: every trained turn starts right where inference would start generating
    enc = encode(tok, Example(messages), train_on="all")
    starts = [
        i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX and enc.labels[i - 1] == -100
    ]
    cues = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    assert len(starts) == len(cues)
    for start, k in zip(starts, cues, strict=True):
        rendered = chat.render(tok, messages[:k], generation_prompt=True)
        assert tok.decode(enc.input_ids[:start]) == rendered
    assert enc.input_ids[: starts[0]] == _inference_ids(tok, messages[: cues[0]])
    if name not in HISTORY_RETOKENIZED:
        assert enc.input_ids[: starts[-1]] == _inference_ids(tok, messages[: cues[-1]])


@pytest.mark.parametrize("name", FAMILIES)
def test_engine_stops_on_the_end_of_turn_token(family_dirs, name):
    fam = FAMILIES[name]
    engine = Engine(models.resolve(str(family_dirs(name))), batch_size=2)
    eot_id = engine.tokenizer.convert_tokens_to_ids(fam.eot)
    assert eot_id in engine.eos_ids
    req = GenRequest(messages=[TURNS[0]], max_new_tokens=6)
    batched = engine.generate([req, req])
    streamed = "".join(engine.stream(req))
    for res in batched:
        assert (res.text, res.finish_reason) == (REPLY, "stop")
        assert res.completion_tokens == 2  # the reply and the end-of-turn token, nothing after
    assert streamed == REPLY


def test_the_scripted_model_does_run_on_without_the_end_of_turn_stop(family_dirs):
    # The check above can fail: with only the checkpoint's EOS as a stop, the model goes on.
    engine = Engine(models.resolve(str(family_dirs("gemma2"))), batch_size=1)
    engine.eos_ids = frozenset({engine.tokenizer.eos_token_id})
    [res] = engine.generate([GenRequest(messages=[TURNS[0]], max_new_tokens=4)])
    assert res.finish_reason == "length" and res.text.startswith(REPLY + AFTER_EOT)


@pytest.mark.parametrize("name", [n for n, f in FAMILIES.items() if f.system == "kept"])
def test_a_system_prompt_reaches_training_and_inference(family_dirs, name):
    tok = _tokenizer(family_dirs, name)
    messages = [{"role": "system", "content": SYSTEM}, *TURNS[:2]]
    enc = encode(tok, Example(messages), train_on="last")
    first_label = next(i for i, t in enumerate(enc.labels) if t != IGNORE_INDEX)
    assert SYSTEM in tok.decode(enc.input_ids[:first_label])
    assert SYSTEM in chat.render(tok, messages[:-1], generation_prompt=True)


def test_gemma3_folds_the_system_prompt_into_the_first_user_turn(family_dirs):
    tok = _tokenizer(family_dirs, "gemma3")
    messages = [{"role": "system", "content": SYSTEM}, *TURNS]
    enc = encode(tok, Example(messages), train_on="all")
    text = tok.decode(enc.input_ids)
    assert text.startswith(f"<bos><start_of_turn>user\n{SYSTEM}\n\n{TURNS[0]['content']}")
    assert text.count(SYSTEM) == 1  # once, in the first user turn: not repeated per turn


def test_gemma2_rejects_a_system_prompt_with_a_clear_error(family_dirs):
    tok = _tokenizer(family_dirs, "gemma2")
    bad = Example([{"role": "system", "content": SYSTEM}, *TURNS], line=7, source="train.jsonl")
    with pytest.raises(DataError) as err:
        encode_all(tok, [bad], max_len=512)
    assert str(err.value) == (
        "train.jsonl:7: messages: the model's chat template rejects this conversation: "
        "System role not supported"
    )
    engine = Engine(models.resolve(str(family_dirs("gemma2"))), batch_size=1)
    with pytest.raises(UserError, match="System role not supported"):
        engine.generate([GenRequest(messages=bad.messages[:2], max_new_tokens=2)])


def test_a_template_that_drops_the_system_prompt_is_refused(family_dirs):
    # This Mistral v0.3 revision has no system branch: the instruction would vanish unseen.
    tok = _tokenizer(family_dirs, "mistral_v0_3")
    messages = [{"role": "system", "content": SYSTEM}, *TURNS]
    assert SYSTEM not in tok.apply_chat_template(messages, tokenize=False)
    for train_on in ("all", "last"):
        with pytest.raises(UserError, match="ignores the system message"):
            encode(tok, Example(messages), train_on=train_on)
    engine = Engine(models.resolve(str(family_dirs("mistral_v0_3"))), batch_size=1)
    with pytest.raises(UserError, match="ignores the system message"):
        engine.render(messages[:2])
    # without a system message it trains and serves normally
    assert engine.render(TURNS[:1]) == f"<s> [INST] {TURNS[0]['content']} [/INST]"


def test_an_empty_system_message_is_not_a_dropped_instruction(family_dirs):
    # Phi-3.5 skips an empty system turn on purpose; nothing is lost, so nothing is refused.
    tok = _tokenizer(family_dirs, "phi3_5")
    messages = [{"role": "system", "content": ""}, *TURNS[:2]]
    enc = encode(tok, Example(messages), train_on="last")
    assert [tok.decode(r) for r in _label_runs(enc)] == [f"{ANSWERS[0]}<|end|>"]


def test_same_template_with_a_different_eos_changes_nothing_but_eos(family_dirs):
    # The label span and the stop come from the template, so the Llama 3.1 template trains the
    # same sequence whichever EOS the checkpoint declares.
    a = _tokenizer(family_dirs, "llama3_1")
    b = _tokenizer(family_dirs, "llama3_1-eos-end_of_text")
    ex = Example(_conversation(FAMILIES["llama3_1"]))
    ea, eb = encode(a, ex), encode(b, ex)
    assert [a.decode(r) for r in _label_runs(ea)] == [b.decode(r) for r in _label_runs(eb)]
    assert (a.eos_token, b.eos_token) == ("<|eot_id|>", "<|end_of_text|>")


@pytest.mark.parametrize("name", ["gemma2", "phi3", "llama3_1-eos-end_of_text"])
def test_training_time_samples_stop_on_the_end_of_turn_token(family_dirs, name):
    # The overfitting detector scores greedy samples for repetition; text generated past the
    # end of turn (the EOS comes later, or never, for these families) would be scored too.
    from transformers import AutoModelForCausalLM

    from tunewise.train.callbacks import generate_greedy

    path = family_dirs(name)
    tok = _tokenizer(family_dirs, name)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert generate_greedy(model, tok, [[TURNS[0]], [TURNS[0]]], max_new_tokens=5) == [REPLY] * 2

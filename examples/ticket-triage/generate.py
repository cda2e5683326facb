"""Generate the ticket-triage demo data: ``data/tickets.jsonl`` and ``docs/*.md``.

Deterministic (fixed seed, standard library only): running it again reproduces the committed
files byte for byte. Usage::

    python examples/ticket-triage/generate.py            # rewrite the committed files
    python examples/ticket-triage/generate.py --out DIR  # write DIR/data/... and DIR/docs/...

Each ticket is composed from independent parts: a situation (``scenarios.py``, which fixes the
true category and priority) phrased one of several ways with its slots filled (products, order
numbers, amounts, dates, devices, ...), optional subject line, opener, context, details, tone,
closing and signature, then noise (typos, lower case, text-speak). Some tickets carry a second,
less urgent issue, and some are escalated to high by a legal threat or a third contact, as the
help-centre article "When to escalate a ticket" prescribes. Exact duplicates are impossible and
near-duplicates (Jaccard of words and word pairs >= 0.5) are rejected while generating.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.dont_write_bytecode = True  # no __pycache__ beside the committed files

import scenarios as sc  # noqa: E402
from articles import ARTICLES  # noqa: E402

SEED = 20260611
N_PER_CATEGORY = 117  # 6 categories -> 702 tickets
NEAR_DUP_JACCARD = 0.5  # well under the checker's 0.7: its MinHash estimate is noisy

# Realistic skew: most tickets are medium or low; feature requests are nearly always low.
PRIORITY_MIX: dict[str, dict[str, int]] = {
    "billing": {"high": 30, "medium": 45, "low": 42},
    "account": {"high": 26, "medium": 51, "low": 40},
    "bug": {"high": 35, "medium": 59, "low": 23},
    "feature_request": {"high": 0, "medium": 14, "low": 103},
    "shipping": {"high": 12, "medium": 64, "low": 41},
    "refund": {"high": 14, "medium": 65, "low": 38},
}
RANK = {"low": 0, "medium": 1, "high": 2}
# Share of high tickets that come from an escalated
# medium situation rather than a natively high one.
ESCALATED_SHARE = {"billing": 0.15, "account": 0.15, "bug": 0.1, "shipping": 0.5, "refund": 0.5}

SYSTEM_PROMPT = (
    "Triage the Hearthly support ticket.\n"
    "Categories:\n"
    "billing: subscription charges, invoices, payments\n"
    "account: login, password, 2FA, profile, data deletion\n"
    "bug: app, website or device not working\n"
    "feature_request: ideas for new features\n"
    "shipping: delivery, tracking, lost or damaged parcels\n"
    "refund: returns and refunds of store orders\n"
    "Priorities:\n"
    "high: outage, security or safety risk, wrong charge, legal threat\n"
    "medium: a problem for one customer\n"
    "low: questions, feedback, ideas\n"
    "Reply exactly:\n"
    "Category: <category>\n"
    "Priority: <priority>"
)

OPENERS = [
    "Hi,",
    "Hello,",
    "Hi there,",
    "Hey",
    "Dear Hearthly support,",
    "Good morning,",
    "To whom it may concern,",
    "hi team",
    "Hello Hearthly team,",
    "Hiya,",
    "Dear Sir/Madam,",
    "Hey guys,",
    "Good afternoon,",
    "Hi support,",
    "Hello there",
    "Evening,",
]
CONTEXT = [
    "I've been a Hearthly customer since {year}.",
    "I'm on the {plan} plan.",
    "We have {n} cameras, a doorbell and the thermostat.",
    "I use the app on my {os}.",
    "Not sure if this is the right place for this.",
    "My partner set the system up, so bear with me.",
    "I run a small {biz_kind}.",
    "I bought everything from your website.",
    "First time contacting support.",
    "I'm writing on behalf of my mum, who's the account holder.",
    "I already searched the help centre.",
    "Long-time user, first ticket.",
    "I'm not very technical.",
    "Writing from my work email.",
]
ANGRY = [
    "This is ridiculous.",
    "Honestly I'm so frustrated.",
    "Worst experience I've had with a company in years.",
    "I'm really disappointed, I expected better.",
    "What exactly am I paying for?",
    "Sort it out.",
    "Not impressed.",
    "I've wasted an hour on this already.",
    "Your chatbot was useless.",
    "Why is this so hard??",
    "Unbelievable.",
]
POLITE = [
    "Thanks so much in advance!",
    "I really appreciate your help.",
    "Hope you're having a good day!",
    "Sorry if this has been asked before.",
    "No worries if it takes a while.",
    "Love the product otherwise!",
    "Thank you for your time.",
    "Many thanks.",
]
PUSHY = [
    "URGENT!!",
    "Please reply ASAP.",
    "I need an answer today.",
    "Marking this as high priority.",
    "Please treat this as urgent!!!",
    "Need this sorted immediately.",
    "Please respond quickly.",
]
SECOND_CONTACT = [
    "I emailed about this last week but haven't heard back.",
    "Second time asking.",
    "I asked in the chat yesterday, no answer yet.",
]
ESCALATE_REPEAT = [
    "This is the third time I'm contacting you about this and nobody has fixed it.",
    "I've written three times already and only got automated replies.",
    "Third email about this. Still nothing.",
    "I've called twice and emailed before (ticket {ticket}), still unresolved.",
    "This is my 4th message on this issue.",
]
ESCALATE_LEGAL = [
    "If this isn't resolved by Friday I'll file a chargeback with my bank.",
    "I'm going to report you to consumer protection.",
    "My lawyer will be in touch if this isn't fixed.",
    "I will dispute the payment with my credit card company.",
    "I've already contacted trading standards.",
    "Next step is small claims court.",
]
SECONDARY_INTROS = [
    "Also, ",
    "Unrelated, but ",
    "P.S. ",
    "One more thing: ",
    "While I'm here: ",
    "Oh and ",
    "Also ",
]
CLOSINGS = [
    "Thanks,",
    "Thank you.",
    "Regards,",
    "Best,",
    "Cheers",
    "Kind regards,",
    "Looking forward to hearing from you.",
    "Thx",
    "Please advise.",
    "Thanks!",
    "Best regards,",
    "Many thanks,",
    "ty",
]
MISSPELL = {
    "receive": "recieve",
    "received": "recieved",
    "definitely": "definately",
    "separate": "seperate",
    "account": "acount",
    "address": "adress",
    "password": "pasword",
    "subscription": "subscripton",
    "because": "becuase",
    "notifications": "notifcations",
    "camera": "camra",
    "tomorrow": "tommorow",
    "which": "wich",
    "until": "untill",
    "their": "thier",
    "please": "pls",
    "thanks": "thx",
    "charged": "chargd",
    "refund": "refund",
    "cancelled": "canceled",
    "already": "allready",
    "weird": "wierd",
    "business": "buisness",
    "doesn't": "doesnt",
    "can't": "cant",
    "won't": "wont",
    "I'm": "im",
    "it's": "its",
    "don't": "dont",
    "you": "u",
    "thermostat": "thermastat",
}


# Interchangeable phrasings, swapped at random so that a situation's few core sentences do not
# reappear word for word (a bag-of-n-grams model should not win by memorising templates).
PARAPHRASES: list[tuple[str, list[str]]] = [
    ("isn't working", ["doesn't work", "is not working", "has stopped working", "won't work"]),
    ("doesn't work", ["isn't working", "is broken", "does not work"]),
    ("keeps going", ["goes", "keeps dropping", "continually goes"]),
    ("keeps", ["continues to", "still keeps", "constantly"]),
    ("I'd like to", ["I want to", "I would like to", "I need to", "I wish to"]),
    ("Can you", ["Could you", "Would you be able to", "Can someone"]),
    ("Could you", ["Can you", "Could you kindly", "Would you be able to"]),
    ("How do I", ["How can I", "What's the way to", "How would I"]),
    ("How long", ["How much time", "How many days"]),
    ("cameras", ["cams", "cameras", "security cameras"]),
    ("camera", ["cam", "camera", "security camera"]),
    ("the app", ["the Hearthly app", "your app", "the mobile app"]),
    ("the refund", ["my money", "the refund", "the money back"]),
    ("hasn't", ["has not", "still hasn't"]),
    ("I can't", ["I cannot", "I'm unable to", "I can not"]),
    ("can't", ["cannot", "can not"]),
    ("never", ["still never", "never"]),
    ("anymore", ["any more", "these days", "since last week"]),
    ("every time", ["each time", "whenever", "every single time"]),
    ("I think", ["I believe", "Pretty sure", "I suspect"]),
    ("please", ["pls", "kindly", "please"]),
    ("Please", ["Kindly", "Could you please", "Pls"]),
    ("It would be great if", ["It would be nice if", "It'd be awesome if", "I'd love it if"]),
    ("Is there", ["Is there any", "Do you have"]),
    ("my order", ["my purchase", "my order"]),
    ("the order", ["the purchase", "my order"]),
    ("arrived", ["came", "turned up", "was delivered"]),
    ("stopped working", ["died", "quit working", "stopped working"]),
    ("charged", ["billed", "charged"]),
    ("a charge", ["a payment", "a transaction"]),
    ("again", ["once more", "again"]),
    ("weeks ago", ["weeks back", "a while ago"]),
    ("yesterday", ["yesterday", "the day before"]),
    ("I've tried", ["I tried", "I have tried", "Already tried"]),
    ("I already", ["I've already", "I have already"]),
    ("is getting", ["is becoming", "keeps getting"]),
    ("help", ["help", "assistance"]),
    ("problem", ["issue", "problem"]),
    ("issue", ["problem", "issue"]),
]
_PARA_RE = [
    (re.compile(r"(?<![\w'])" + re.escape(a) + r"(?![\w'])"), alts) for a, alts in PARAPHRASES
]


def paraphrase(text: str, rng: random.Random, rate: float = 0.45) -> str:
    for rx, alts in _PARA_RE:
        if rx.search(text) and rng.random() < rate:
            text = rx.sub(lambda _m, alts=alts: rng.choice(alts), text, count=1)
    return text


def fill_slot(key: str, rng: random.Random) -> str:
    """A value for ``{key}`` in a template."""
    simple: dict[str, list[str]] = {
        "product": sc.PRODUCTS,
        "product2": sc.PRODUCTS,
        "device": sc.DEVICES,
        "feature": sc.FEATURES,
        "plan": sc.PLANS,
        "amount": sc.AMOUNTS,
        "hw_amount": sc.HW_AMOUNTS,
        "date": sc.DATES,
        "carrier": sc.CARRIERS,
        "region": sc.REGIONS,
        "country": sc.COUNTRIES,
        "city": sc.CITIES,
        "os": sc.OSES,
        "version": sc.VERSIONS,
        "code": sc.CODES,
        "room": sc.ROOMS,
        "screen": sc.SCREENS,
        "language": sc.LANGUAGES,
        "occasion": sc.OCCASIONS,
        "biz": sc.BIZ,
        "biz_kind": sc.BIZ_KINDS,
        "street": sc.STREETS,
        "promo": sc.PROMOS,
    }
    if key in simple:
        return rng.choice(simple[key])
    if key == "order":
        return rng.choice(["HL-{}", "#{}0", "HL{}", "HL-{}"]).format(rng.randrange(10**5, 10**6))
    if key == "invoice":
        return f"INV-{rng.randrange(2023, 2027)}-{rng.randrange(1000, 99999):05d}"
    if key == "ticket":
        return f"#{rng.randrange(40000, 99999)}"
    if key == "last4":
        return f"{rng.randrange(0, 10000):04d}"
    if key == "email":
        first, last = rng.choice(sc.FIRST_NAMES).lower(), rng.choice(sc.LAST_NAMES).lower()
        last = re.sub(r"[^a-z]", "", last)
        user = rng.choice(
            [f"{first}.{last}", f"{first}{rng.randrange(1, 99)}", f"{first[0]}{last}"]
        )
        return f"{user}@{rng.choice(['example.com', 'example.org', 'example.net'])}"
    if key == "year":
        return str(rng.randrange(2019, 2026))
    if key == "n":
        return str(rng.choice([2, 3, 4, 5, 6, 8, 12]))
    if key == "days":
        return str(rng.randrange(3, 25))
    if key == "temp":
        return str(rng.randrange(26, 34))
    if key == "temp_out":
        return rng.choice(["-8C", "minus 12", "2 degrees", "-3°C", "14F"])
    if key == "time":
        return rng.choice(["6am", "midnight", "about 3pm", "this morning", "last night", "10:40"])
    if key == "meters":
        return str(rng.randrange(2, 12))
    if key == "mbps":
        return str(rng.choice([3, 8, 12, 25, 50, 100]))
    raise KeyError(key)


class Slots(dict):
    """Fills ``{key}`` lazily and keeps the value for the rest of the ticket (one order number
    each)."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        value = fill_slot(key, self.rng)
        self[key] = value
        return value


def render(template: str, slots: Slots) -> str:
    text = template.format_map(slots)
    if "{" in text:  # a filled value may itself be a template (features naming a {language})
        text = text.format_map(slots)
    return text


def add_typos(text: str, rng: random.Random, rate: float, sloppy: bool) -> str:
    """Human noise: known misspellings, letter swaps, drops and doubles; never inside numbers."""

    def one(match: re.Match[str]) -> str:
        word = match.group(0)
        low = word.lower()
        if (
            low in MISSPELL
            and (sloppy or low not in {"you", "please", "thanks"})
            and rng.random() < rate * 6
        ):
            repl = MISSPELL[low]
            return (
                repl.capitalize()
                if word[0].isupper() and repl[0].islower() and low != "i'm"
                else repl
            )
        if len(word) < 4 or any(c.isdigit() for c in word) or rng.random() >= rate:
            return word
        i = rng.randrange(1, len(word) - 1)
        op = rng.randrange(3)
        if op == 0:
            return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
        if op == 1:
            return word[:i] + word[i + 1 :]
        return word[:i] + word[i] + word[i:]

    return re.sub(r"[A-Za-z][A-Za-z']*", one, text)


def lower_first(text: str) -> str:
    first = text.split(" ", 1)[0]
    if first in {"I", "I'm", "I've", "I'd"} or first.startswith(
        ("Hearth", "HL", "#", "URGENT", "Android", "SMS")
    ):
        return text
    return text[0].lower() + text[1:]


def signature(rng: random.Random, slots: Slots) -> str:
    name = f"{rng.choice(sc.FIRST_NAMES)} {rng.choice(sc.LAST_NAMES)}"
    return (
        rng.choice(
            [
                name,
                name.split()[0],
                f"{name}\n{rng.choice(['Office Manager', 'Owner', 'IT', 'Facilities'])}, "
                f"{slots['biz']}",
                "Sent from my iPhone",
                f"-- {name.split()[0]}",
                f"{name[0]}.",
            ]
        )
        if rng.random() < 0.93
        else f"{name}\n{rng.choice(['+1 555 01', '+44 7700 900'])}{rng.randrange(100, 999)}"
    )


def compose(
    scn: sc.Scenario,
    rng: random.Random,
    *,
    priority: str,
    escalate: str | None,
    secondary: sc.Scenario | None,
) -> tuple[str, list[str]]:
    """One ticket's user text for ``scn``; ``escalate`` is None, 'repeat' or 'legal'."""
    slots = Slots(rng)
    tags: list[str] = []
    style = rng.choices(["terse", "normal", "verbose"], weights=[28, 50, 22])[0]
    if secondary is not None and style == "terse":
        style = "normal"
    tone = rng.choices(
        ["neutral", "polite", "angry", "pushy"],
        weights={"high": [45, 15, 28, 12], "medium": [52, 20, 20, 8], "low": [62, 24, 8, 6]}[
            priority
        ],
    )[0]
    core = paraphrase(render(rng.choice(scn.core), slots), rng)
    body: list[str] = []

    if style == "terse":
        body.append(core)
        if escalate is not None:
            body.append(
                render(
                    rng.choice(ESCALATE_REPEAT if escalate == "repeat" else ESCALATE_LEGAL), slots
                )
            )
        if tone == "pushy" and rng.random() < 0.6:
            body.append(rng.choice(PUSHY))
        text = " ".join(body)
        if rng.random() < 0.45:
            text = text.lower()
        if rng.random() < 0.5:
            text = text.rstrip(".")
        return add_typos(text, rng, rate=rng.choice([0.0, 0.02, 0.05]), sloppy=True), [
            *tags,
            "terse",
        ]

    if style == "verbose" or rng.random() < 0.25:
        body.append(render(rng.choice(CONTEXT), slots))
    body.append(core)
    n_details = {"normal": rng.choice([0, 0, 1]), "verbose": rng.choice([1, 2])}[style]
    for detail in rng.sample(scn.details, min(n_details, len(scn.details))):
        # a detail restating a value the ticket already gave
        # ("Order HL-1 ... Order HL-1.") reads as a bot
        if not any(key in slots for key in re.findall(r"{(\w+)}", detail)):
            body.append(paraphrase(render(detail, slots), rng))
    if escalate is not None:
        body.append(
            render(rng.choice(ESCALATE_REPEAT if escalate == "repeat" else ESCALATE_LEGAL), slots)
        )
    elif rng.random() < 0.05:
        body.append(rng.choice(SECOND_CONTACT))  # a second contact is not an escalation (third is)
    if tone == "angry":
        body.insert(rng.randrange(len(body) + 1), rng.choice(ANGRY))
    elif tone == "pushy":
        body.insert(rng.choice([0, len(body)]), rng.choice(PUSHY))
    if secondary is not None:
        sec = paraphrase(render(rng.choice(secondary.core), slots), rng)
        intro = rng.choice(SECONDARY_INTROS)
        if RANK[secondary.priority] < RANK[priority] and rng.random() < 0.35:
            # the less urgent issue first: the reader must
            # weigh them (equal urgency: first one wins)
            at = body.index(core)
            lead = rng.choice(
                [
                    "But the real problem: ",
                    "More importantly, ",
                    "Anyway, ",
                    "Main thing though: ",
                    "",
                ]
            )
            body = [*body[:at], sec, lead + lower_first(core) if lead else core, *body[at + 1 :]]
        else:
            body.append(intro + lower_first(sec))
        tags.append("multi_issue")
    if tone == "polite":
        body.append(rng.choice(POLITE))

    body = [b if b[-1] in ".?!:" or i == len(body) - 1 else b + "." for i, b in enumerate(body)]
    paragraphs: list[str] = []
    if style == "verbose" and len(body) > 3:
        cut = rng.randrange(1, len(body) - 1)
        paragraphs = [" ".join(body[:cut]), " ".join(body[cut:])]
    else:
        paragraphs = [" ".join(body)]
    parts: list[str] = []
    # a subject may only name what the body already says (no "Do you ship to Mexico?" over Norway)
    subjects = [t for t in scn.subjects if all(k in slots for k in re.findall(r"{(\w+)}", t))]
    if rng.random() < 0.2 and subjects:
        subject = render(rng.choice(subjects), slots)
        if escalate == "repeat":
            subject = "Re: Re: " + subject
        parts.append(f"Subject: {subject}")
    if rng.random() < (0.85 if style == "verbose" else 0.5):
        parts.append(rng.choice(OPENERS))
    parts.extend(paragraphs)
    if rng.random() < 0.55:
        closing = rng.choice(CLOSINGS)
        sign = signature(rng, slots) if rng.random() < 0.7 else ""
        parts.append(f"{closing}\n{sign}".strip())
    elif rng.random() < 0.3:
        parts.append(signature(rng, slots))
    sep = rng.choice(["\n\n", "\n", "\n\n"])
    text = sep.join(parts)
    sloppy = rng.random() < 0.2
    if sloppy:
        text = text.lower()
        tags.append("sloppy")
    rate = rng.choice([0.0, 0.0, 0.01, 0.03]) if not sloppy else rng.choice([0.03, 0.06])
    return add_typos(text, rng, rate=rate, sloppy=sloppy), [*tags, style]


def shingles(text: str) -> set[str]:
    """Words and word pairs, the measure `tunewise data check` uses for near-duplicates."""
    words = re.findall(r"\w+", text.lower())
    return {*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def pick_scenario(rng: random.Random, pool: list[sc.Scenario]) -> sc.Scenario:
    # Weight by phrasing count so a situation with two
    # phrasings is not drawn as often as one with six.
    return rng.choices(pool, weights=[len(s.core) for s in pool])[0]


def generate_tickets(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    by_label: dict[tuple[str, str], list[sc.Scenario]] = {}
    for s in sc.SCENARIOS:
        by_label.setdefault((s.category, s.priority), []).append(s)

    plan = [
        (cat, prio)
        for cat, mix in PRIORITY_MIX.items()
        for prio, k in mix.items()
        for _ in range(k)
    ]
    rng.shuffle(plan)
    accepted: list[tuple[str, set[str]]] = []
    seen: set[str] = set()
    rows: list[dict] = []
    for cat, prio in plan:
        for _attempt in range(200):
            escalate: str | None = None
            pool = by_label.get((cat, prio), [])
            if prio == "high" and (not pool or rng.random() < ESCALATED_SHARE.get(cat, 0.0)):
                pool = [s for s in by_label[(cat, "medium")] if s.escalable]
                escalate = rng.choice(["repeat", "legal"])
            scn = pick_scenario(rng, pool)
            secondary = None
            if rng.random() < 0.12:
                lower = [
                    s
                    for s in sc.SCENARIOS
                    if s.category != cat
                    and (RANK[s.priority] < RANK[prio] or prio == s.priority == "low")
                ]
                secondary = pick_scenario(rng, lower)
            text, tags = compose(scn, rng, priority=prio, escalate=escalate, secondary=secondary)
            key = " ".join(text.split()).lower()
            if key in seen:
                continue
            sh = shingles(text)
            if any(jaccard(sh, other) >= NEAR_DUP_JACCARD for _, other in accepted):
                continue
            break
        else:
            raise RuntimeError(f"could not compose a distinct ticket for {cat}/{prio}")
        seen.add(key)
        accepted.append((text, sh))
        if escalate:
            tags.append(f"escalated_{escalate}")
        rows.append(
            {
                "id": f"tkt-{len(rows) + 1:04d}",
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": f"Category: {cat}\nPriority: {prio}"},
                ],
                "situation": scn.key,
                "tags": tags,
            }
        )
    return rows


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_all(out: Path, seed: int = SEED) -> dict[str, int]:
    rows = generate_tickets(seed)
    _atomic_write(
        out / "data" / "tickets.jsonl",
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
    )
    for slug, (title, body) in ARTICLES.items():
        text = f"# {title}\n\n{body.strip()}\n"
        words = len(text.split())
        if not 80 <= words <= 250:
            raise ValueError(f"article {slug}: {words} words, expected 80-250")
        _atomic_write(out / "docs" / f"{slug}.md", text)
    return {"tickets": len(rows), "docs": len(ARTICLES)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=HERE, help="folder to write data/ and docs/ into"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    counts = write_all(args.out, args.seed)
    rows = [
        json.loads(line) for line in (args.out / "data" / "tickets.jsonl").read_text().splitlines()
    ]
    labels = Counter(
        tuple(r["messages"][-1]["content"].replace("Category: ", "").split("\nPriority: "))
        for r in rows
    )
    print(f"wrote {counts['tickets']} tickets and {counts['docs']} articles under {args.out}")
    for (cat, prio), k in sorted(labels.items()):
        print(f"  {cat:16s} {prio:7s} {k}")


if __name__ == "__main__":
    main()

"""Near-duplicate clusters with MinHash + LSH, in near-linear time.

Texts are normalised (lower case, word characters only) and shingled into words and word pairs.
MinHash signatures of all texts are computed at once with numpy (blocks of 8k shingles instead of
one Python call per text), and split into LSH bands with the (bands, rows) that
datasketch's :class:`~datasketch.MinHashLSH` chooses for the threshold; texts sharing a band
bucket are candidates. Each candidate pair is confirmed by the signatures' Jaccard estimate, and
confirmed pairs are merged with union-find, so a cluster is every text reachable through
near-duplicate links. 100k texts take a few seconds.

Everything is seeded and uses ``zlib.crc32`` (not Python's salted ``hash``), so the clusters, and
the splits built on them, are identical from run to run.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Sequence

import numpy as np

from tunewise.runtime.tool_calls import CALL_OPEN, parse_reply

NUM_PERM = 64
THRESHOLD = 0.7
_WORD = re.compile(r"\w+")
# Shingles per numpy block: (8192, 64) uint64 is 4 MB and stays in cache; 200k-row blocks were
# 2.5x slower (memory-bound).
_CHUNK = 8192


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (uint64 in, uint64 out)."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


# Structured inputs: attribute lists share their keys, and a data set of records reuses few
# values, so over words two different records look alike. For them each fact is one token (see
# :func:`structured_facts`).
_TRIPLE = re.compile(r"^([^|]+)\|([^|]+)\|(.+)$")  # subject | relation | object (DART, WebNLG)
_KEY_VALUE = re.compile(r"^([\w .'/-]{1,40})[:=]\s*(\S.*)$")  # key: value, one per line
_BRACKETED = re.compile(r"([\w ]+)\[([^\]]*)\]")  # key[value], ... (E2E's meaning representations)


def _fact(key: str, value: str) -> str:
    return "_".join(_WORD.findall(f"{key} {value}".lower()))


def structured_facts(text: str) -> str | None:
    """The facts of an attribute-list input as one token each (``food_english``), None for prose.

    An input is an attribute list when every non-empty line is a ``subject | relation | object``
    triple, or it has two or more lines and each is ``key: value``, or it is ``key[value]`` pairs
    and nothing else. Records are then compared fact by fact: two records that share 4 of their 6
    facts have a Jaccard of 0.5 and are no near-duplicates, one that differs in one fact of 6 (0.71)
    is, and so is the same record written twice.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    triples = [_TRIPLE.match(line) for line in lines]
    if all(triples):
        subjects = dict.fromkeys(_fact("subject", m.group(1)) for m in triples if m)
        facts = [_fact(m.group(2), m.group(3)) for m in triples if m]
        return " ".join([*subjects, *facts])
    pairs = [_KEY_VALUE.match(line) for line in lines]
    if len(lines) > 1 and all(pairs):
        return " ".join(_fact(m.group(1), m.group(2)) for m in pairs if m)
    flat = " ".join(lines)
    bracketed = _BRACKETED.findall(flat)
    if len(bracketed) > 1 and not _BRACKETED.sub("", flat).strip(" ,;"):
        return " ".join(_fact(key, value) for key, value in bracketed)
    return None


def call_facts(text: str) -> str | None:
    """A text holding function calls (``<tool_call>`` blocks, as a call turn's content is
    written) as its words and then its calls, None when it holds none.

    Each call is one token for the function (``call_get_weather``) and one per argument
    (``city_paris``), in key order, so two turns calling the same function with the same arguments
    are equal whatever the order of keys, and the JSON punctuation the blocks repeat
    (``name``, ``arguments``, ``tool_call``) does not make every call turn look alike.
    """
    if CALL_OPEN not in text:
        return None
    reply = parse_reply(text)
    if not reply.calls:
        return None
    tokens = _WORD.findall(reply.content.lower())
    for call in reply.calls:
        tokens.append(_fact("call", call.name))
        for key in sorted(call.arguments):
            value = call.arguments[key]
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            tokens.append(_fact(key, shown) or "_")
    return " ".join(t for t in tokens if t)


def normalize(text: str) -> str:
    """Lower case words joined by one space: punctuation, case and spacing do not count; an
    attribute list is its facts, one token each (:func:`structured_facts`); a text with function
    calls is its words and its calls (:func:`call_facts`)."""
    facts = call_facts(text)
    if facts is None:
        facts = structured_facts(text)
    return facts if facts is not None else " ".join(_WORD.findall(text.lower()))


def _shingle_hashes(norms: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every word and every adjacent word pair, flat, with per-text offsets.

    Words and word pairs: pairs keep word order, single words keep one edited word from counting
    twice (a substitution breaks two pairs but only one word). Each distinct word is hashed once
    (crc32, stable across runs); pairs are mixed in numpy, so no per-pair Python work.
    """
    # One C-level split of all texts at once; an empty text counts as one empty word.
    lens = np.fromiter((norm.count(" ") + 1 for norm in norms), dtype=np.int64, count=len(norms))
    all_words = " ".join(norms).split(" ")
    vocab = {w: zlib.crc32(w.encode()) for w in set(all_words)}
    words_h = np.fromiter(map(vocab.__getitem__, all_words), dtype=np.uint64, count=len(all_words))
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    # Pair hash for each word followed by another word of the same text.
    pair_h = _mix64((words_h[:-1] << np.uint64(32)) | words_h[1:]) >> np.uint64(32)
    last = (starts + lens - 1)[:-1]  # a text's last word pairs with the next text's first: drop
    keep = np.ones(len(pair_h), dtype=bool)
    keep[last[last < len(pair_h)]] = False
    text_of_pair = np.repeat(np.arange(len(norms)), lens)[:-1][keep]
    text_of_word = np.repeat(np.arange(len(norms)), lens)
    owner = np.concatenate([text_of_word, text_of_pair])
    flat = np.concatenate([words_h, pair_h[keep]])
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=len(norms))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return flat[order], offsets


def signatures(norms: Sequence[str], *, num_perm: int = NUM_PERM, seed: int = 1) -> np.ndarray:
    """MinHash signatures of normalised texts, shape ``(len(norms), num_perm)``, dtype uint64.

    Permutations are multiply-add-shift hashes ``(a*x + b) >> 32`` with random odd 64-bit ``a``
    (a universal family; no modulo, so numpy computes a whole block per call).
    """
    rs = np.random.RandomState(seed)
    a = rs.randint(0, 2**63 - 1, size=num_perm, dtype=np.int64).astype(np.uint64) * np.uint64(
        2
    ) + np.uint64(1)
    b = rs.randint(0, 2**63 - 1, size=num_perm, dtype=np.int64).astype(np.uint64)
    flat, offsets = _shingle_hashes(norms)
    n = len(norms)
    sig = np.empty((n, num_perm), dtype=np.uint64)
    bounds = np.append(offsets, len(flat))
    s0 = 0
    buf = np.empty((_CHUNK, num_perm), dtype=np.uint64)
    while s0 < n:
        # As many texts as fit in one block (at least one).
        s1 = int(np.searchsorted(bounds, bounds[s0] + _CHUNK, side="right")) - 1
        s1 = min(max(s1, s0 + 1), n)
        lo, hi = bounds[s0], bounds[s1]
        if hi - lo > len(buf):  # one text longer than a block
            buf = np.empty((hi - lo, num_perm), dtype=np.uint64)
        hashed = buf[: hi - lo]  # (shingles in block, num_perm), computed in place
        np.multiply(flat[lo:hi, None], a, out=hashed)
        hashed += b
        hashed >>= np.uint64(32)
        sig[s0:s1] = np.minimum.reduceat(hashed, offsets[s0:s1] - lo, axis=0)
        s0 = s1
    return sig


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:  # path compression
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            # the smaller index becomes the root, so a cluster's id is its first member
            lo, hi = (ri, rj) if ri < rj else (rj, ri)
            self.parent[hi] = lo


def near_duplicate_clusters(
    texts: Sequence[str],
    *,
    threshold: float = THRESHOLD,
    num_perm: int = NUM_PERM,
    normalized: bool = False,
) -> list[int]:
    """Cluster id for each text: the index of the cluster's first text (itself when unique).

    Texts equal after :func:`normalize` are always together; others join when their estimated
    Jaccard similarity over words and word pairs is at least ``threshold``. ``normalized``: the
    texts already went through :func:`normalize`.
    """
    n = len(texts)
    uf = _UnionFind(n)
    first: dict[str, int] = {}
    uniq: list[int] = []  # index of the first text of each distinct normalised text
    norms = list(texts) if normalized else [normalize(t) for t in texts]
    for i, norm in enumerate(norms):
        j = first.setdefault(norm, i)
        if j == i:
            uniq.append(i)
        else:
            uf.union(j, i)
    if len(uniq) < 2:
        return [uf.find(i) for i in range(n)]

    sig = signatures([norms[i] for i in uniq], num_perm=num_perm)
    left, right = _candidate_pairs(sig, threshold)
    if len(left):
        sim = (sig[left] == sig[right]).mean(axis=1)  # Jaccard estimates, (pairs,)
        for k1, k2 in zip(
            left[sim >= threshold].tolist(), right[sim >= threshold].tolist(), strict=True
        ):
            uf.union(uniq[k1], uniq[k2])
    return [uf.find(i) for i in range(n)]


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) that datasketch's MinHashLSH picks for this threshold."""
    from datasketch import MinHashLSH  # lazy: datasketch pulls scipy, ~0.5 s to import

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _candidate_pairs(sig: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs that share at least one LSH band bucket.

    The banding is datasketch's (its b and r for this threshold), done for all rows at once:
    each band of r values is hashed to one uint64, rows are sorted by it, and equal neighbours
    share a bucket. Per-row ``MinHashLSH.insert``/``query`` does the same thing one Python call
    at a time, which costs most of a minute at 100k texts; this takes a second.
    A bucket of k rows gives all k*(k-1)/2 pairs up to 64 rows, and a chain (each row with its
    predecessor and with the first) above that, so a degenerate bucket cannot go quadratic.
    """
    bands, rows = lsh_params(threshold, sig.shape[1])
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    for band in range(bands):
        key = np.zeros(len(sig), dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            key = _mix64(key ^ sig[:, col])
        order = np.argsort(key, kind="stable")
        sk = key[order]
        starts = np.flatnonzero(np.r_[True, sk[1:] != sk[:-1]])
        sizes = np.diff(np.r_[starts, len(sk)])
        for st, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist(), strict=True):
            members = order[st : st + size]
            if size <= 64:
                i, j = np.triu_indices(size, k=1)
                left.append(members[i])
                right.append(members[j])
            else:
                left.append(np.r_[members[:-1], np.repeat(members[0], size - 2)])
                right.append(np.r_[members[1:], members[2:]])
    if not left:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    pairs = np.unique(np.stack([np.concatenate(left), np.concatenate(right)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]

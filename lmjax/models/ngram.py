"""An order-N n-gram language model with interpolated modified Kneser-Ney smoothing
(Chen & Goodman 1998, "An Empirical Study of Smoothing Techniques for Language Modeling", sec. 3.5),
in plain numpy: no JAX, no Python dicts of tuples, no Python loop over tokens.

Model. Tokens are ids in [0, V). For n = 1..N, with h the n-1 tokens before w and h' = h without its
oldest token,

    p_n(w | h) = max(c_n(h w) - D_n(c_n(h w)), 0) / c_n(h .)  +  gamma_n(h) p_{n-1}(w | h')
    gamma_n(h) = (D_n,1 N1(h .) + D_n,2 N2(h .) + D_n,3+ N3+(h .)) / c_n(h .)
    p_0(w)     = 1 / V

where c_n(h .) = sum_w c_n(h w) and Nk(h .) is the number of w with c_n(h w) = k (N3+: >= 3).
c_N is the raw count of the N-gram in the training tokens; for n < N, c_n(g) is the continuation
count N1+(. g), the number of distinct tokens v such that the (n+1)-gram (v g) occurs. D(0) = 0.
A context h with c_n(h .) = 0 (never seen at order n) backs off fully: p_n(w | h) = p_{n-1}(w | h').
The unigram level (n = 1, the empty context) interpolates with the uniform p_0 the same way, so every
token gets probability > 0 and each p_n(. | h) sums to 1 over [0, V).

Discounts. Per order, from that order's counts-of-counts n_k (the number of stored n-grams whose
c_n is exactly k, k = 1..4):

    Y = n1 / (n1 + 2 n2),   D1 = 1 - 2 Y n2/n1,   D2 = 2 - 3 Y n3/n2,   D3+ = 3 - 4 Y n4/n3

Fallback (small corpora): these are used only when n1, n2, n3 > 0 and 0 < D1 <= 1, 0 < D2 <= 2,
0 < D3+ <= 3. Otherwise the order uses one plain absolute discount (Ney, Essen & Kneser 1994) for all
counts, D1 = D2 = D3+ = D = n1 / (n1 + 2 n2) when n1 > 0, else D = 0.5. Either way every discount
lies in (0, its count], so max(c - D, 0) = c - D for every stored n-gram, and gamma_n(h) > 0 for every
seen context (which keeps unseen tokens at probability > 0). `kn_discounts` implements the rule.

Edges. Where fewer than N-1 tokens precede a position (the start of a sequence), the longest
available context is used: p(w_t | w_0..w_{t-1}) = p_{t+1}(w_t | w_0..w_{t-1}); positions before the
start do not exist (no padding, no begin-of-sequence token). The training array is one sequence: its
n-grams span whatever boundaries it contains. An n-gram that occurs only at the very start of the
training array has no left extension, so its continuation count is 0 and it is absent from the
lower-order tables (it still counts as a left extension of its own suffix).

Storage. An n-gram (t1, .., tn) is the int64 key ((t1 V + t2) V + ..) V + tn, so sorted keys group
each context (key // V, empty context = 0) into a contiguous run. Per order n (prefix "o{n}_"):

    keys            int64 [G]   sorted unique n-gram keys
    counts          int32/64 [G]  c_n of each (raw at n = N, continuation below)
    ctx_keys        int64 [H]   sorted unique contexts (keys // V)
    ctx_total       int64 [H]   c_n(h .)
    ctx_n1, ctx_n2, ctx_n3p  int32/64 [H]  N1(h .), N2(h .), N3+(h .)
    discounts       float64 [3] D1, D2, D3+
    count_of_counts int64 [4]   n1..n4 (for reference)

Keys need V**N < 2**63 (`key_space_error` says so in words; `count` raises ValueError with it).
Counting sorts the N-gram keys of the whole corpus once (one int64 per token, sorted in place); the
lower orders come from the distinct (n+1)-grams, so they cost a sort of the distinct keys only.
`logprobs` looks up all positions of one order at once with np.searchsorted. Log probabilities are
natural logs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

_PER_ORDER = ("keys", "counts", "ctx_keys", "ctx_total", "ctx_n1", "ctx_n2", "ctx_n3p", "discounts",
              "count_of_counts")


def key_space_error(order: int, vocab_size: int) -> str | None:
    """A one-line message when `order` n-grams over `vocab_size` ids do not fit an int64 key, else None."""
    if order < 1:
        return f"n-gram order must be >= 1, got {order}"
    if vocab_size < 1:
        return f"n-gram vocab_size must be >= 1, got {vocab_size}"
    if vocab_size ** order >= 2 ** 63:
        largest = 1
        while vocab_size ** (largest + 1) < 2 ** 63:
            largest += 1
        return (f"an order-{order} n-gram model over a vocabulary of {vocab_size} needs "
                f"vocab_size**order = {vocab_size}**{order} < 2**63 to key n-grams as int64; "
                f"use order <= {largest} or a smaller vocabulary")
    return None


def kn_discounts(n1: int, n2: int, n3: int, n4: int) -> tuple[np.ndarray, bool]:
    """(D1, D2, D3+) from counts-of-counts, and whether the modified-KN formulas were used.

    Falls back to one plain absolute discount D = n1/(n1+2 n2) (0.5 when n1 = 0) for all three when a
    formula is undefined (n1, n2 or n3 is 0) or a discount falls outside (0, its count]."""
    n1, n2, n3, n4 = (int(x) for x in (n1, n2, n3, n4))
    if n1 > 0 and n2 > 0 and n3 > 0:
        y = n1 / (n1 + 2 * n2)
        d = np.array([1 - 2 * y * n2 / n1, 2 - 3 * y * n3 / n2, 3 - 4 * y * n4 / n3])
        if np.all(d > 0) and np.all(d <= np.array([1.0, 2.0, 3.0])):
            return d, True
    plain = n1 / (n1 + 2 * n2) if n1 > 0 else 0.5
    return np.full(3, plain), False


def _check_tokens(tokens, vocab_size: int, what: str) -> np.ndarray:
    tokens = np.asarray(tokens)  # a memmap stays a memmap
    if tokens.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of token ids, got shape {tokens.shape}")
    if tokens.size == 0 and not np.issubdtype(tokens.dtype, np.integer):
        tokens = tokens.astype(np.int64)  # e.g. np.asarray([]) is float64
    if not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.size:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"{what} holds ids in [{lo}, {hi}], outside [0, {vocab_size}) "
                             f"for vocab_size={vocab_size}")
    if tokens.dtype == np.uint64:  # uint64 op int64 promotes to float64; ids are < V < 2**63
        tokens = tokens.astype(np.int64)
    return tokens


def _narrow(x: np.ndarray) -> np.ndarray:
    """Counts as int32 when they fit (they nearly always do), else int64."""
    return x.astype(np.int32) if (x.size == 0 or int(x.max()) < 2 ** 31) else x.astype(np.int64)


def _runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    if sorted_keys.size == 0:
        return np.zeros(0, np.int64)
    new = np.empty(sorted_keys.size, bool)
    new[0] = True
    np.not_equal(sorted_keys[1:], sorted_keys[:-1], out=new[1:])
    return np.flatnonzero(new)


def _unique_counts(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = _runs(sorted_keys)
    counts = np.diff(starts, append=sorted_keys.size)
    return sorted_keys[starts], counts


def _window_keys(tokens: np.ndarray, n: int, vocab_size: int) -> np.ndarray:
    """int64 keys of every length-n window of `tokens`, oldest token most significant."""
    m = tokens.size - n + 1
    if m <= 0:
        return np.zeros(0, np.int64)
    keys = tokens[:m].astype(np.int64)
    for j in range(1, n):
        keys *= vocab_size
        keys += tokens[j:j + m]
    return keys


def _level_arrays(n: int, keys: np.ndarray, counts: np.ndarray, vocab_size: int) -> dict:
    """The o{n}_* arrays of one order from its sorted unique keys and their counts."""
    ctx = keys // vocab_size
    starts = _runs(ctx)
    if keys.size:
        total = np.add.reduceat(counts, starts, dtype=np.int64)
        nk = [np.add.reduceat(m, starts, dtype=np.int64)
              for m in (counts == 1, counts == 2, counts >= 3)]
    else:
        total, nk = np.zeros(0, np.int64), [np.zeros(0, np.int64)] * 3
    coc = np.array([np.count_nonzero(counts == k) for k in (1, 2, 3, 4)], np.int64)
    discounts, _ = kn_discounts(*coc)
    p = f"o{n}_"
    return {
        p + "keys": keys.astype(np.int64, copy=False), p + "counts": _narrow(counts),
        p + "ctx_keys": ctx[starts], p + "ctx_total": total,
        p + "ctx_n1": _narrow(nk[0]), p + "ctx_n2": _narrow(nk[1]), p + "ctx_n3p": _narrow(nk[2]),
        p + "discounts": discounts, p + "count_of_counts": coc,
    }


def count(tokens: np.ndarray, *, order: int, vocab_size: int) -> NgramModel:
    """Count an order-`order` interpolated modified Kneser-Ney model from 1-D integer token ids.

    Raises ValueError for order < 1, vocab_size < 1, vocab_size**order >= 2**63, or ids outside
    [0, vocab_size). Works on a np.memmap without loading it beyond one int64 key per token."""
    message = key_space_error(order, vocab_size)
    if message:
        raise ValueError(message)
    tokens = _check_tokens(tokens, vocab_size, "tokens")
    V = vocab_size
    arrays: dict[str, np.ndarray] = {}
    distinct = None  # sorted distinct (n+1)-grams of the corpus, for order n's continuation counts
    for n in range(order, 0, -1):
        if n == order:
            keys = _window_keys(tokens, n, V)
            keys.sort()
        else:
            keys = distinct % (V ** n)  # each distinct (n+1)-gram is one left extension of its suffix
            keys.sort()
        ukeys, counts = _unique_counts(keys)
        del keys
        arrays.update(_level_arrays(n, ukeys, counts, V))
        if n > 1:
            distinct = ukeys  # every n-gram with a left extension, plus (below) the corpus's first one
            if n < order and tokens.size >= n:
                first = int(_window_keys(tokens[:n], n, V)[0])
                i = int(np.searchsorted(distinct, first))
                if i == distinct.size or distinct[i] != first:
                    distinct = np.insert(distinct, i, first)
    return NgramModel(order=order, vocab_size=vocab_size, tables=arrays)


@dataclasses.dataclass(eq=False)
class NgramModel:
    """A counted model: `order`, `vocab_size` and the flat dict of o{n}_* arrays (see module doc)."""

    order: int
    vocab_size: int
    tables: dict[str, np.ndarray] = dataclasses.field(repr=False)

    def __post_init__(self):
        message = key_space_error(self.order, self.vocab_size)
        if message:
            raise ValueError(message)
        missing = [f"o{n}_{name}" for n in range(1, self.order + 1) for name in _PER_ORDER
                   if f"o{n}_{name}" not in self.tables]
        if missing:
            raise ValueError(f"n-gram arrays for order {self.order} lack {', '.join(missing)}")
        self.tables = {name: np.asarray(a) for name, a in self.tables.items()}

    def arrays(self) -> dict[str, np.ndarray]:
        """A flat dict of plain numpy arrays ("o3_keys", ...) that `from_arrays` rebuilds the model from."""
        return dict(self.tables)

    @classmethod
    def from_arrays(cls, order: int, vocab_size: int, arrays) -> NgramModel:
        return cls(order=int(order), vocab_size=int(vocab_size), tables=dict(arrays))

    @property
    def num_ngrams(self) -> int:
        """Stored n-grams summed over all orders."""
        return sum(int(self.tables[f"o{n}_keys"].size) for n in range(1, self.order + 1))

    def _level(self, n: int):
        t, p = self.tables, f"o{n}_"
        return (t[p + "keys"], t[p + "counts"], t[p + "ctx_keys"], t[p + "ctx_total"],
                t[p + "ctx_n1"], t[p + "ctx_n2"], t[p + "ctx_n3p"], t[p + "discounts"])

    def logprobs(self, tokens: np.ndarray) -> np.ndarray:
        """float64 [len(tokens)-1]: ln p(tokens[t] | tokens[max(0, t-N+1):t]) for t = 1..len-1."""
        V = self.vocab_size
        tokens = _check_tokens(tokens, V, "tokens")
        L = tokens.size
        if L < 2:
            return np.zeros(0, np.float64)
        w = tokens[1:].astype(np.int64)  # position i predicts w[i] = tokens[i+1]
        p = np.full(L - 1, 1.0 / V)
        ctx = np.zeros(L - 1, np.int64)  # key of the n-1 tokens before w[i], for i >= n-2
        for n in range(1, self.order + 1):
            first = max(n - 2, 0)  # positions with at least n-1 tokens before them
            if first >= L - 1:
                break
            if n >= 2:
                ctx[first:] += tokens[:L - n + 1].astype(np.int64) * V ** (n - 2)
            keys, counts, ctx_keys, total, n1, n2, n3, disc = self._level(n)
            if ctx_keys.size == 0:
                continue
            h = ctx[first:]
            ci = np.minimum(np.searchsorted(ctx_keys, h), ctx_keys.size - 1)
            seen = ctx_keys[ci] == h
            hw = h * V + w[first:]
            ki = np.minimum(np.searchsorted(keys, hw), keys.size - 1)
            c = np.where(keys[ki] == hw, counts[ki], 0).astype(np.int64)
            d = np.concatenate([[0.0], disc])[np.minimum(c, 3)]
            tot = total[ci].astype(np.float64)
            gamma = (disc[0] * n1[ci] + disc[1] * n2[ci] + disc[2] * n3[ci]) / tot
            pn = np.maximum(c - d, 0.0) / tot + gamma * p[first:]
            p[first:] = np.where(seen, pn, p[first:])
        return np.log(p)

    def distribution(self, context: np.ndarray) -> np.ndarray:
        """float64 [V]: p(. | the last N-1 tokens of `context`) (fewer if it is shorter); sums to 1."""
        V = self.vocab_size
        context = _check_tokens(context, V, "context")
        context = context[context.size - min(context.size, self.order - 1):].astype(np.int64)
        p = np.full(V, 1.0 / V)
        for n in range(1, context.size + 2):
            h = 0
            for tok in context[context.size - (n - 1):]:
                h = h * V + int(tok)
            keys, counts, ctx_keys, total, n1, n2, n3, disc = self._level(n)
            ci = int(np.searchsorted(ctx_keys, h))
            if ci == ctx_keys.size or ctx_keys[ci] != h:
                continue
            lo, hi = np.searchsorted(keys, [h * V, (h + 1) * V])
            c = counts[lo:hi].astype(np.int64)
            tot = float(total[ci])
            gamma = (disc[0] * n1[ci] + disc[1] * n2[ci] + disc[2] * n3[ci]) / tot
            p *= gamma
            p[keys[lo:hi] - h * V] += np.maximum(c - disc[np.minimum(c, 3) - 1], 0.0) / tot
        return p

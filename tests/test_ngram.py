"""The interpolated modified Kneser-Ney n-gram model (lmjax/models/ngram.py): numpy only, fast."""

from collections import Counter

import numpy as np
import pytest

from lmjax.models.ngram import NgramModel, count, key_space_error, kn_discounts


def _markov_tokens(n, vocab, seed, used=None):
    """Tokens from a random sparse first-order Markov chain over the first `used` ids (skewed counts)."""
    rng = np.random.default_rng(seed)
    used = used or vocab
    trans = rng.dirichlet(np.full(used, 0.3), size=used)
    out = np.empty(n, np.int64)
    out[0] = 0
    for i in range(1, n):
        out[i] = rng.choice(used, p=trans[out[i - 1]])
    return out


def _reference(tokens, order, vocab):
    """p(w | h) straight from the definitions, with Python dicts of tuples: the oracle."""
    tokens = [int(t) for t in tokens]
    grams = {n: Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
             for n in range(1, order + 1)}
    counts = {order: dict(grams[order])}
    for n in range(1, order):  # continuation counts: distinct left extensions anywhere in the corpus
        counts[n] = dict(Counter(g[1:] for g in grams[n + 1]))
    disc = {}
    for n, table in counts.items():
        coc = [sum(1 for c in table.values() if c == k) for k in (1, 2, 3, 4)]
        disc[n] = kn_discounts(*coc)[0]

    def prob(w, h):
        n = len(h) + 1
        lower = prob(w, h[1:]) if n > 1 else 1.0 / vocab
        rows = {g: c for g, c in counts[n].items() if g[:-1] == h}
        total = sum(rows.values())
        if total == 0:
            return lower
        d = lambda c: 0.0 if c == 0 else disc[n][min(c, 3) - 1]  # noqa: E731
        gamma = sum(d(c) for c in rows.values()) / total
        c = rows.get(h + (w,), 0)
        return max(c - d(c), 0.0) / total + gamma * lower

    return lambda h: np.array([prob(w, tuple(int(t) for t in h[len(h) - min(len(h), order - 1):]))
                               for w in range(vocab)])


def test_hand_computed_bigram():
    # tokens 0 1 0 1 2 0, V=3, order 2.
    # bigram raw counts: 01:2 10:1 12:1 20:1 -> n1..n4 = 3,1,0,0; n3 = 0 -> fallback D = 3/(3+2) = 0.6
    # contexts: 0 -> total 2, N2=1 -> gamma 0.6/2 = 0.3;  1 -> total 2, N1=2 -> gamma 1.2/2 = 0.6;
    #           2 -> total 1, N1=1 -> gamma 0.6
    # unigram continuation counts (distinct left extensions): 0 <- {1,2}: 2, 1 <- {0}: 1, 2 <- {1}: 1
    #   n1..n4 = 2,1,0,0 -> fallback D = 2/(2+2) = 0.5; total 4, gamma = 0.5*3/4 = 0.375
    #   p1(0) = 1.5/4 + 0.375/3 = 0.5, p1(1) = p1(2) = 0.5/4 + 0.125 = 0.25
    # p(1|0) = (2-0.6)/2 + 0.3*0.25 = 0.775   p(0|0) = 0.3*0.5 = 0.15   p(2|0) = 0.075
    # p(0|1) = 0.4/2 + 0.6*0.5 = 0.5          p(2|1) = 0.2 + 0.6*0.25 = 0.35   p(1|1) = 0.15
    # p(0|2) = 0.4/1 + 0.6*0.5 = 0.7          p(1|2) = p(2|2) = 0.15
    tokens = np.array([0, 1, 0, 1, 2, 0])
    m = count(tokens, order=2, vocab_size=3)
    a = m.arrays()
    np.testing.assert_array_equal(a["o2_keys"], [0 * 3 + 1, 1 * 3 + 0, 1 * 3 + 2, 2 * 3 + 0])
    np.testing.assert_array_equal(a["o2_counts"], [2, 1, 1, 1])
    np.testing.assert_array_equal(a["o2_count_of_counts"], [3, 1, 0, 0])
    np.testing.assert_allclose(a["o2_discounts"], [0.6] * 3)
    np.testing.assert_array_equal(a["o2_ctx_keys"], [0, 1, 2])
    np.testing.assert_array_equal(a["o2_ctx_total"], [2, 2, 1])
    np.testing.assert_array_equal(a["o2_ctx_n1"], [0, 2, 1])
    np.testing.assert_array_equal(a["o2_ctx_n2"], [1, 0, 0])
    np.testing.assert_array_equal(a["o1_keys"], [0, 1, 2])
    np.testing.assert_array_equal(a["o1_counts"], [2, 1, 1])
    np.testing.assert_allclose(a["o1_discounts"], [0.5] * 3)
    assert m.num_ngrams == 7

    np.testing.assert_allclose(m.distribution(np.array([], np.int64)), [0.5, 0.25, 0.25])
    np.testing.assert_allclose(m.distribution([]), [0.5, 0.25, 0.25])  # plain lists work too
    np.testing.assert_allclose(m.distribution(np.array([0])), [0.15, 0.775, 0.075])
    np.testing.assert_allclose(m.distribution(np.array([1])), [0.5, 0.15, 0.35])
    np.testing.assert_allclose(m.distribution(np.array([2, 2, 2])), [0.7, 0.15, 0.15])  # last token only
    np.testing.assert_allclose(np.exp(m.logprobs(tokens)), [0.775, 0.5, 0.775, 0.35, 0.7])


def test_kn_discounts_formulas_and_fallback():
    d, modified = kn_discounts(10, 5, 3, 2)  # Y = 0.5
    assert modified
    np.testing.assert_allclose(d, [1 - 2 * 0.5 * 5 / 10, 2 - 3 * 0.5 * 3 / 5, 3 - 4 * 0.5 * 2 / 3])
    d, modified = kn_discounts(10, 5, 3, 0)  # n4 = 0 -> D3+ = 3, still in range
    assert modified and d[2] == 3.0
    # n3 = 0: D3+ undefined -> plain D = n1/(n1+2 n2) for all three
    d, modified = kn_discounts(3, 1, 0, 0)
    assert not modified
    np.testing.assert_allclose(d, [0.6] * 3)
    # D2 = 2 - 3*(10/12)*5/1 < 0 -> plain D = 10/12
    d, modified = kn_discounts(10, 1, 5, 0)
    assert not modified
    np.testing.assert_allclose(d, [10 / 12] * 3)
    # no singletons: n1/(n1+2 n2) would be 0 -> 0.5; and nothing counted at all -> 0.5
    np.testing.assert_allclose(kn_discounts(0, 4, 2, 1)[0], [0.5] * 3)
    np.testing.assert_allclose(kn_discounts(0, 0, 0, 0)[0], [0.5] * 3)
    # only singletons: D = 1
    np.testing.assert_allclose(kn_discounts(7, 0, 0, 0)[0], [1.0] * 3)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_matches_reference_implementation(order):
    vocab = 6
    tokens = _markov_tokens(300, vocab, seed=order, used=5)  # id 5 never occurs
    m = count(tokens, order=order, vocab_size=vocab)
    ref = _reference(tokens, order, vocab)
    rng = np.random.default_rng(100 + order)
    contexts = [tokens[:0], tokens[:1], tokens[10:15], np.array([5, 5, 5]), np.array([0, 5])]
    contexts += [rng.integers(0, vocab, rng.integers(0, 6)) for _ in range(6)]
    for ctx in contexts:
        np.testing.assert_allclose(m.distribution(ctx), ref(ctx), rtol=1e-12, atol=1e-15)
    if order >= 2:  # the data is rich enough that the modified-KN formulas are exercised
        assert any(kn_discounts(*m.arrays()[f"o{n}_count_of_counts"])[1] for n in range(2, order + 1))


@pytest.mark.parametrize("order", [2, 3, 4])
def test_corpus_start_matches_reference(order):
    # The first n-grams occur nowhere else: an n-gram seen only at the start has no left extension,
    # but it is still a left extension of its own suffix.
    vocab = 7
    tokens = np.concatenate([[6, 5, 6], _markov_tokens(200, vocab, seed=7, used=5)])
    m = count(tokens, order=order, vocab_size=vocab)
    ref = _reference(tokens, order, vocab)
    for ctx in ([], [6], [5], [6, 5], [5, 6], [6, 5, 6], [6, 5, 6, 0], tokens[3:8]):
        ctx = np.array(ctx, np.int64)
        np.testing.assert_allclose(m.distribution(ctx), ref(ctx), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_distribution_sums_to_one_and_is_positive(order):
    vocab = 9
    rng = np.random.default_rng(order)
    tokens = rng.integers(0, 7, 2000) ** 2 % 7  # skewed; ids 7 and 8 are never seen
    m = count(tokens.astype(np.uint16), order=order, vocab_size=vocab)
    contexts = [np.array([], np.int64), np.array([7]), np.array([8, 7, 8]), tokens[:order],
                tokens[-1:]] + [rng.integers(0, vocab, rng.integers(0, 8)) for _ in range(30)]
    for ctx in contexts:
        p = m.distribution(ctx)
        assert p.shape == (vocab,) and p.dtype == np.float64
        assert abs(p.sum() - 1.0) < 1e-9
        assert np.all(p > 0)


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_logprobs_equal_log_of_distribution(order):
    vocab = 7
    train = _markov_tokens(1500, vocab, seed=10 + order, used=6)
    m = count(train, order=order, vocab_size=vocab)
    held_out = np.random.default_rng(order).integers(0, vocab, 60)  # includes unseen id 6, contexts
    for seq in (train[:80], held_out):
        lp = m.logprobs(seq)
        assert lp.shape == (seq.size - 1,) and lp.dtype == np.float64
        expect = [np.log(m.distribution(seq[max(0, t - order + 1):t])[seq[t]]) for t in range(1, seq.size)]
        np.testing.assert_allclose(lp, expect, rtol=1e-12)
    assert m.logprobs(train[:1]).shape == (0,)
    assert m.logprobs(train[:0]).shape == (0,)


def test_order_one_is_interpolated_unigram():
    vocab = 10
    tokens = np.array([0] * 5 + [1] * 3 + [2] * 3 + [3] * 2 + [4] * 2 + [5, 6, 7])  # 8, 9 unseen
    m = count(tokens, order=1, vocab_size=vocab)
    c = np.bincount(tokens, minlength=vocab)  # raw counts at the highest order
    coc = [int(np.sum(c == k)) for k in (1, 2, 3, 4)]  # 3, 2, 2, 0
    assert coc == [3, 2, 2, 0]
    d, modified = kn_discounts(*coc)
    assert modified
    dc = np.where(c == 0, 0.0, d[np.clip(c, 1, 3) - 1])
    total = c.sum()
    expect = (c - dc) / total + dc.sum() / total / vocab
    np.testing.assert_allclose(m.distribution(np.array([3, 1, 4])), expect)  # context is ignored
    np.testing.assert_allclose(np.exp(m.logprobs(tokens)), expect[tokens[1:]])
    assert m.num_ngrams == 8


def test_counting_is_deterministic_and_dtype_independent(tmp_path):
    tokens = _markov_tokens(3000, 50, seed=3)
    path = tmp_path / "tokens.bin"
    tokens.astype(np.uint16).tofile(path)
    inputs = [tokens, tokens.astype(np.uint16), tokens.astype(np.uint32), tokens.astype(np.uint64),
              np.memmap(path, dtype=np.uint16, mode="r"), tokens]
    models = [count(t, order=3, vocab_size=50) for t in inputs]
    base = models[0].arrays()
    for m in models[1:]:
        a = m.arrays()
        assert a.keys() == base.keys()
        for name in base:
            np.testing.assert_array_equal(a[name], base[name], err_msg=name)
            assert a[name].dtype == base[name].dtype
    # arrays() / from_arrays() round trip
    again = NgramModel.from_arrays(3, 50, {k: v.copy() for k, v in base.items()})
    np.testing.assert_array_equal(again.logprobs(tokens[:500]), models[0].logprobs(tokens[:500]))
    assert again.num_ngrams == models[0].num_ngrams
    for arr in base.values():
        assert type(arr) is np.ndarray


def test_key_space_too_large_is_refused():
    assert key_space_error(7, 256) is None
    message = key_space_error(8, 256)
    assert message and "2**63" in message and "order <= 7" in message
    with pytest.raises(ValueError, match=r"order <= 7"):
        count(np.zeros(10, np.uint16), order=8, vocab_size=256)
    with pytest.raises(ValueError, match="2\\*\\*63"):
        NgramModel.from_arrays(3, 2 ** 21, {})
    count(np.arange(20) % 256, order=7, vocab_size=256)  # the largest that fits works


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="outside"):
        count(np.array([0, 1, 3]), order=2, vocab_size=3)
    with pytest.raises(ValueError, match="outside"):
        count(np.array([0, -1]), order=2, vocab_size=3)
    with pytest.raises(ValueError, match="integer"):
        count(np.array([0.0, 1.0]), order=2, vocab_size=3)
    with pytest.raises(ValueError, match="order"):
        count(np.array([0, 1]), order=0, vocab_size=3)
    m = count(np.array([0, 1, 2]), order=2, vocab_size=3)
    with pytest.raises(ValueError, match="outside"):
        m.logprobs(np.array([0, 3]))
    with pytest.raises(ValueError, match="lack"):
        NgramModel.from_arrays(3, 3, {k: v for k, v in m.arrays().items()})


def test_tiny_corpora_fall_back_to_lower_orders():
    # Shorter than the order, and empty: still proper distributions.
    m = count(np.array([1, 2]), order=4, vocab_size=4)
    assert m.arrays()["o4_keys"].size == 0 and m.arrays()["o3_keys"].size == 0
    for ctx in ([], [1], [1, 2], [3, 3, 3, 3]):
        p = m.distribution(np.array(ctx, np.int64))
        assert abs(p.sum() - 1) < 1e-12 and np.all(p > 0)
    np.testing.assert_allclose(m.distribution(np.array([0, 1])), m.distribution(np.array([1])))
    empty = count(np.zeros(0, np.uint16), order=3, vocab_size=5)
    np.testing.assert_allclose(empty.distribution(np.array([1, 2])), np.full(5, 0.2))
    np.testing.assert_allclose(empty.logprobs(np.array([1, 2, 3])), np.log([0.2, 0.2]))
    assert empty.num_ngrams == 0


def test_higher_order_lowers_held_out_loss():
    rng = np.random.default_rng(0)
    subjects, verbs, objects = ["the cat ", "a dog ", "my friend "], ["sat on ", "ran to ", "saw "], \
        ["the mat. ", "a tree. ", "the house. "]
    text = "".join(rng.choice(subjects) + rng.choice(verbs) + rng.choice(objects) for _ in range(700))
    ids = np.frombuffer(text.encode(), np.uint8)
    train, held = ids[:-2000], ids[-2000:]
    bits = {n: -count(train, order=n, vocab_size=256).logprobs(held).mean() / np.log(2) for n in (1, 2, 3, 5)}
    assert bits[5] < bits[3] < bits[2] < bits[1]
    assert bits[5] < 0.6 * bits[1]

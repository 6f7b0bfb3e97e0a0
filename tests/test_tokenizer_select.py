"""Pure selection logic on hand-made vocabularies: BPE simulation, merge closure, coverage, errors."""
import numpy as np
import pytest

from pangu_pro.tokenizer.select import (admission_order, bpe_closures, bpe_segment, coverage_at_sizes,
                                        required_ids, select_ids)
from pangu_pro.tokenizer.vocab import BYTE, CONTROL, NORMAL, UNKNOWN, USER_DEFINED, Vocab, old2new_array


def make_vocab(normal: list[str], model_type: str = "bpe") -> Vocab:
    """<unk> <s> </s> <sep>(user) <0x00> <0x01>, then `normal` with descending scores."""
    head = [("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL), ("<sep>", USER_DEFINED),
            ("<0x00>", BYTE), ("<0x01>", BYTE)]
    pieces = [p for p, _ in head] + normal
    types = [t for _, t in head] + [NORMAL] * len(normal)
    scores = [0.0] * len(head) + [-float(i) for i in range(len(normal))]
    return Vocab(tuple(pieces), tuple(scores), tuple(types), model_type)


# ids:      6    7    8    9     10     11    12     13
PIECES = ["▁", "a", "b", "ab", "▁ab", "c", "abc", "bc"]


def test_bpe_segment_takes_highest_score_then_leftmost():
    scores = {"ab": -1.0, "bc": -0.5, "abc": -3.0}
    assert bpe_segment("abc", scores) == (["abc"], [("b", "c", "bc"), ("a", "bc", "abc")])
    assert bpe_segment("abc", {"ab": -1.0, "bc": -0.5}) == (["a", "bc"], [("b", "c", "bc")])
    tie = {"ab": -1.0, "bc": -1.0, "abc": -3.0}
    assert bpe_segment("abc", tie) == (["abc"], [("a", "b", "ab"), ("ab", "c", "abc")])
    assert bpe_segment("xy", tie) == (["x", "y"], [])


def test_closure_lists_tree_in_post_order_and_marks_unreachable():
    vocab = make_vocab(PIECES)
    closures = bpe_closures(vocab)
    assert closures[10] == [6, 7, 8, 9, 10]  # ▁ a b, then ab, then ▁ab
    assert closures[12] == [7, 8, 11, 9, 12]  # a b c, ab (score -3) before abc
    assert closures[7] == [7]
    # "bc" scores below "ab", so "abc" is built as ab+c and "bc" is reachable only on its own text
    assert closures[13] == [8, 11, 13]
    unreachable = make_vocab(["a", "b", "c", "abc"])  # no 2-symbol piece leads to "abc"
    assert bpe_closures(unreachable)[9] is None


def test_required_ids():
    assert required_ids(make_vocab(PIECES)) == [0, 1, 2, 3, 4, 5, 6]


def test_every_prefix_of_the_admission_order_is_closed():
    vocab = make_vocab(PIECES)
    counts = np.array([0, 5, 5, 0, 0, 0, 1, 0, 0, 0, 100, 0, 50, 3])
    order = admission_order(vocab, counts)
    assert order == [7, 8, 9, 10, 11, 12, 13]  # ▁ab first, pulling in a, b, ab; then abc pulls c
    closures = bpe_closures(vocab)
    for k in range(len(order) + 1):
        kept = set(required_ids(vocab)) | set(order[:k])
        for i in kept:
            assert set(closures[i]) <= kept
    naive = admission_order(vocab, counts, closure=False)
    assert naive == [10, 12, 13, 7, 8, 9, 11]


def test_select_by_size_and_by_coverage():
    vocab = make_vocab(PIECES)
    counts = np.array([0, 5, 5, 0, 0, 0, 1, 0, 0, 0, 100, 0, 50, 3])  # total 164
    sel = select_ids(vocab, counts, vocab_size=11)
    assert sel.new2old.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert sel.coverage == pytest.approx(111 / 164)
    by_cov = select_ids(vocab, counts, coverage=0.9)  # needs abc: 161/164
    assert by_cov.new2old.tolist() == list(range(13))
    assert by_cov.coverage == pytest.approx(161 / 164)
    assert select_ids(vocab, counts, coverage=1.0).new2old.size == 14
    assert coverage_at_sizes(vocab, counts, [7, 11, 14]) == pytest.approx([11 / 164, 111 / 164, 1.0])
    naive = select_ids(vocab, counts, vocab_size=9, closure=False)
    assert naive.new2old.tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 12]


def test_unigram_is_cut_by_frequency_alone():
    vocab = make_vocab(PIECES, model_type="unigram")
    counts = np.array([0, 5, 5, 0, 0, 0, 1, 0, 0, 0, 100, 0, 50, 3])
    assert select_ids(vocab, counts, vocab_size=9).new2old.tolist() == [0, 1, 2, 3, 4, 5, 6, 10, 12]


@pytest.mark.parametrize("kwargs, message", [
    ({"vocab_size": 6}, "smaller than the 7 pieces that must stay"),
    ({"vocab_size": 15}, "larger than the original vocabulary"),
    ({"coverage": 0.0}, r"coverage must lie in \(0, 1\]"),
    ({"coverage": 1.5}, r"coverage must lie in \(0, 1\]"),
    ({}, "exactly one"),
])
def test_bad_targets_fail_clearly(kwargs, message):
    vocab = make_vocab(PIECES)
    with pytest.raises(ValueError, match=message):
        select_ids(vocab, np.ones(14, dtype=np.int64), **kwargs)


def test_counts_must_match_vocab():
    with pytest.raises(ValueError, match=r"expected \(14,\)"):
        select_ids(make_vocab(PIECES), np.ones(13, dtype=np.int64), vocab_size=10)


def test_old2new():
    assert old2new_array(np.array([0, 2, 5]), 6).tolist() == [0, -1, 1, -1, -1, 2]


def test_bracketed_pieces_are_kept_with_their_merge_tree_unless_turned_off():
    """The official script keeps every `<…>` / `[…]` piece (format markers) whatever its count; ours
    also keeps the merges that build it, so it stays reachable. Configurable."""
    from pangu_pro.tokenizer.select import is_bracketed

    # ids:  6    7    8    9    10   11   12    13     14   15   16     17
    vocab = make_vocab(["▁", "a", "b", "ab", "<", ">", "<a", "<a>", "[", "]", "[a]", "<>"])
    counts = np.array([0] * 6 + [50, 40, 30, 20, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.int64)
    assert [is_bracketed(p) for p in ("<a>", "[a]", "<>", "[]", "<", "a>", "<0x00>")] == \
        [True, True, False, False, False, False, True]
    required = required_ids(vocab)
    assert required == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 16]  # <a> with < a > <a; [a] alone (unreachable)
    kept = select_ids(vocab, counts, vocab_size=len(required)).new2old.tolist()
    assert kept == required and 13 in kept and 16 in kept
    naive = select_ids(vocab, counts, vocab_size=len(required), keep_bracketed=False).new2old.tolist()
    assert required_ids(vocab, keep_bracketed=False) == [0, 1, 2, 3, 4, 5, 6]
    assert 13 not in naive and 16 not in naive and {7, 8, 9} <= set(naive)  # by count: a, b, ab first
    assert required_ids(make_vocab(["▁", "<", "a", ">", "<a>"], "unigram")) == [0, 1, 2, 3, 4, 5, 6, 10]

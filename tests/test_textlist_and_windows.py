"""Sliding-window schedule (PERANK.md) and the text-listwise baseline's prompt and answer parser."""
import pytest
from hypothesis import given, settings, strategies as st

from perank_jax.evaluate.textlist import parse_ranking, textlist_messages
from perank_jax.listwise.windows import sliding_rerank, sliding_windows


def _reference_loop(n, window, stride):
    """PERANK.md's loop verbatim (valid for n > window)."""
    out, (start, end) = [], (n - window, n)
    while end > 0 and start + stride != 0:
        start = max(start, 0)
        out.append((start, end))
        start, end = start - stride, end - stride
    return out


@pytest.mark.parametrize("n,expected", [
    (1, [(0, 1)]), (10, [(0, 10)]), (15, [(0, 15)]), (20, [(0, 20)]),
    (25, [(5, 25), (0, 15)]),
    (100, [(s, s + 20) for s in range(80, -1, -10)]),
])
def test_sliding_windows_20_10(n, expected):
    assert sliding_windows(n, 20, 10) == expected
    if n == 100:
        assert len(expected) == 9


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 300), window=st.integers(1, 40), data=st.data())
def test_windows_stay_in_range_cover_all_and_end_at_the_top(n, window, data):
    stride = data.draw(st.integers(1, window))
    ws = sliding_windows(n, window, stride)
    assert ws and ws[-1][0] == 0 and ws[0][1] == n
    assert all(0 <= s < e <= n and e - s <= window for s, e in ws)
    assert all(s2 < s1 for (s1, _), (s2, _) in zip(ws, ws[1:]))  # bottom up
    covered = set().union(*(range(s, e) for s, e in ws))
    assert covered == set(range(n))
    if n > window:
        assert ws == _reference_loop(n, window, stride)


def test_bad_window_parameters_are_rejected():
    for w, s in [(0, 1), (10, 0), (10, 11)]:
        with pytest.raises(ValueError):
            sliding_windows(50, w, s)


def test_sliding_rerank_bubbles_the_best_item_to_the_top():
    items = list(range(100))  # item value = true relevance; first stage put it backwards
    out = sliding_rerank(items, lambda sub: sorted(range(len(sub)), key=lambda i: -sub[i]), 20, 10)
    assert out[:10] == list(range(99, 89, -1))  # the top 10 is exact after 9 windows
    calls = []
    sliding_rerank(items, lambda sub: calls.append(len(sub)) or list(range(len(sub))))
    assert calls == [20] * 9
    with pytest.raises(ValueError, match="not a permutation"):
        sliding_rerank(items[:5], lambda sub: [0, 0, 1, 2, 3])


def test_textlist_prompt_is_the_reference_text():
    msgs = textlist_messages("what is [x]", ["  alpha [1] beta ", "gamma"])
    assert msgs == [{"role": "user", "content":
        "I will provide you with 2 passages.\n"
        "Rank the passages based on their relevance to the search query: what is [x].\n"
        "Passage 1: alpha (1) beta\n\n"
        "Passage 2: gamma\n\n"
        "Search Query: what is [x].\n"
        "Rank the 2 relatively ordered passages above based on their relevance to the search query, output the "
        "ranking in descending order. The output format should be [] > [] > ..., e.g., [4] > [2] > ..., Only "
        "respond with the ranking results with 2 unique numbers, do not say anything else or explain.\n\n"}]
    short = textlist_messages("q", ["one two three four"], max_words=2)[0]["content"]
    assert "Passage 1: one two\n\n" in short


@pytest.mark.parametrize("answer,n,expected", [
    ("[2] > [3] > [1]", 3, [1, 2, 0]),
    ("[2] > [2] > [1] > [2]", 3, [1, 0, 2]),             # repeats dropped, missing appended
    ("[4] > [1]", 5, [3, 0, 1, 2, 4]),                    # missing ids in first-stage order
    ("I think [7] > [0] > [3] > [21]", 5, [2, 0, 1, 3, 4]),  # beyond the window / 0 dropped
    ("Sure! The ranking is: passage three, then one.", 4, [0, 1, 2, 3]),  # junk only
    ("", 3, [0, 1, 2]),
    ("[10]>[2]>[1]junk[3]x[11]", 10, [9, 1, 0, 2, 3, 4, 5, 6, 7, 8]),
    ("[002] > [1]", 2, [1, 0]),
])
def test_parse_ranking_on_malformed_generations(answer, n, expected):
    got = parse_ranking(answer, n)
    assert got == expected and sorted(got) == list(range(n))

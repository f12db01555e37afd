"""The declared strength order: levels, pair-type presets, and every way to get it wrong."""

import pytest

from pairforge.errors import InputError
from pairforge.pairs.order import parse_rank


def test_chain_gives_levels_and_gaps():
    order = parse_rank("gpt-4 > chatgpt > text-davinci-003")
    assert order.levels == {"gpt-4": 0, "chatgpt": 1, "text-davinci-003": 2}
    assert order.gap("gpt-4", "text-davinci-003") == 2 and order.span == 2


def test_presets():
    order = parse_rank("a > b > c")
    assert order.pair_types("all") == [("a", "b"), ("a", "c"), ("b", "c")]
    assert order.pair_types("adjacent") == [("a", "b"), ("b", "c")]
    assert order.pair_types("extremes") == [("a", "c")]
    assert order.pair_types("a>c, b>c") == [("a", "c"), ("b", "c")]


def test_partial_order_from_several_chains():
    order = parse_rank("a > b > c; a > d")
    assert ("a", "d") in order.beats and ("b", "d") not in order.beats
    with pytest.raises(InputError, match="'b' is not ranked above 'd'"):
        order.pair_types("b>d")


@pytest.mark.parametrize(
    ("rank", "message"),
    [
        ("a > b > a", "source 'a' appears twice"),
        ("a > b; b > a", "cycle"),
        ("a > > b", "empty source name"),
        ("a", "at least two sources"),
        ("", "expected sources"),
    ],
)
def test_bad_rank(rank, message):
    with pytest.raises(InputError, match=message) as info:
        parse_rank(rank)
    assert str(info.value).startswith("--rank:")


@pytest.mark.parametrize(
    ("spec", "message"),
    [("a>z", "names source 'z'"), ("c>a", "does not follow"), ("a-b", "expected 'stronger>weaker'")],
)
def test_bad_pair_types(spec, message):
    with pytest.raises(InputError, match=message):
        parse_rank("a > b > c").pair_types(spec)

"""prompt_id is the join key between stages: it must be stable and mean 'the same prompt'."""

import hashlib

import polars as pl

from pairforge.schema import Response, prompt_id_of, prompt_ids, to_messages


def documented_id(*turns: tuple[str, str]) -> str:
    """DESIGN.md: SHA-256 (16 hex) of "role\x1fcontent" turns joined by "\x1e" (content NFC, LF, stripped)."""
    return hashlib.sha256("\x1e".join(f"{role}\x1f{content}" for role, content in turns).encode()).hexdigest()[:16]


def test_prompt_id_is_stable_across_versions():
    # The documented definition, not whatever the code computes today: if the id changes, responses generated
    # earlier no longer join with new ones.
    assert prompt_id_of(to_messages("Hello")) == Response(prompt="Hello", source="a", response="x").prompt_id
    assert prompt_id_of(to_messages("Hello")) == documented_id(("user", "Hello"))
    assert prompt_id_of(to_messages("  Name a color.\r\n", system="Be brief.")) == documented_id(
        ("system", "Be brief."), ("user", "Name a color."))
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Caf\u0065\u0301?"}]
    assert prompt_id_of(turns) == documented_id(("user", "Hi"), ("assistant", "Hello!"), ("user", "Caf\u00e9?"))
    assert prompt_ids(pl.Series(["Hello"])).to_list() == [documented_id(("user", "Hello"))]  # the text column path


def test_plain_prompt_and_single_user_turn_are_the_same_prompt():
    assert prompt_id_of(to_messages("Name a color.")) == prompt_id_of([{"role": "user", "content": "Name a color."}])


def test_whitespace_and_line_ends_do_not_change_the_id():
    assert prompt_id_of(to_messages("Line one  \r\nLine two\n")) == prompt_id_of(to_messages("Line one\nLine two"))


def test_case_and_system_prompt_do_change_the_id():
    base = prompt_id_of(to_messages("Name a color."))
    assert prompt_id_of(to_messages("name a color.")) != base
    assert prompt_id_of(to_messages("Name a color.", system="Be brief.")) != base


def test_unicode_forms_are_the_same_prompt_in_text_and_chat():
    composed, decomposed = "Caf\u00e9 au lait?", "Cafe\u0301 au lait?"
    assert prompt_id_of(to_messages(composed)) == prompt_id_of(to_messages(decomposed))
    ids = prompt_ids(pl.Series([composed, decomposed, "plain"])).to_list()
    assert ids[0] == ids[1] == prompt_id_of(to_messages(composed)) != ids[2]

"""prompt_id is the join key between stages: it must be stable and mean 'the same prompt'."""

from pairforge.schema import Response, prompt_id_of, to_messages


def test_prompt_id_is_stable_across_versions():
    # A fixed value: if this changes, responses generated earlier no longer join with new ones.
    assert prompt_id_of(to_messages("Hello")) == Response(prompt="Hello", source="a", response="x").prompt_id
    assert prompt_id_of(to_messages("Hello")) == "b0ae8b0f316e2f14"


def test_plain_prompt_and_single_user_turn_are_the_same_prompt():
    assert prompt_id_of(to_messages("Name a color.")) == prompt_id_of([{"role": "user", "content": "Name a color."}])


def test_whitespace_and_line_ends_do_not_change_the_id():
    assert prompt_id_of(to_messages("Line one  \r\nLine two\n")) == prompt_id_of(to_messages("Line one\nLine two"))


def test_case_and_system_prompt_do_change_the_id():
    base = prompt_id_of(to_messages("Name a color."))
    assert prompt_id_of(to_messages("name a color.")) != base
    assert prompt_id_of(to_messages("Name a color.", system="Be brief.")) != base

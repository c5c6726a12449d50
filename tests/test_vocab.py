import pytest

from ditfarm.pipelines.tiny.vocab import VOCABULARY, ObjectSpec, PromptError, SceneSpec, parse_prompt

pytestmark = [pytest.mark.unit]


def test_single_object_prompt():
    spec = parse_prompt("Red circle moving left on blue background")
    assert spec == SceneSpec((ObjectSpec("red", "circle", "left"),), background="blue", gradient=False)


def test_gradient_and_two_objects_round_trip():
    prompt = "white square moving up and red circle moving left on green gradient background"
    spec = parse_prompt(prompt)
    assert spec.gradient and spec.background == "green"
    assert [o.colour for o in spec.objects] == ["white", "red"]
    assert spec.prompt == prompt and parse_prompt(spec.prompt) == spec


def test_unknown_word_names_the_word_and_lists_vocabulary():
    with pytest.raises(PromptError) as err:
        parse_prompt("purple circle moving left on blue background")
    message = str(err.value)
    assert "'purple'" in message
    assert all(word in message for word in VOCABULARY)


@pytest.mark.parametrize(
    "prompt, fragment",
    [
        ("red circle moving left", "no 'on <colour> background'"),
        ("red circle moving left on blue", "bad background phrase"),
        ("red moving circle left on blue background", "object 1"),
        ("red circle moving left and blue square on green background", "object 2"),
        (
            "red circle moving left and blue square moving up and green circle moving down on white background",
            "at most 2",
        ),
    ],
)
def test_grammar_errors_say_what_is_wrong(prompt, fragment):
    with pytest.raises(PromptError, match=fragment):
        parse_prompt(prompt)

"""The closed prompt language of the built-in ``tiny`` model.

``tiny`` was trained on synthetic videos described by a small grammar, so it can only follow prompts of that
grammar.  Parsing prompts up front lets us refuse an unknown word with a message that lists the vocabulary,
instead of rendering noise, and gives the data generator and the adherence evaluator one shared description of
a scene::

    scene      := object [ "and" object ] "on" colour [ "gradient" ] "background"
    object     := colour shape "moving" direction

e.g. "red circle moving left on blue background" or
"white square moving up and red circle moving left on green gradient background".
"""

from __future__ import annotations

from dataclasses import dataclass

from ...text import cut, shown

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.25, 1.0),
    "yellow": (1.0, 0.9, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dy, dx) in image coordinates, y grows downwards
    "left": (0, -1),
    "right": (0, 1),
    "up": (-1, 0),
    "down": (1, 0),
}
FUNCTION_WORDS: tuple[str, ...] = ("moving", "and", "on", "gradient", "background")
VOCABULARY: tuple[str, ...] = tuple(COLOURS) + SHAPES + tuple(DIRECTIONS) + FUNCTION_WORDS
MAX_OBJECTS = 2


class PromptError(ValueError):
    """A prompt that the ``tiny`` model cannot render: an unknown word or a sentence outside its grammar."""


@dataclass(frozen=True)
class ObjectSpec:
    colour: str
    shape: str
    direction: str


@dataclass(frozen=True)
class SceneSpec:
    objects: tuple[ObjectSpec, ...]
    background: str
    gradient: bool = False

    @property
    def prompt(self) -> str:
        """The canonical sentence for this scene (parse_prompt(spec.prompt) == spec)."""
        objects = " and ".join(f"{o.colour} {o.shape} moving {o.direction}" for o in self.objects)
        grad = " gradient" if self.gradient else ""
        return f"{objects} on {self.background}{grad} background"


def tokenize(prompt: str) -> list[str]:
    """Lower-cased words of a prompt; refuses words outside the vocabulary, naming them."""
    words = prompt.lower().replace(",", " ").split()
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise PromptError(
            f"unknown word(s) {cut(', '.join(shown(w) for w in dict.fromkeys(unknown)), 400)} in prompt "
            f"{shown(prompt)}; "
            f"the tiny model knows only: {' '.join(VOCABULARY)}"
        )
    return words


def parse_prompt(prompt: str) -> SceneSpec:
    """Parse a prompt of the tiny grammar into a SceneSpec, or raise PromptError saying what is wrong."""
    words = tokenize(prompt)
    usage = (
        "expected '<colour> <shape> moving <direction> [and <colour> <shape> moving <direction>] "
        "on <colour> [gradient] background'"
    )
    if "on" not in words:
        raise PromptError(f"prompt {prompt!r} has no 'on <colour> background' part; {usage}")
    on = len(words) - 1 - words[::-1].index("on")
    head, tail = words[:on], words[on + 1 :]
    if tail[-1:] != ["background"] or len(tail) not in (2, 3) or tail[0] not in COLOURS:
        raise PromptError(f"prompt {prompt!r}: bad background phrase {' '.join(tail)!r}; {usage}")
    if len(tail) == 3 and tail[1] != "gradient":
        raise PromptError(f"prompt {prompt!r}: bad background phrase {' '.join(tail)!r}; {usage}")
    objects = []
    for i, phrase in enumerate(" ".join(head).split(" and ")):
        parts = phrase.split()
        if (
            len(parts) != 4
            or parts[0] not in COLOURS
            or parts[1] not in SHAPES
            or parts[2] != "moving"
            or parts[3] not in DIRECTIONS
        ):
            raise PromptError(f"prompt {prompt!r}: object {i + 1} {phrase!r} is not a sentence of the grammar; {usage}")
        objects.append(ObjectSpec(parts[0], parts[1], parts[3]))
    if len(objects) > MAX_OBJECTS:
        raise PromptError(f"prompt {prompt!r} names {len(objects)} objects; at most {MAX_OBJECTS}")
    return SceneSpec(tuple(objects), background=tail[0], gradient=len(tail) == 3)

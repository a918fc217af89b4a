"""Language derived from a clip's true content: captions, multiple-choice and open-ended QA.

Everything here is a pure function of a `ClipSpec` (plus an explicit rng for option order), so text
can never disagree with the pixels.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .scene import MOVE_DIRECTIONS, OPPOSITE, ROTATE_DIRECTIONS, SPEEDS, ClipSpec, ObjectSpec

# The words a caption uses to describe *how* something moves; motion twins differ only in these.
MOTION_WORDS = frozenset(MOVE_DIRECTIONS) | frozenset(ROTATE_DIRECTIONS) | frozenset(SPEEDS)

ALL_ACTION_PHRASES: tuple[str, ...] = (
    tuple(f"moves {d} {s}" for d in MOVE_DIRECTIONS for s in SPEEDS)
    + tuple(f"rotates {d} {s}" for d in ROTATE_DIRECTIONS for s in SPEEDS)
    + ("grows", "shrinks", "appears", "disappears")
)
NUM_OPTIONS = 5


def action_phrase(obj: ObjectSpec) -> str:
    """Verb phrase for what `obj` does, e.g. "moves left quickly" or "grows"."""
    if obj.action in ("move", "rotate"):
        return f"{obj.action}s {obj.direction} {obj.speed}"
    return f"{obj.action}s"


def noun_phrase(obj: ObjectSpec) -> str:
    """e.g. "red square"; unique within a clip because colours and shapes are drawn without repeats."""
    return f"{obj.color} {obj.shape}"


def caption(clip: ClipSpec) -> str:
    """One sentence naming every object and its action.

    e.g. "a red square moves left quickly while a blue circle grows".
    """
    clauses = [f"a {noun_phrase(o)} {action_phrase(o)}" for o in clip.objects]
    if len(clauses) == 1:
        return clauses[0]
    if len(clauses) == 2:
        return f"{clauses[0]} while {clauses[1]}"
    return f"{', '.join(clauses[:-1])} and {clauses[-1]}"


def _distractors(obj: ObjectSpec, rng: np.random.Generator) -> list[str]:
    """NUM_OPTIONS - 1 wrong action phrases for `obj`, always including its opposite."""
    correct = action_phrase(obj)
    hard: list[str] = []
    if obj.action in ("move", "rotate"):
        verb = f"{obj.action}s"
        hard.append(f"{verb} {OPPOSITE[obj.direction]} {obj.speed}")  # the opposite direction
        hard.append(f"{verb} {obj.direction} {OPPOSITE[obj.speed]}")  # right direction, wrong speed
    else:
        hard.append(f"{OPPOSITE[obj.action]}s")
    rest = [p for p in ALL_ACTION_PHRASES if p != correct and p not in hard]
    picks = rng.choice(len(rest), size=NUM_OPTIONS - 1 - len(hard), replace=False)
    return hard + [rest[i] for i in sorted(picks)]


def multiple_choice(clip: ClipSpec, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One "what does the <colour> <shape> do?" item per object: `{"question", "options", "answer", "type"}`."""
    items = []
    for obj in clip.objects:
        options = [action_phrase(obj)] + _distractors(obj, rng)
        order = rng.permutation(len(options))
        items.append({"question": f"what does the {noun_phrase(obj)} do?",
                      "options": [options[i] for i in order],
                      "answer": int(np.flatnonzero(order == 0)[0]),
                      "type": "action"})
    return items


def open_ended(clip: ClipSpec) -> list[dict[str, Any]]:
    """Single-word-answer questions about direction, speed, colour and shape: `{"question", "answer", "type"}`."""
    items = []
    for obj in clip.objects:
        noun = noun_phrase(obj)
        if obj.action == "move":
            items.append({"question": f"which way does the {noun} move?", "answer": obj.direction,
                          "type": "direction"})
            items.append({"question": f"how fast does the {noun} move?", "answer": obj.speed, "type": "speed"})
        elif obj.action == "rotate":
            items.append({"question": f"which way does the {noun} rotate?", "answer": obj.direction,
                          "type": "rotation"})
        items.append({"question": f"what color is the {obj.shape}?", "answer": obj.color, "type": "color"})
        # Drop the speed word: (action, direction) is unique per clip, speed is not needed to identify it.
        what = f"{obj.action}s" + (f" {obj.direction}" if obj.direction else "")
        items.append({"question": f"what shape {what}?", "answer": obj.shape, "type": "shape"})
    return items

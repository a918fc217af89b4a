"""What happens in a synthetic clip: sampling objects, actions and backgrounds, and their trajectories.

A `ClipSpec` is the complete, JSON-able truth about one clip. Everything downstream (pixels, captions,
QA) is a pure function of it, so `ground_truth.jsonl` is enough to recompute any clip exactly.

Coordinates are pixels with the origin at the top-left corner and y pointing down; angles are
degrees with positive meaning clockwise *on screen*.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

REFERENCE_SIZE = 112  # speeds below are defined at this frame size and scale linearly with it

COLORS: dict[str, tuple[int, int, int]] = {
    # Saturated or very bright, so a colour is never confused with the muted background.
    "red": (228, 36, 36),
    "green": (40, 196, 64),
    "blue": (40, 84, 232),
    "yellow": (240, 216, 32),
    "white": (246, 246, 246),
    "purple": (156, 52, 212),
}
SHAPES = ("square", "circle", "triangle", "star", "cross")
ACTIONS = ("move", "rotate", "grow", "shrink", "appear", "disappear")
MOVE_DIRECTIONS = ("left", "right", "up", "down")
ROTATE_DIRECTIONS = ("clockwise", "counterclockwise")
SPEEDS = ("slowly", "quickly")
BACKGROUND_KINDS = ("stripes", "checker", "noise")

MOVE_PX_PER_FRAME = {"slowly": 1.0, "quickly": 3.0}  # at REFERENCE_SIZE; 3x apart so speed is unmistakable
ROTATE_DEG_PER_FRAME = {"slowly": 3.0, "quickly": 10.0}  # 10 deg stays well under every shape's symmetry angle
DIRECTION_VECTORS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "clockwise": "counterclockwise", "counterclockwise": "clockwise",
            "slowly": "quickly", "quickly": "slowly", "grow": "shrink", "shrink": "grow",
            "appear": "disappear", "disappear": "appear"}
GROW_SCALE = (0.6, 1.4)  # scale at the first and last frame of "grow" (reversed for "shrink")
RADIUS_RANGE = (0.08, 0.11)  # base radius as a fraction of the frame size
EXTENT = 1.2  # farthest any shape reaches from its centre, in units of its base radius

TWIN_FRACTION = 0.5  # share of clips that come in motion-twin pairs
MAX_OBJECTS = 3
OBJECT_COUNT_PROBS = (0.25, 0.4, 0.35)  # P(1), P(2), P(3) objects per clip


@dataclass(frozen=True)
class Background:
    """A two-colour periodic texture that drifts rigidly by `drift` px per frame."""

    kind: str  # one of BACKGROUND_KINDS
    color_a: tuple[int, int, int]
    color_b: tuple[int, int, int]
    period: float  # px; stripe/checker period, or the noise feature size
    angle: float  # deg; stripe orientation (ignored by the others)
    drift: tuple[float, float]  # (dx, dy) px per frame
    noise_seed: int  # seeds the noise tile (ignored by the others)


@dataclass(frozen=True)
class ObjectSpec:
    """One shape and the single thing it does during the clip."""

    color: str
    shape: str
    action: str  # one of ACTIONS
    direction: str | None  # MOVE_DIRECTIONS for move, ROTATE_DIRECTIONS for rotate, else None
    speed: str | None  # SPEEDS for move/rotate, else None
    radius: float  # px; base size (circumradius-like) before scaling
    start: tuple[float, float]  # (x, y) centre at frame 0, px
    event_frame: int | None  # first frame after the change, for appear/disappear


@dataclass(frozen=True)
class ClipSpec:
    """The complete truth about one clip; `twin_group` links the two members of a motion twin."""

    index: int
    num_frames: int
    size: int
    background: Background
    objects: tuple[ObjectSpec, ...]
    twin_group: int | None = None


@dataclass(frozen=True)
class ObjectState:
    """Pose of one object at one frame."""

    x: float
    y: float
    angle: float  # deg, clockwise on screen
    scale: float  # multiplies ObjectSpec.radius
    visible: bool


def speed_px(speed: str, size: int) -> float:
    """Translation speed in px/frame for a speed word at frame size `size`."""
    return MOVE_PX_PER_FRAME[speed] * size / REFERENCE_SIZE


def object_states(obj: ObjectSpec, num_frames: int, size: int) -> list[ObjectState]:
    """Per-frame poses of `obj`, a list of length `num_frames`."""
    states = []
    for t in range(num_frames):
        x, y = obj.start
        angle, scale, visible = 0.0, 1.0, True
        progress = t / (num_frames - 1)
        if obj.action == "move":
            dx, dy = DIRECTION_VECTORS[obj.direction]
            step = speed_px(obj.speed, size) * t
            x, y = x + dx * step, y + dy * step
        elif obj.action == "rotate":
            sign = 1.0 if obj.direction == "clockwise" else -1.0
            angle = sign * ROTATE_DEG_PER_FRAME[obj.speed] * t
        elif obj.action in ("grow", "shrink"):
            lo, hi = GROW_SCALE if obj.action == "grow" else GROW_SCALE[::-1]
            scale = lo + (hi - lo) * progress
        elif obj.action == "appear":
            visible = t >= obj.event_frame
        elif obj.action == "disappear":
            visible = t < obj.event_frame
        states.append(ObjectState(x=x, y=y, angle=angle, scale=scale, visible=visible))
    return states


def clip_to_dict(clip: ClipSpec) -> dict[str, Any]:
    """JSON-able ground truth: the spec plus every object's per-frame state (floats rounded to 1e-4)."""
    out = asdict(clip)
    for obj, record in zip(clip.objects, out["objects"]):
        record["speed_value"] = (speed_px(obj.speed, clip.size) if obj.action == "move"
                                 else ROTATE_DEG_PER_FRAME[obj.speed] if obj.action == "rotate" else None)
        record["states"] = [{"x": round(s.x, 4), "y": round(s.y, 4), "angle": round(s.angle, 4),
                             "scale": round(s.scale, 4), "visible": s.visible}
                            for s in object_states(obj, clip.num_frames, clip.size)]
    return out


# ---------------------------------------------------------------------------------------------- sampling


def _muted_color(rng: np.random.Generator, value: float) -> tuple[int, int, int]:
    # Low saturation and value cap keep every background pixel far (in RGB) from every object colour.
    hue = rng.uniform(0.0, 1.0)
    sat = rng.uniform(0.05, 0.2)
    rgb = []
    for offset in (0.0, 2.0 / 3.0, 1.0 / 3.0):
        c = abs(((hue + offset) * 6.0) % 6.0 - 3.0) - 1.0
        rgb.append(value * (1.0 - sat + sat * min(max(c, 0.0), 1.0)))
    return tuple(int(round(255 * c)) for c in rgb)


def sample_background(rng: np.random.Generator, size: int) -> Background:
    """A random drifting texture; drift is slow (0.2-0.6 px/frame at 112 px) so objects dominate motion."""
    kind = BACKGROUND_KINDS[rng.integers(len(BACKGROUND_KINDS))]
    v_dark = rng.uniform(0.15, 0.3)
    v_light = v_dark + rng.uniform(0.15, 0.25)
    color_a, color_b = _muted_color(rng, v_dark), _muted_color(rng, v_light)
    drift_speed = rng.uniform(0.2, 0.6) * size / REFERENCE_SIZE
    drift_angle = rng.uniform(0.0, 2.0 * math.pi)
    return Background(kind=kind, color_a=color_a, color_b=color_b,
                      period=round(float(rng.uniform(0.12, 0.3) * size), 3),
                      angle=round(float(rng.uniform(0.0, 180.0)), 3),
                      drift=(round(drift_speed * math.cos(drift_angle), 4),
                             round(drift_speed * math.sin(drift_angle), 4)),
                      noise_seed=int(rng.integers(2**31)))


def _path_bounds(obj: ObjectSpec, num_frames: int, size: int) -> tuple[float, float, float, float]:
    """Bounding box (x0, y0, x1, y1) of everything the object covers over the clip, start excluded."""
    reach = EXTENT * obj.radius * (GROW_SCALE[1] if obj.action in ("grow", "shrink") else 1.0)
    dx, dy = 0.0, 0.0
    if obj.action == "move":
        vx, vy = DIRECTION_VECTORS[obj.direction]
        travel = speed_px(obj.speed, size) * (num_frames - 1)
        dx, dy = vx * travel, vy * travel
    return (min(0.0, dx) - reach, min(0.0, dy) - reach, max(0.0, dx) + reach, max(0.0, dy) + reach)


def _raw_interval(objs: list[ObjectSpec], num_frames: int, size: int) -> tuple[float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi) of start centres keeping every variant's whole path inside the frame."""
    lo_x, lo_y, hi_x, hi_y = 1.0, 1.0, size - 1.0, size - 1.0
    for obj in objs:
        bx0, by0, bx1, by1 = _path_bounds(obj, num_frames, size)
        lo_x, hi_x = max(lo_x, 1.0 - bx0), min(hi_x, size - 1.0 - bx1)
        lo_y, hi_y = max(lo_y, 1.0 - by0), min(hi_y, size - 1.0 - by1)
    return lo_x, hi_x, lo_y, hi_y


def _fits(objs: list[ObjectSpec], num_frames: int, size: int) -> bool:
    lo_x, hi_x, lo_y, hi_y = _raw_interval(objs, num_frames, size)
    return lo_x <= hi_x and lo_y <= hi_y


def _start_interval(objs: list[ObjectSpec], num_frames: int,
                    size: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start-centre intervals ((x_lo, x_hi), (y_lo, y_hi)) shared by all variants of one object."""
    lo_x, hi_x, lo_y, hi_y = _raw_interval(objs, num_frames, size)
    # A path longer than the frame (very long clips) cannot fit: centre it rather than fail.
    if lo_x > hi_x:
        lo_x = hi_x = (lo_x + hi_x) / 2.0
    if lo_y > hi_y:
        lo_y = hi_y = (lo_y + hi_y) / 2.0
    return (lo_x, hi_x), (lo_y, hi_y)


def _action_key(obj: ObjectSpec) -> tuple[str, str | None]:
    return (obj.action, obj.direction)


def _sample_action(rng: np.random.Generator, taken: set[tuple[str, str | None]], shape: str,
                   force_move: bool) -> tuple[str, str | None, str | None]:
    # Half of all objects translate: translation is the motion the MVM targets care about most.
    while True:
        if force_move or rng.uniform() < 0.5:
            action = "move"
        else:
            action = ("rotate", "grow", "shrink", "appear", "disappear")[rng.integers(5)]
        if action == "rotate" and shape == "circle":
            continue  # a rotating circle looks static, so its caption would be unverifiable
        direction = speed = None
        if action == "move":
            direction = MOVE_DIRECTIONS[rng.integers(4)]
        elif action == "rotate":
            direction = ROTATE_DIRECTIONS[rng.integers(2)]
        if action in ("move", "rotate"):
            speed = SPEEDS[rng.integers(2)]
        # (action, direction) unique per clip so "what shape moves left?" has exactly one answer.
        if (action, direction) not in taken:
            return action, direction, speed


def _twin_variant(rng: np.random.Generator, obj: ObjectSpec, taken: set[tuple[str, str | None]],
                  num_frames: int, size: int) -> ObjectSpec:
    """The same mover with exactly one motion attribute (direction or speed) changed."""
    options = [replace(obj, speed=OPPOSITE[obj.speed])]
    for d in MOVE_DIRECTIONS:
        if d != obj.direction and ("move", d) not in taken:
            options.append(replace(obj, direction=d))
    # Both twins start at the same place, so e.g. "left quickly" vs "right quickly" rarely fits in frame.
    feasible = [o for o in options if _fits([obj, o], num_frames, size)]
    options = feasible or options[:1]
    # Favour the opposite direction when it fits: it is the hardest negative for a text-video model.
    weights = np.array([1.0 if o.direction == obj.direction else
                        (2.0 if o.direction == OPPOSITE[obj.direction] else 1.0) for o in options])
    return options[rng.choice(len(options), p=weights / weights.sum())]


def _overlaps(objs: list[ObjectSpec], num_frames: int, size: int) -> bool:
    """True if any two objects come close enough to occlude each other at any frame."""
    tracks = [object_states(o, num_frames, size) for o in objs]
    for i in range(len(objs)):
        for j in range(i + 1, len(objs)):
            for si, sj in zip(tracks[i], tracks[j]):
                gap = EXTENT * (objs[i].radius * si.scale + objs[j].radius * sj.scale) + 2.0
                if (si.x - sj.x) ** 2 + (si.y - sj.y) ** 2 < gap * gap:
                    return True
    return False


def sample_clips(rng: np.random.Generator, first_index: int, num_frames: int, size: int,
                 twin: bool, twin_group: int | None = None, object_scale: float = 1.0) -> list[ClipSpec]:
    """One clip, or two motion twins (identical except one mover's direction or speed).

    Twins share background, objects, colours, shapes and start positions, so frame 0 is identical and
    only the motion tells them apart. `object_scale` multiplies every radius (RADIUS_RANGE); larger
    objects fit less often, so clips then hold fewer objects on average.
    """
    background = sample_background(rng, size)
    # Fix the object count first and only drop it when placement keeps failing; redrawing it on every
    # rejection would skew the data towards single-object clips (they never overlap).
    n_obj = int(rng.choice(MAX_OBJECTS, p=OBJECT_COUNT_PROBS)) + 1
    for attempt in range(200 * MAX_OBJECTS):
        if attempt and attempt % 200 == 0 and n_obj > 1:
            n_obj -= 1
        colors = rng.choice(len(COLORS), size=n_obj, replace=False)
        shapes = rng.choice(len(SHAPES), size=n_obj, replace=False)
        taken: set[tuple[str, str | None]] = set()
        base: list[ObjectSpec] = []
        for k in range(n_obj):
            shape = SHAPES[shapes[k]]
            action, direction, speed = _sample_action(rng, taken, shape, force_move=twin and k == 0)
            taken.add((action, direction))
            event = None
            if action in ("appear", "disappear"):
                event = int(rng.integers(max(1, num_frames // 3), max(1, 2 * num_frames // 3) + 1))
            base.append(ObjectSpec(color=list(COLORS)[colors[k]], shape=shape, action=action,
                                   direction=direction, speed=speed,
                                   radius=round(float(rng.uniform(*RADIUS_RANGE) * object_scale * size), 3),
                                   start=(0.0, 0.0), event_frame=event))
        variants = [base]
        if twin:
            other = _twin_variant(rng, base[0], taken - {_action_key(base[0])}, num_frames, size)
            variants.append([other] + base[1:])
        placed: list[ObjectSpec] = []
        for k in range(n_obj):
            (x0, x1), (y0, y1) = _start_interval([v[k] for v in variants], num_frames, size)
            start = (round(float(rng.uniform(x0, x1)), 3), round(float(rng.uniform(y0, y1)), 3))
            placed.append(replace(base[k], start=start))
        variants = [[replace(v[k], start=placed[k].start) for k in range(n_obj)] for v in variants]
        if any(_overlaps(v, num_frames, size) for v in variants):
            continue
        # Shuffle the mover's position in the caption so "first object moves" is not a shortcut.
        order = rng.permutation(n_obj)
        return [ClipSpec(index=first_index + i, num_frames=num_frames, size=size, background=background,
                         objects=tuple(v[k] for k in order), twin_group=twin_group)
                for i, v in enumerate(variants)]
    raise RuntimeError("could not place non-overlapping objects; is the frame too small?")

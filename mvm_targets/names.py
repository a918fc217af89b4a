"""Names that become one folder: dataset names, grid names, run names.

Each is joined onto a parent folder (`cache/<dataset>`, `runs/<grid>`, `<out_dir>/<run>`), so a name
that holds a separator or `..` would place files outside that parent, and a leading dot would hide
the folder. Such names are refused with a one-line reason instead.
"""

from __future__ import annotations

from mvm_targets.errors import InputError


def name_problem(name: object) -> str | None:
    """Why `name` cannot be a single folder name, or None when it can."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    if not name.strip():
        return "must not be empty"
    if "/" in name or "\\" in name:
        return f"'{name}' must be one folder name, without '/' or '\\'"
    if name in (".", ".."):
        return f"'{name}' is the current or the parent folder, not a name"
    if name.startswith("."):
        # a hidden folder: listings and `ablate status` would not show it
        return f"'{name}' must not start with '.'"
    if "\0" in name:
        return f"{name!r} must not contain a NUL character"
    return None


def check_name(name: object, what: str) -> str:
    """`name` itself, or an InputError "`what`: reason" (`what` names the option or file)."""
    problem = name_problem(name)
    if problem is not None:
        raise InputError(f"{what}: {problem}")
    return name  # type: ignore[return-value]

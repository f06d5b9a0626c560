"""The model's bounds as C: the text of ``native/ae_limits.h``, which
``native/build_engine.py`` writes at every build, so the engine's checks
and ``model``'s are one statement (a new bounded field costs its line in
``model`` and a check in C that names it; no number is written twice).

A generated header rather than limits passed in at engine creation: the C
checks stay where they are, the compiler finds a name a check misspells,
and the engine cannot be created with limits other than the model's.

Pure, like ``model``: the build imports it before the engine exists.
"""
from __future__ import annotations

from pathlib import Path

from .model import ENGINE_CONSTANTS, ENGINE_SPECS, bounded_fields

__all__ = ["HEADER", "render", "write"]

HEADER = Path(__file__).resolve().parent.parent / "native" / "ae_limits.h"


def _c(value: float) -> str:
    """A C literal of the model's type: ints stay ints, floats stay doubles."""
    text = repr(value) if isinstance(value, float) else str(int(value))
    return f"({text})" if value < 0 else text


def render() -> str:
    lines = [
        "/* ae_limits.h: GENERATED from appliance/model.py by appliance/engine_limits.py",
        " * (native/build_engine.py writes it at every build); do not edit, change the",
        " * model. Every bounded field of the values the engine is given:",
        " * AE_<SPEC>_<FIELD>_MIN/_MAX (a range, inclusive) or _CHOICES (a list), in the",
        " * model's units; fields the engine never sees are left out. */",
        "#ifndef AE_LIMITS_H",
        "#define AE_LIMITS_H",
        "",
    ]
    for name, value in ENGINE_CONSTANTS.items():
        lines.append(f"#define AE_{name} {_c(value)}")
    for prefix, cls in ENGINE_SPECS.items():
        lines.append("")
        for field, meta in bounded_fields(cls).items():
            if not meta.get("engine", True):
                continue
            name = f"AE_{prefix}_{field.upper()}"
            if "range" in meta:
                lo, hi = meta["range"]
                lines.append(f"#define {name}_MIN {_c(lo)}")
                lines.append(f"#define {name}_MAX {_c(hi)}")
            if "choices" in meta:
                lines.append(f"#define {name}_CHOICES {', '.join(_c(c) for c in meta['choices'])}")
    lines += [
        "",
        "",
        "#endif",
        "",
    ]
    return "\n".join(lines)


def write(path: Path = HEADER) -> bool:
    """Write the header when its text changed (an unchanged file keeps its
    time, so make does not rebuild for nothing). True when it was written."""
    text = render()
    if path.exists() and path.read_text() == text:
        return False
    path.write_text(text)
    return True


if __name__ == "__main__":
    write()

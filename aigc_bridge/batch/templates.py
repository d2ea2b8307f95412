"""Templates with variables: ``crate_{wood}`` / ``"{wood} planks, {finish}"`` with ``wood = ["oak", "pine"]``.

A variable given as a list makes one job per value; several lists make every combination, in the order the
variables are written, the last one changing fastest (like nested loops). The order never depends on hashing
or on the machine, so seeds derived from names, outputs and the manifest are the same on every run.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Mapping


class TemplateError(ValueError):
    pass


def placeholders(template: str) -> list[str]:
    """The ``{names}`` a template uses, in order; refuses ``{0}``, ``{a.b}``, ``{a!r}`` and ``{a:>3}``."""
    try:
        pieces = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"{template!r}: {exc} (write a literal brace as '{{{{' or '}}}}')") from None
    names = []
    for _, name, spec, conversion in pieces:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(f"{template!r}: placeholder {{{name}{'!' + conversion if conversion else ''}"
                                f"{':' + spec if spec else ''}}} must be a plain {{variable}}")
        names.append(name)
    return names


def render(template: str, values: Mapping[str, str]) -> str:
    """Fill every placeholder; a missing variable is an error (callers check with ``placeholders`` first)."""
    out = []
    for literal, name, _, _ in string.Formatter().parse(template):
        out.append(literal)
        if name is not None:
            if name not in values:
                raise TemplateError(f"{template!r} uses {{{name}}}, which is not defined")
            out.append(values[name])
    return "".join(out)


def expand(variables: Mapping[str, str | list[str]]) -> list[dict[str, str]]:
    """Every combination of the list-valued variables (single values repeat in each)."""
    keys = list(variables)
    choices = [v if isinstance(v, list) else [v] for v in variables.values()]
    return [dict(zip(keys, combo)) for combo in itertools.product(*choices)]


def varying(variables: Mapping[str, str | list[str]]) -> list[str]:
    """The variables that take more than one value: a job's name must use them to tell its jobs apart."""
    return [k for k, v in variables.items() if isinstance(v, list) and len(v) > 1]

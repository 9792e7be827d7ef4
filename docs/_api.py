"""The API reference, generated from the package at every build (imported by conf.py).

Every public module of ``spiketriton`` (no path component starting with ``_``) gets one page: its
docstring, a table of its public names and the full documentation of the names it *owns*. A public
name is one listed in the module's ``__all__`` or, for a module without ``__all__``, a class or
function defined in it. An object exported by several modules is documented once, under the
shortest public path that exports it (``spiketriton.LIF``, not ``spiketriton.neuron.LIF``); the
other modules' tables link there, and the longer paths resolve too (autodoc's canonical names).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
import types

PACKAGE = "spiketriton"

# Cross-references in docstrings of spiketriton/ whose target is not documented (a private helper or a
# name that is not public) that the build tolerates: none (a docstring names such a helper as a literal);
# any broken reference fails the build.
KNOWN_BROKEN_REFERENCES: list[tuple[str, str]] = []

def public_modules() -> list[types.ModuleType]:
    pkg = importlib.import_module(PACKAGE)
    mods = [pkg]
    for info in pkgutil.walk_packages(pkg.__path__, PACKAGE + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        mods.append(importlib.import_module(info.name))
    return sorted(mods, key=lambda m: m.__name__)


def exported(mod: types.ModuleType) -> dict[str, object]:
    """The public names of ``mod`` and their objects (submodules excluded)."""
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, o in vars(mod).items() if not n.startswith("_") and (inspect.isclass(o) or inspect.isfunction(o))
                 and getattr(o, "__module__", None) == mod.__name__]
    return {n: getattr(mod, n) for n in names if not isinstance(getattr(mod, n), types.ModuleType)}


def _is_constant(obj) -> bool:
    return isinstance(obj, (int, float, str, bytes, tuple, frozenset))


def owners(mods: list[types.ModuleType]) -> dict[int, str]:
    """id(object) -> the dotted path it is documented under (the shortest public path exporting it)."""
    best: dict[int, tuple[tuple[int, str], str]] = {}
    for mod in mods:
        for name, obj in exported(mod).items():
            if _is_constant(obj):
                continue  # equal constants are not one object: see _index_constants
            rank = (mod.__name__.count("."), mod.__name__)
            if id(obj) not in best or rank < best[id(obj)][0]:
                best[id(obj)] = (rank, f"{mod.__name__}.{name}")
    return {k: path for k, (_, path) in best.items()}


def _owner_of(obj, mod, name, own: dict[int, str]) -> str:
    if _is_constant(obj):
        return _CONSTANT_HOMES.get((mod.__name__, name), f"{mod.__name__}.{name}")
    return own[id(obj)]


_CONSTANT_HOMES: dict[tuple[str, str], str] = {}


def _index_constants(mods) -> None:
    """A constant re-exported by a package (``export.CHIP_FORMAT``) is documented at the package, the
    shortest path; the defining module's table links there."""
    by_value: dict[tuple[str, object], list[str]] = {}
    for mod in mods:
        for name, obj in exported(mod).items():
            if _is_constant(obj):
                by_value.setdefault((name, repr(obj)), []).append(mod.__name__)
    for (name, _), homes in by_value.items():
        home = min(homes, key=lambda m: (m.count("."), m))
        for m in homes:
            # only modules on one import path share a constant (spiketriton.export and .export.chip)
            if m == home or m.startswith(home + "."):
                _CONSTANT_HOMES[(m, name)] = f"{home}.{name}"


def _directive(path: str, obj) -> str:
    if inspect.isclass(obj):
        out = f".. autoclass:: {path}\n   :members:\n   :show-inheritance:\n"
        private = [c for c in obj.__mro__[1:] if c.__module__.startswith(PACKAGE) and c.__name__.startswith("_")]
        if private:
            # members inherited from a private base of ours are documented here (there is no other page for
            # them); members of torch's classes and of our public bases are not
            skip = sorted({c.__name__ for c in obj.__mro__[1:] if c not in private})
            out += f"   :inherited-members: {', '.join(skip)}\n"
        return out
    if inspect.isfunction(obj) or inspect.isbuiltin(obj) or inspect.ismethod(obj):
        return f".. autofunction:: {path}\n"
    return f".. autodata:: {path}\n"


_ROLE = re.compile(r":[\w:]+:`~?([^`]+)`")


def summary(obj) -> str:
    """The first sentence of ``obj``'s docstring, roles turned into literals (a table row is read
    outside the object's module, where a short role target would not resolve)."""
    doc = inspect.getdoc(obj) or ""
    para = " ".join(doc.split("\n\n")[0].split())
    # the first sentence: up to a period followed by a space (not the one of "e.g." or "i.e.")
    m = re.search(r"^(.+?(?<!e\.g)(?<!i\.e)\.)(\s|$)", para)
    text = m.group(1) if m else para
    if len(text) > 220:
        text = text[:200].rsplit(" ", 1)[0] + " ..."
    # :ref:`family A <spec-family-a>` -> ``family A``; :class:`~x.LIF` -> ``x.LIF``
    text = _ROLE.sub(lambda r: f"``{r.group(1).split(' <')[0]}``", text)
    # outside ``literals``, a ``*`` or ``|`` of plain text is not markup
    parts = text.split("``")
    return "``".join(p if i % 2 else re.sub(r"([*|\\])", r"\\\1", p) for i, p in enumerate(parts))


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    out = [".. list-table::", "   :widths: 30 70", ""]
    for role, path, text in rows:
        out += [f"   * - :{role}:`~{path}`", f"     - {text}" if text else "     -"]
    return out + [""]


def _role(obj) -> str:
    if isinstance(obj, types.ModuleType):
        return "py:mod"
    if inspect.isclass(obj):
        return "py:class"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "py:func"
    return "py:data"


def module_page(mod, own) -> str:
    title = mod.__name__
    # the tables name objects by their full paths, so they are written outside the module's context
    out = [title, "=" * len(title), "", f".. automodule:: {mod.__name__}", "", ".. py:currentmodule:: None", ""]
    names = exported(mod)
    subs = _submodules(mod)
    if subs:
        out += [".. rubric:: Modules", ""]
        out += _table([("py:mod", m, summary(importlib.import_module(m))) for m in subs])
    if names:
        paths = {n: _owner_of(o, mod, n, own) for n, o in names.items()}
        out += [".. rubric:: Public names", ""]
        out += _table([(_role(o), paths[n], "" if _is_constant(o) else summary(o)) for n, o in names.items()])
        for n, o in names.items():
            if paths[n] == f"{mod.__name__}.{n}":
                out += [_directive(paths[n], o), ""]
    return "\n".join(out)


def _submodules(mod) -> list[str]:
    if not hasattr(mod, "__path__"):
        return []
    return sorted(f"{mod.__name__}.{i.name}" for i in pkgutil.iter_modules(mod.__path__) if not i.name.startswith("_"))


def write_pages(outdir: pathlib.Path) -> None:
    """Write ``<module>.rst`` for every public module into ``outdir``; rewrite a page only when its text
    changed (Sphinx then rebuilds only what changed) and remove pages of modules that are gone."""
    mods = public_modules()
    _index_constants(mods)
    own = owners(mods)
    outdir.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for mod in mods:
        wanted[f"{mod.__name__}.rst"] = module_page(mod, own)
    for f in outdir.glob("*.rst"):
        if f.name not in wanted:
            f.unlink()
    _index_aliases(mods, own)
    for name, text in wanted.items():
        f = outdir / name
        if not f.exists() or f.read_text() != text:
            f.write_text(text)


# every other path of a documented object -> the path it is documented under
_ALIASES: dict[str, str] = {}


def _index_aliases(mods, own) -> None:
    _ALIASES.clear()
    for mod in mods:
        for name, obj in exported(mod).items():
            if _is_constant(obj):
                home = _CONSTANT_HOMES.get((mod.__name__, name), f"{mod.__name__}.{name}")
                _ALIASES[f"{mod.__name__}.{name}"] = home
                continue
            home = own[id(obj)]
            _ALIASES[f"{mod.__name__}.{name}"] = home
            where = getattr(obj, "__module__", None)
            qual = getattr(obj, "__qualname__", None)
            if where and qual:
                _ALIASES[f"{where}.{qual}"] = home


def _alias(target: str):
    """The documented path of ``target``, also for a member of a class documented elsewhere."""
    if target in _ALIASES:
        return _ALIASES[target]
    head, _, tail = target.rpartition(".")
    while head:
        if head in _ALIASES:
            return _ALIASES[head] + target[len(head):]
        head = head.rpartition(".")[0]
    return None


def resolve_alias(app, env, node, contnode):
    """``missing-reference`` handler: a reference by another path of a documented object (the path of
    its defining module, or of a module that re-exports it, relative to the docstring's own module)
    resolves to where it is documented."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    mod, cls = node.get("py:module"), node.get("py:class")
    candidates = [target]
    if mod:
        if cls:
            candidates.insert(0, f"{mod}.{cls}.{target}")
        candidates.insert(len(candidates) - 1, f"{mod}.{target}")
    domain = env.get_domain("py")
    for cand in candidates:
        new = _alias(cand)
        if new and new != target:
            found = domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], new, node, contnode)
            if found is not None:
                return found
    return None

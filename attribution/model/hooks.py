"""Forward hooks for MLX modules by swapping an instance's class.

MLX has no forward hooks. A wrapper module breaks attribute access, so we
instead change ``module.__class__`` to a cached subclass whose ``__call__``
runs the hooks; parameter names, ``isinstance`` checks and attribute access
are unchanged, and restoring the class removes every trace.

Algorithm:
  1. ``hooked_class(cls)`` returns (and caches) ``Hooked<cls>``, a subclass
     whose ``__call__`` looks up the instance's ``Entry`` in the module-level
     registry ``_ACTIVE`` (keyed by ``id(module)``); no entry -> plain call.
  2. An ``Entry`` holds, per module, lists of pre-hooks (transform the first
     positional argument), post-hooks (transform the output), an optional
     ``override`` (replaces the original ``__call__``), and pattern hooks /
     a frozen-pattern count used by the attention code.
  3. ``Hooks`` is one installation: ``add_pre/add_post/...`` record what to
     add; ``install()`` appends to the entries and swaps classes;
     ``remove()`` (always from ``finally``) takes exactly its own items out
     again and restores the original class once an entry is empty. So
     installations nest (an ``intervene`` block around a ``capture``) and
     nothing is left on any module after the outermost one ends.
  4. While a hooked module runs, ``CURRENT`` holds its entry on a stack so
     that code called from inside it (the swapped attention kernel) can find
     the layer's pattern hooks. An attention module whose pattern was wanted
     but never passed through ``apply_pattern`` raises, rather than silently
     skipping captures or freezing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

Transform = Callable[[Any], Any]

_ACTIVE: dict[int, "Entry"] = {}
_HOOKED: dict[type, type] = {}
CURRENT: list["Entry"] = []


@dataclass
class Entry:
    """Hooks active on one module instance."""

    module: Any
    """The hooked module."""
    base: type
    """Its original class, restored when the entry empties."""
    pre: list = field(default_factory=list)
    """(owner, fn) pairs applied in order to the first positional argument."""
    post: list = field(default_factory=list)
    """(owner, fn) pairs applied in order to the output."""
    overrides: list = field(default_factory=list)
    """(owner, fn(module, orig_call, *args, **kw)) pairs; the last one wins."""
    pattern: list = field(default_factory=list)
    """(owner, fn) pairs applied to this attention module's pattern [B,H,Tq,Tk]."""
    freeze_pattern: list = field(default_factory=list)
    """Owners asking for stop_gradient on this module's pattern."""
    pattern_calls: int = 0
    """How many patterns went through ``apply_pattern`` (checked after each call)."""

    def empty(self) -> bool:
        return not (self.pre or self.post or self.overrides or self.pattern or self.freeze_pattern)

    def wants_pattern(self) -> bool:
        return bool(self.pattern or self.freeze_pattern)

    def apply_pattern(self, p):
        """stop_gradient if frozen, then the pattern hooks (edits, captures, deltas).

        Freezing first keeps edits and injected deltas differentiable: the
        frozen pattern is a constant, but what is added to it is not.
        """
        self.pattern_calls += 1
        if self.freeze_pattern:
            import mlx.core as mx

            p = mx.stop_gradient(p)
        for _, fn in self.pattern:
            p = fn(p)
        return p


def _hooked_call(self, *args, **kwargs):
    entry = _ACTIVE.get(id(self))
    base_call = type(self)._hook_base.__call__
    if entry is None:
        return base_call(self, *args, **kwargs)
    for _, fn in entry.pre:
        args = (fn(args[0]),) + tuple(args[1:])
    CURRENT.append(entry)
    seen = entry.pattern_calls
    try:
        if entry.overrides:
            out = entry.overrides[-1][1](self, base_call, *args, **kwargs)
        else:
            out = base_call(self, *args, **kwargs)
    finally:
        CURRENT.pop()
    if entry.wants_pattern() and entry.pattern_calls == seen:
        # Silently missing a pattern would drop captures and leave gradients unfrozen.
        from attribution.errors import UnsupportedArchitectureError

        raise UnsupportedArchitectureError(
            f"{entry.base.__module__}.{entry.base.__name__} computed attention without the "
            "hookable kernel (fused/quantized path), so its pattern cannot be read, edited or "
            "frozen; add it to attribution/model/attention.py"
        )
    for _, fn in entry.post:
        out = fn(out)
    return out


def hooked_class(cls: type) -> type:
    """The cached hook-running subclass of ``cls`` (``cls`` itself if already hooked)."""
    if "_hook_base" in cls.__dict__:
        return cls
    sub = _HOOKED.get(cls)
    if sub is None:
        sub = type(f"Hooked{cls.__name__}", (cls,), {
            "__call__": _hooked_call, "_hook_base": cls, "__module__": cls.__module__,
            "__qualname__": f"Hooked{cls.__qualname__}",
        })
        _HOOKED[cls] = sub
    return sub


def base_class(module) -> type:
    """The module's original class, seen through a hook subclass."""
    return type(module).__dict__.get("_hook_base", type(module))


class Hooks:
    """One installation of hooks on several modules; use ``with hooks:``."""

    def __init__(self) -> None:
        self._items: list[tuple[Any, str, Any]] = []
        self._installed = False

    def add_pre(self, module, fn: Transform) -> None:
        self._items.append((module, "pre", fn))

    def add_post(self, module, fn: Transform) -> None:
        self._items.append((module, "post", fn))

    def add_override(self, module, fn) -> None:
        self._items.append((module, "overrides", fn))

    def add_pattern(self, attn_module, fn: Transform) -> None:
        self._items.append((attn_module, "pattern", fn))

    def freeze_pattern(self, attn_module) -> None:
        self._items.append((attn_module, "freeze_pattern", None))

    def install(self) -> None:
        try:
            for module, slot, fn in self._items:
                entry = _ACTIVE.get(id(module))
                if entry is None:
                    entry = Entry(module=module, base=base_class(module))
                    _ACTIVE[id(module)] = entry
                    module.__class__ = hooked_class(entry.base)
                value = self if slot == "freeze_pattern" else (self, fn)
                getattr(entry, slot).append(value)
            self._installed = True
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        for module, _, _ in self._items:
            entry = _ACTIVE.get(id(module))
            if entry is None:
                continue
            for slot in ("pre", "post", "overrides", "pattern"):
                setattr(entry, slot, [it for it in getattr(entry, slot) if it[0] is not self])
            entry.freeze_pattern = [o for o in entry.freeze_pattern if o is not self]
            if entry.empty():
                del _ACTIVE[id(module)]
                module.__class__ = entry.base
        self._installed = False

    def __enter__(self) -> "Hooks":
        self.install()
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def current_entry() -> "Entry | None":
    """The entry of the innermost hooked module now running, if any."""
    return CURRENT[-1] if CURRENT else None


def active_count() -> int:
    """Number of modules with hooks installed (0 when nothing is active)."""
    return len(_ACTIVE)

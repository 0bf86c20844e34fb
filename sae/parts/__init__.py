"""sae.parts: dictionaries as compositions of interchangeable parts.

Trying a new idea costs one file plus a registration, not an edit of the trainer:
  1. write a part class (a frozen dataclass of its parameters) with the hooks of its kind
     (``sae.parts.base``; e.g. a penalty is ``__call__(d, a, pre, ctx) -> scalar``);
  2. decorate it with ``@register(kind, name)``;
  3. train it: ``TrainConfig(arch="composed", recipe=Recipe(penalty=name), ...)``.
Kinds (one module each): encoder, activation, penalty, decoder, init, dead, schedule.
``Recipe`` names one part per kind with its parameters (frozen, validated, JSON round
trip); ``ComposedDictionary`` runs a recipe (save/load, ``folded``, export, training).
``RECIPES``: the six standard architectures re-expressed as parts and the new ones
(prolu, sqrt_l1, lp_anneal, cauchy, deep, ghost_grads, resample).
Importing this package registers the built-in parts (no array work at import).
"""

from sae.parts import activations, dead, decoders, encoders, inits, penalties, schedules  # noqa: F401
from sae.parts.composed import ComposedDictionary, composed
from sae.parts.recipe import NEW, RECIPES, STANDARD, Recipe, _named
from sae.parts.registry import KINDS, UnknownPartError, names, part, part_class, register

RECIPES.update(_named())

__all__ = ["KINDS", "NEW", "RECIPES", "STANDARD", "ComposedDictionary", "Recipe",
           "UnknownPartError", "composed", "names", "part", "part_class", "register"]

"""Sweep grids: a TOML file → the list of training runs of a Pareto sweep.

Grid format (every table optional except ``[data]`` and ``axes.arch``)::

    name = "synthetic_cpu"              # label of the sweep (figures, table title)
    [data]
    source = "synthetic"                # or "model"
    preset = "cpu"                      # synthetic: cpu | synth_sae_bench_16k
    train_rows = 131072                 # synthetic: distinct training rows (cycled)
    eval_rows = 8192                    # held-out rows scored per run
    dead_rows = 262144                  # held-out rows a latent must fire on once to be alive
    [data.config]                       # synthetic: SyntheticConfig field overrides
    n_features = 4096
    # model: model = "ioi" (a shipped organism) or a model directory; sites = ["L1.resid_post"];
    #        corpus (as `circuits train --corpus`), n_docs, eval_docs
    [train]                             # fixed TrainConfig fields for every run
    total_tokens = 524288
    [train.jumprelu]                    # per-arch overrides of fixed fields (optional)
    lr = 0.01
    [axes]                              # cartesian product; any TrainConfig field may be an axis
    arch = ["relu", "topk"]
    width = [4096]
    k = [12, 25, 50]                    # sparsity levels of archs that take k (topk family)
    sparsity_coef = [1.0, 5.0]          # sparsity levels of the L1 / L0 families
    [sparsity]                          # per-arch sparsity levels (override the two above)
    jumprelu = [0.005, 0.02, 0.08]
    [output]
    save_dictionaries = true            # keep each run's dictionary (runs/<id>/dictionary)
    checkpoint_every = 0                # steps between checkpoints (0: about 8 per run)

Algorithm (``parse_grid``):
  1. Check the top-level keys and the ``[data]`` table (source, preset, sizes, the
     SyntheticConfig overrides by building the config); unknown keys are errors that
     name the key and the valid ones.
  2. Check every ``[train]`` key and ``[axes]`` key is a ``TrainConfig`` field (read from
     the dataclass, so fields added later sweep without a code change), or, in ``[train]``,
     a sub-table named after an arch of the arch axis (fields overriding the fixed ones for
     that arch); each axis is a non-empty list; ``width``/``k`` values are positive integers.
  3. Expand: for each arch (in order), the sparsity axis is ``k`` when the arch takes a
     k (``"k" in TrainConfig.dict_kwargs``), else ``sparsity_coef``; its levels come from
     ``[sparsity].<arch>``, else the matching ``[axes]`` list, else the single default.
     Every other axis multiplies in (cartesian product, grid order).
  4. Build each ``TrainConfig`` (its own validation names unknown archs, k > width, ...)
     and give the run a stable id: the first 12 hex digits of the SHA-256 of the canonical
     JSON of (the config's weight-relevant fields, the data spec). An unchanged run keeps
     its id when the grid file is edited; a changed run gets a new one.
Any problem raises ``GridError`` with one line naming the key and the fix; nothing is
written by parsing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from circuits.errors import CircuitsError

SITE = "L0.resid_post"
"""The site synthetic rows are presented as (the trainer needs a site name)."""
SYNTHETIC_PRESETS = ("cpu", "synth_sae_bench_16k")
"""Synthetic presets (``sae.synthetic.cpu_preset`` / ``synth_sae_bench_16k_preset``)."""
_TOP_KEYS = ("name", "data", "train", "axes", "sparsity", "output")
_DATA_KEYS = {"synthetic": ("source", "preset", "config", "train_rows", "eval_rows", "dead_rows"),
              "model": ("source", "model", "sites", "corpus", "n_docs", "eval_docs")}
_OUTPUT_KEYS = ("save_dictionaries", "checkpoint_every")
_COUNT_FIELDS = ("width", "k", "total_tokens", "batch_tokens")


class GridError(CircuitsError, ValueError):
    """A sweep grid is invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class DataSpec:
    """Where a sweep's activations come from (one per sweep and output directory)."""

    source: str
    """"synthetic" (``sae.synthetic`` rows with known features) or "model" (harvested)."""
    preset: str = "cpu"
    """Synthetic preset name (``SYNTHETIC_PRESETS``)."""
    config: tuple = ()
    """Synthetic: sorted (field, value) overrides of the preset's ``SyntheticConfig``."""
    train_rows: int = 2 ** 17
    """Synthetic: distinct training rows generated once and cycled through."""
    eval_rows: int = 8192
    """Synthetic: held-out rows scored per run (model sweeps evaluate ``eval_docs``)."""
    dead_rows: int = 2 ** 18
    """Synthetic: further held-out rows over which ``dead_frac`` is counted (a latent that
    fires on none of them is dead). A long window, like the training dead counters' (Gao et
    al.: 10M tokens): on the 8,192 scored rows, latents with rare but real features (firing
    rate ~1e-4) read as dead. 2^18 rows see the CPU preset's rarest true feature ~180 times."""
    model: str = "ioi"
    """Model: a shipped organism name or a model directory."""
    sites: tuple = ()
    """Model: the sites to train dictionaries on (one dictionary per site per run)."""
    corpus: str | None = None
    """Model: training corpus (as ``circuits train --corpus``; None = the organism's)."""
    n_docs: int = 2000
    """Model: training documents harvested."""
    eval_docs: int = 200
    """Model: documents for the CE-recovered / KL evaluation."""

    def record(self) -> dict:
        """The JSON form stored in ``sweep.json`` and hashed into run ids."""
        rec = {"source": self.source}
        if self.source == "synthetic":
            rec.update(preset=self.preset, config=dict(self.config), train_rows=self.train_rows,
                       eval_rows=self.eval_rows, dead_rows=self.dead_rows)
        else:
            rec.update(model=self.model, sites=list(self.sites), corpus=self.corpus,
                       n_docs=self.n_docs, eval_docs=self.eval_docs)
        return rec

    def synthetic_config(self):
        """The ``SyntheticConfig`` of a synthetic spec."""
        from sae.synthetic import cpu_preset, synth_sae_bench_16k_preset

        make = cpu_preset if self.preset == "cpu" else synth_sae_bench_16k_preset
        return make(**dict(self.config))


@dataclass(frozen=True)
class RunSpec:
    """One training run of a sweep."""

    id: str
    """Stable id: hash of the config's weight-relevant fields and the data spec."""
    config: object
    """The ``sae.TrainConfig`` trained."""
    axes: dict
    """The axis values that chose this run ({"arch": ..., "k" or "sparsity_coef": ..., ...})."""

    @property
    def sparsity_axis(self) -> str:
        """"k" or "sparsity_coef": which knob sets this run's sparsity."""
        return "k" if "k" in self.axes else "sparsity_coef"


@dataclass(frozen=True)
class SweepGrid:
    """A parsed grid: data spec, runs in grid order, output options."""

    name: str
    """Label of the sweep."""
    data: DataSpec
    """Where the activations come from."""
    runs: tuple
    """``RunSpec`` per run, in grid order (no duplicate ids)."""
    save_dictionaries: bool = True
    """Keep each finished run's dictionary under ``runs/<id>/dictionary``."""
    checkpoint_every: int = 0
    """Steps between checkpoints; 0 = about eight per run."""
    source_path: str | None = None
    """The grid file it was read from (None when parsed from a dict)."""

    def run(self, run_id: str) -> RunSpec:
        """The run with this id (``GridError`` naming the valid ids otherwise)."""
        for r in self.runs:
            if r.id == run_id:
                return r
        raise GridError(f"no run {run_id!r} in this grid; valid ids: "
                        f"{', '.join(r.id for r in self.runs)}")


def load_grid(path) -> SweepGrid:
    """Read and parse a TOML grid file (module docstring)."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist; pass a .toml sweep grid")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise GridError(f"grid file {path} cannot be read as text ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise GridError(f"grid file {path} is not valid TOML: {exc}") from None
    try:
        grid = parse_grid(data)
    except GridError as exc:
        raise GridError(f"grid file {path}: {exc}") from None
    return dataclasses.replace(grid, source_path=str(path))


def _train_fields() -> dict:
    from sae.train.config import TrainConfig

    return {f.name: f for f in dataclasses.fields(TrainConfig)}


def _check_keys(table: dict, valid, where: str) -> None:
    for k in table:
        if k not in valid:
            raise GridError(f"unknown key {k!r} in {where}; valid keys: {', '.join(valid)}")


def _table(data: dict, key: str) -> dict:
    v = data.get(key, {})
    if not isinstance(v, dict):
        raise GridError(f"[{key}] must be a table, got {type(v).__name__}")
    return v


def _count(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise GridError(f"{what} must be a positive integer, got {v!r}")
    return v


def parse_data(t: dict) -> DataSpec:
    """The ``[data]`` table → ``DataSpec`` (module docstring, step 1)."""
    source = t.get("source")
    if source not in _DATA_KEYS:
        raise GridError(f"[data] source must be \"synthetic\" or \"model\", got {source!r}")
    _check_keys(t, _DATA_KEYS[source], f"[data] (source = {source!r})")
    if source == "synthetic":
        preset = t.get("preset", "cpu")
        if preset not in SYNTHETIC_PRESETS:
            raise GridError(f"[data] preset must be one of {', '.join(SYNTHETIC_PRESETS)}, "
                            f"got {preset!r}")
        over = t.get("config", {})
        if not isinstance(over, dict):
            raise GridError("[data.config] must be a table of SyntheticConfig fields")
        from sae.synthetic import SyntheticConfig

        valid = [f.name for f in dataclasses.fields(SyntheticConfig)]
        _check_keys(over, valid, "[data.config]")
        spec = DataSpec(source, preset=preset, config=tuple(sorted(over.items())),
                        train_rows=_count(t.get("train_rows", 2 ** 17), "[data] train_rows"),
                        eval_rows=_count(t.get("eval_rows", 8192), "[data] eval_rows"),
                        dead_rows=_count(t.get("dead_rows", 2 ** 18), "[data] dead_rows"))
        try:
            spec.synthetic_config()
        except (ValueError, TypeError) as exc:
            raise GridError(f"[data.config]: {exc}") from None
        return spec
    sites = t.get("sites")
    if isinstance(sites, str):
        sites = [sites]
    if not sites or not isinstance(sites, list) or not all(isinstance(s, str) for s in sites):
        raise GridError("[data] sites must be a non-empty list of sites, e.g. [\"L1.resid_post\"]")
    from attribution.sites import Site

    try:
        sites = tuple(str(Site.parse(s)) for s in sites)
    except (ValueError, TypeError) as exc:
        raise GridError(f"[data] sites: {exc}") from None
    model = t.get("model", "ioi")
    corpus = t.get("corpus")
    if not isinstance(model, str) or (corpus is not None and not isinstance(corpus, str)):
        raise GridError("[data] model and corpus must be strings")
    return DataSpec(source, model=model, sites=sites, corpus=corpus,
                    n_docs=_count(t.get("n_docs", 2000), "[data] n_docs"),
                    eval_docs=_count(t.get("eval_docs", 200), "[data] eval_docs"))


def _axis_values(name: str, values, where: str) -> list:
    if not isinstance(values, list):
        values = [values]
    if not values:
        raise GridError(f"{where} is empty; give at least one value")
    if name in _COUNT_FIELDS:
        for v in values:
            _count(v, f"{where} value")
    if name in ("sparsity_coef",):
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0:
                raise GridError(f"{where} values must be numbers >= 0, got {v!r}")
    return values


def config_id(config, data: DataSpec) -> str:
    """Stable run id: SHA-256 of (weight-relevant config fields, data spec), 12 hex digits."""
    from sae.train.checkpoint import config_record

    rec = {"train": config_record(config), "data": data.record()}
    text = json.dumps(rec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def takes_k(config) -> bool:
    """Whether the config's architecture takes a k (its sparsity knob), else a coefficient.

    A named recipe of ``sae.parts`` (arch "composed") takes k when its activation is a
    top-k one; the standard classes say so through ``TrainConfig.dict_kwargs``."""
    if getattr(config, "arch", None) == "composed":
        return getattr(getattr(config, "recipe", None), "activation", None) in ("topk", "batchtopk")
    return "k" in config.dict_kwargs(config.width or 1 << 20)


def parse_grid(data: dict) -> SweepGrid:
    """A grid given as a dict (the parsed TOML) → ``SweepGrid`` (module docstring)."""
    from sae.train.config import TrainConfig

    if not isinstance(data, dict):
        raise GridError("a grid must be a table")
    _check_keys(data, _TOP_KEYS, "the grid's top level")
    if "data" not in data:
        raise GridError("the grid has no [data] table; add [data] with source = \"synthetic\" "
                        "or \"model\"")
    spec = parse_data(_table(data, "data"))
    fields = _train_fields()
    fixed = dict(_table(data, "train"))
    axes = dict(_table(data, "axes"))
    arch_axis = axes.get("arch") if isinstance(axes.get("arch"), list) else []
    per_arch = {k: fixed.pop(k) for k in list(fixed)
                if isinstance(fixed[k], dict) and k in arch_axis}
    sparsity = _table(data, "sparsity")
    output = _table(data, "output")
    _check_keys(output, _OUTPUT_KEYS, "[output]")
    # sites / kind are set by the data spec: a model sweep trains SAEs on its sites
    for k in fixed:
        if isinstance(fixed[k], dict):
            raise GridError(f"[train.{k}] names an arch that is not in [axes] arch "
                            f"({', '.join(map(str, arch_axis))}); fix the name or drop the table")
        if k not in fields or k == "sites":
            raise GridError(f"unknown TrainConfig field {k!r} in [train]; valid: "
                            f"{', '.join(f for f in fields if f != 'sites')}")
    for name, v in fixed.items():
        if name in _COUNT_FIELDS:
            _count(v, f"[train] {name}")
    for a, over in per_arch.items():
        for k, v in over.items():
            if k not in fields or k in ("sites", "arch"):
                raise GridError(f"unknown TrainConfig field {k!r} in [train.{a}]")
            if k in axes:
                raise GridError(f"{k!r} is both in [train.{a}] and [axes]; keep it in one")
            if k in _COUNT_FIELDS:
                _count(v, f"[train.{a}] {k}")
    for k in axes:
        if k not in fields or k == "sites":
            raise GridError(f"unknown TrainConfig field {k!r} in [axes]; valid: "
                            f"{', '.join(f for f in fields if f != 'sites')}")
        if k in fixed:
            raise GridError(f"{k!r} is both in [train] and [axes]; keep it in one")
    if "arch" not in axes:
        raise GridError("[axes] has no arch list; add e.g. arch = [\"topk\", \"relu\"]")
    archs = _axis_values("arch", axes["arch"], "[axes] arch")
    for a, levels in sparsity.items():
        if a not in archs:
            raise GridError(f"[sparsity] names arch {a!r}, which is not in [axes] arch "
                            f"({', '.join(map(str, archs))})")
    axis_lists = {k: _axis_values(k, v, f"[axes] {k}") for k, v in axes.items()}
    others = [k for k in axis_lists if k not in ("arch", "k", "sparsity_coef")]
    sites = spec.sites if spec.source == "model" else (SITE,)
    runs, seen = [], set()
    for arch in archs:
        base = {**fixed, **per_arch.get(arch, {})}
        probe = _build(TrainConfig, {**base, "arch": arch, "width": base.get("width", 1 << 20)},
                       sites, f"arch {arch!r}")
        knob = "k" if takes_k(probe) else "sparsity_coef"
        if arch in sparsity:
            levels = _axis_values(knob, sparsity[arch], f"[sparsity] {arch}")
        elif knob in axis_lists:
            levels = axis_lists[knob]
        else:
            levels = [base.get(knob, getattr(probe, knob))]
        for level in levels:
            for combo in itertools.product(*(axis_lists[k] for k in others)):
                chosen = {"arch": arch, knob: level, **dict(zip(others, combo))}
                cfg = _build(TrainConfig, {**base, **chosen}, sites,
                             ", ".join(f"{k}={v}" for k, v in chosen.items()))
                rid = config_id(cfg, spec)
                if rid in seen:
                    continue  # e.g. a level equal to another axis' default
                seen.add(rid)
                runs.append(RunSpec(rid, cfg, chosen))
    save = output.get("save_dictionaries", True)
    every = output.get("checkpoint_every", 0)
    if not isinstance(save, bool):
        raise GridError(f"[output] save_dictionaries must be true or false, got {save!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise GridError(f"[output] checkpoint_every must be an integer >= 0, got {every!r}")
    name = data.get("name", "sweep")
    if not isinstance(name, str) or not name:
        raise GridError(f"name must be a non-empty string, got {name!r}")
    return SweepGrid(name, spec, tuple(runs), save, every)


def _build(TrainConfig, kw: dict, sites: tuple, what: str):
    kw = {"kind": "sae", **kw, "sites": sites}
    if kw.get("width") is None and kw.get("expansion") is None:
        raise GridError(f"run {what}: no width; add width to [axes] or [train]")
    try:
        return TrainConfig(**kw)
    except (ValueError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GridError(f"run {what}: {msg}") from None

"""Open any dictionary directory: ours, a circuit-tracer set or CLT, a SAELens folder.

Why: users point ``--dicts`` (and ``open_dictionaries``) at what they downloaded; the
format is in the files, so asking them to name it only adds a way to get it wrong.

Algorithm (``dictionary_format``, first match wins):
  1. ``index.json``: our own set (``save_dictionaries`` / ``circuits train``).
  2. ``W_enc_0.safetensors``, or a config.yaml with ``model_kind:
     cross_layer_transcoder``: a circuit-tracer CLT (``import_clt``).
  3. ``config.yaml`` or ``layer_<i>.safetensors`` files: a circuit-tracer per-layer
     transcoder set (``import_circuit_tracer``; hooks from config.yaml).
  4. ``cfg.json``: one SAELens SAE or transcoder (``import_saelens``).
  5. Sub-directories that each hold a ``cfg.json``: several SAELens folders (e.g. one
     per layer of a release), each imported; two on the same input site are refused.
  6. Anything else: ``FormatError`` naming the files looked for.
``open_dictionaries`` returns the mapping ``load_dictionaries`` returns: input Site ->
dictionary, and a name -> CLT. ``model`` is passed to every importer (layer and width
checks, norm folding); the model-identity check applies to our own sets, which record it.
A circuit-tracer set or CLT without ``feature_input_hook`` / ``feature_output_hook`` in
config.yaml is refused (its sites are unknown; the message says to write them there).
"""

from __future__ import annotations

from pathlib import Path

from sae.errors import FormatError

FORMATS = ("native", "circuit-tracer-clt", "circuit-tracer", "saelens", "saelens-set")
"""What ``dictionary_format`` can return."""


def _saelens_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and (p / "cfg.json").is_file())


def _require_hooks(path: Path, what: str, importer: str) -> None:
    """Refuse a circuit-tracer directory whose sites are unknown, with the fix a caller of
    ``open_dictionaries`` (or ``--dicts``) can apply: the importers' own message asks for
    ``in_hook=`` / ``out_hook=``, which this entry point does not take."""
    from sae.io.circuit_tracer import read_config

    cfg = read_config(path)
    if cfg is None or not cfg.feature_input_hook or not cfg.feature_output_hook:
        raise FormatError(
            f"{path}: a circuit-tracer {what} without feature_input_hook / feature_output_hook "
            "in config.yaml, so the sites it reads and writes are unknown; write a config.yaml "
            "there naming the hooks it was trained on (e.g. feature_input_hook: mlp.hook_in, "
            f"feature_output_hook: hook_mlp_out), or call sae.{importer}(path, in_hook=..., "
            "out_hook=...)")


def dictionary_format(path) -> str:
    """Which of ``FORMATS`` the directory holds (module docstring, steps 1-6)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FormatError(f"no dictionaries at {path}: not a directory")
    if (path / "index.json").is_file():
        return "native"
    if (path / "W_enc_0.safetensors").is_file():
        return "circuit-tracer-clt"
    if (path / "config.yaml").is_file():
        from sae.io.circuit_tracer import read_config

        cfg = read_config(path)
        return "circuit-tracer-clt" if cfg.model_kind == "cross_layer_transcoder" else "circuit-tracer"
    if any(path.glob("layer_*.safetensors")):
        return "circuit-tracer"
    if (path / "cfg.json").is_file():
        return "saelens"
    if _saelens_dirs(path):
        return "saelens-set"
    raise FormatError(
        f"no dictionaries at {path}: expected index.json (ours, from `circuits train`), "
        "config.yaml or layer_<i>.safetensors (circuit-tracer transcoders), W_enc_0.safetensors "
        "(circuit-tracer CLT) or cfg.json (SAELens, or sub-folders that each hold one)")


def open_dictionaries(path, *, model=None, force: bool = False) -> dict:
    """{input Site (or name for a CLT): dictionary} from any supported directory."""
    from sae.io.circuit_tracer import import_circuit_tracer
    from sae.io.clt import import_clt
    from sae.io.native import load_dictionaries
    from sae.io.saelens import import_saelens

    path = Path(path).expanduser()
    fmt = dictionary_format(path)
    if fmt == "native":
        return load_dictionaries(path, model=model, force=force)
    if fmt in ("circuit-tracer-clt", "circuit-tracer"):
        clt = fmt == "circuit-tracer-clt"
        _require_hooks(path, "CLT" if clt else "transcoder set",
                       "import_clt" if clt else "import_circuit_tracer")
    if fmt == "circuit-tracer-clt":
        return {path.name or "clt": import_clt(path, model=model)}
    if fmt == "circuit-tracer":
        return {d.in_site: d for d in import_circuit_tracer(path, model=model).values()}
    folders = [path] if fmt == "saelens" else _saelens_dirs(path)
    out: dict = {}
    seen: dict = {}
    for f in folders:
        d = import_saelens(f, model=model)
        if d.in_site in out:
            raise FormatError(f"{path}: SAELens folders {seen[d.in_site]} and {f.name} both read "
                              f"{d.in_site}; keep one per site")
        out[d.in_site] = d
        seen[d.in_site] = f.name
    return out


__all__ = ["FORMATS", "dictionary_format", "open_dictionaries"]

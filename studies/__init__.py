"""Reproducible studies of open questions in dictionary learning (issue 16, section 4).

One script per study; each has ``run(cfg, out_dir, progress=None) -> dict`` and a CLI
(``python -m studies.<name> --size full|small``) writing figures, ``results.md`` and
``results.json`` into ``studies/results/<name>/``. Nothing runs at import.
"""

"""Activations of a sweep: built once per ``run_sweep`` call, shared by every run.

Algorithm:
  1. Synthetic (``DataSpec.source == "synthetic"``): draw the truth of the spec's
     ``SyntheticConfig`` (``sae.synthetic.make_truth``); generate ``train_rows`` training
     rows (generator batches 0, 1, ...) and ``eval_rows`` held-out rows with their true
     codes (generator batch ``EVAL_BATCH``, far from any training batch), and
     ``dead_rows`` further held-out rows for the dead-latent count (generator batches
     ``DEAD_BATCH``, ``DEAD_BATCH + 1``, ...; streamed, never held whole with codes).
     Training cycles through the rows with ``ArraySource`` (a fresh permutation per epoch).
  2. Model: load the model (a shipped organism name or a directory), read the corpus the
     way ``circuits train`` does, harvest the spec's sites once into memory; evaluation
     uses ``eval_docs`` other documents (``circuits.pipeline.dictionaries.
     evaluate_dictionaries``: L0, FVU, dead, CE recovered, KL).
  3. ``data_fingerprint`` is the SHA-256 of the spec's record: a sweep directory stores
     it and refuses another data spec.
Nothing is built until a run needs training or evaluation (``SweepData`` is lazy), so a
fully finished sweep reruns without generating data.
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property

import numpy as np

from circuits.sweep.grid import SITE, DataSpec

EVAL_BATCH = 10 ** 6
"""Generator batch index of the held-out synthetic rows (training uses 0, 1, ...)."""
DEAD_BATCH = 2 * 10 ** 6
"""First generator batch index of the dead-count rows (``_GEN_BATCH`` rows per index)."""
_GEN_BATCH = 8192


def data_fingerprint(spec: DataSpec) -> str:
    """SHA-256 (hex) of the data spec's canonical JSON."""
    return hashlib.sha256(json.dumps(spec.record(), sort_keys=True).encode()).hexdigest()


class SweepData:
    """Lazily built training source and evaluation inputs for one ``DataSpec``."""

    def __init__(self, spec: DataSpec):
        self.spec = spec

    # ------------------------------------------------------------- synthetic ----
    @cached_property
    def truth(self):
        """The ``SyntheticTruth`` (synthetic specs only)."""
        from sae.synthetic import make_truth

        return make_truth(self.spec.synthetic_config())

    @cached_property
    def eval_batch(self):
        """Held-out ``SyntheticBatch`` with codes (synthetic specs only)."""
        from sae.synthetic import sample

        return sample(self.truth, self.spec.eval_rows, EVAL_BATCH)

    @cached_property
    def dead_rows(self) -> np.ndarray:
        """[dead_rows, d] float32 held-out rows for the dead-latent count (synthetic only)."""
        from sae.synthetic import sample

        n = self.spec.dead_rows
        return np.concatenate([sample(self.truth, min(_GEN_BATCH, n - b), DEAD_BATCH + i,
                                      return_codes=False).x
                               for i, b in enumerate(range(0, n, _GEN_BATCH))])

    # ----------------------------------------------------------------- model ----
    @cached_property
    def model(self):
        """The loaded model (model specs only)."""
        from pathlib import Path

        from attribution import load_model
        from circuits.organisms import SHIPPED

        from circuits.sweep.grid import GridError

        p = Path(self.spec.model).expanduser()
        if not p.is_dir() and (SHIPPED / self.spec.model).is_dir():
            p = SHIPPED / self.spec.model
        if not p.is_dir():
            raise GridError(f"[data] model {self.spec.model!r} is neither a shipped organism nor "
                            "a model directory; pass e.g. \"ioi\" or a local model path")
        return load_model(str(p))

    # -------------------------------------------------------------- training ----
    @cached_property
    def source(self):
        """The ``ArraySource`` every run trains on."""
        from sae import ArraySource

        if self.spec.source == "synthetic":
            from sae.synthetic import sample

            n = self.spec.train_rows
            x = np.concatenate([sample(self.truth, min(_GEN_BATCH, n - b), i, return_codes=False).x
                                for i, b in enumerate(range(0, n, _GEN_BATCH))])
            return ArraySource({SITE: x})
        from circuits.pipeline.corpus import corpus_texts
        from circuits.pipeline.dictionaries import HARVEST_BATCH, context_len
        from sae.data.harvest import harvest

        texts = corpus_texts(self.model, self.spec.corpus, self.spec.n_docs, seed=1)
        arrays: dict = {}
        for chunk in harvest(self.model, texts, self.spec.sites,
                             context_len=context_len(self.model), batch_size=HARVEST_BATCH):
            for s, a in chunk.items():
                arrays.setdefault(s, []).append(np.asarray(a, np.float32))
        return ArraySource({s: np.concatenate(v) for s, v in arrays.items()})

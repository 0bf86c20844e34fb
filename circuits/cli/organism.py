"""``circuits organism``: list, train, inspect and recompute ground truth for organisms.

Algorithm:
  1. ``list`` prints each recipe and whether its shipped weights exist.
  2. ``train NAME`` trains the recipe with a seed into ``--out/NAME`` (staged),
     annotates the card and ground truth, with a progress bar.
  3. ``card NAME`` prints the model card; ``ground-truth NAME`` recomputes it.
"""

from __future__ import annotations

from pathlib import Path

from circuits.cli._common import progress, staged
from circuits.cli._out import emit


CHECKS_OUT_ITSELF = True
"""``--out`` is a parent directory: ``staged(OUT/NAME)`` checks the real output."""


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="list, train or inspect the model organisms")
    osub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    osub.add_parser("list", help="the organisms and where they are")
    t = osub.add_parser("train", help="train an organism from its recipe")
    t.add_argument("name")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", type=Path, default=Path("out/organisms"),
                   help="parent directory; the organism is written to OUT/NAME")
    t.add_argument("--overwrite", action="store_true", help="replace an existing OUT/NAME")
    t.add_argument("--no-ground-truth", action="store_true", help="skip head scores and the ground-truth search")
    c = osub.add_parser("card", help="print an organism's model card")
    c.add_argument("name")
    g = osub.add_parser("ground-truth", help="recompute an organism's exact-patching ground truth")
    g.add_argument("name", help="shipped organism name or model directory")
    g.add_argument("--write", action="store_true", help="store ground_truth.json beside the weights")


def run(args) -> int:
    from circuits import organisms

    if args.action == "list":
        rec = {n: str(organisms.SHIPPED / n) for n in organisms.names()}
        emit(args, rec, [f"{n:12s} {p}" for n, p in rec.items()])
    elif args.action == "card":
        card = organisms.card(args.name)
        emit(args, card, [f"{k}: {v}" for k, v in card.items() if k not in ("model_config", "recipe")])
    elif args.action == "ground-truth":
        with progress(args, "ground truth") as bar:
            gt = organisms.ground_truth(args.name, write=args.write,
                                        on_progress=lambda stage, d, t: bar(d, t))
        rec = gt.to_dict() if hasattr(gt, "to_dict") else {"ground_truth": str(gt)}
        emit(args, rec, [f"{t}: {', '.join(map(str, g.circuit))}" for t, g in gt.tasks.items()]
             if hasattr(gt, "tasks") else [str(gt)])
    else:
        return _train(args, organisms)
    return 0


def _train(args, organisms) -> int:
    from circuits.organisms.ship import ship

    from circuits.organisms.card import read_card
    from circuits.organisms.training import train

    from circuits.errors import OrganismError

    if args.name not in organisms.RECIPES:
        raise OrganismError(f"unknown organism {args.name!r}; known: {', '.join(organisms.RECIPES)}")
    out = Path(args.out) / args.name
    total = organisms.RECIPES[args.name].steps
    with staged(out) as tmp:
        with progress(args, f"train {args.name}", total) as bar:
            if args.no_ground_truth:
                train(args.name, tmp, seed=args.seed, on_step=lambda step, loss, lr: bar(step, loss=loss))
            else:
                ship(args.name, tmp, seed=args.seed, on_step=lambda step, loss, lr: bar(step, loss=loss))
        card = read_card(tmp)
    rec = {"out": str(out), "card": card}
    emit(args, rec, [f"trained {args.name} -> {out}"] + [
        f"{k}: {v}" for k, v in card.items() if k not in ("model_config", "recipe", "heads", "ground_truth")])
    return 0

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


def add_parser(sub, name: str) -> None:
    p = sub.add_parser(name, help="list, train or inspect the model organisms")
    osub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    osub.add_parser("list", help="the organisms and where they are")
    t = osub.add_parser("train", help="train an organism from its recipe")
    t.add_argument("name")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--steps", type=int, default=None, help="override the recipe's step count")
    t.add_argument("--out", type=Path, default=Path("out/organisms"))
    t.add_argument("--no-ground-truth", action="store_true", help="skip the ground-truth search")
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
                                        on_progress=lambda d, t, *a: bar(d, t))
        rec = gt.to_dict() if hasattr(gt, "to_dict") else {"ground_truth": str(gt)}
        emit(args, rec, [f"{t}: {', '.join(map(str, g.circuit))}" for t, g in gt.tasks.items()]
             if hasattr(gt, "tasks") else [str(gt)])
    else:
        return _train(args, organisms)
    return 0


def _train(args, organisms) -> int:
    from circuits.organisms.ship import ship

    out = Path(args.out) / args.name
    with staged(out) as tmp, progress(args, f"train {args.name}", args.steps) as bar:
        result = ship(args.name, tmp, seed=args.seed, steps=args.steps,
                      ground_truth=not args.no_ground_truth,
                      on_step=lambda step, loss, lr: bar(step, loss=loss))
    card = organisms.card_at(out) if hasattr(organisms, "card_at") else {}
    rec = {"out": str(out), "result": getattr(result, "_asdict", lambda: str(result))()}
    emit(args, rec, [f"trained {args.name} -> {out}"] + [f"{k}: {v}" for k, v in card.items()
                                                          if k in ("accuracy", "train_seconds")])
    return 0

"""`mvos soup`: model soups (Wortsman et al., ICML 2022) of mobilevos checkpoints of one architecture.

Uniform: the plain average of every ingredient's weights. Greedy: ingredients sorted by validation J&F, best
first; each is added to the soup only if the soup's J&F does not drop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import torch

from mvos.runtime.backbones import check_state_dict
from mvos.runtime.checkpoint import read_checkpoint, save_checkpoint
from mvos.runtime.errors import MvosError
from mvos.runtime.model import MobileVOS, MobileVOSConfig

Scorer = Callable[[MobileVOS], float]


def read_ingredients(paths: list[Path]) -> list[dict]:
    """Checkpoints, checked to share one architecture (variant, config, tensor names and shapes)."""
    if not paths:
        raise MvosError("a soup needs at least one checkpoint")
    ingredients = [read_checkpoint(p) for p in paths]
    first = ingredients[0]
    for path, data in zip(paths[1:], ingredients[1:]):
        if data["variant"] != first["variant"] or data["config"] != first["config"]:
            raise MvosError(f"{path} is a different architecture ({data['variant']}) from {paths[0]} "
                            f"({first['variant']}); soups average models of one architecture")
        check_state_dict(first["model"], data["model"], f"the ingredient {paths[0]}")
    return ingredients


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Mean of each floating tensor (accumulated in float64); integer buffers (BatchNorm batch counters)
    are bookkeeping and are taken from the first state."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            total = sum(s[key].to(torch.float64) for s in states)
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    return out


def model_from(ingredient: dict, state: dict[str, torch.Tensor]) -> MobileVOS:
    model = MobileVOS(MobileVOSConfig.from_dict(ingredient["config"]), variant=ingredient["variant"])
    model.load_state_dict(state)
    return model.eval()


def uniform_soup(ingredients: list[dict]) -> MobileVOS:
    return model_from(ingredients[0], average_states([i["model"] for i in ingredients]))


def greedy_soup(ingredients: list[dict], score: Scorer, names: list[str] | None = None,
                echo: Callable[[str], None] = lambda _: None) -> tuple[MobileVOS, dict]:
    """Returns the soup and a record: each ingredient's score, the order tried, which were kept, the soup's score."""
    names = names or [str(i) for i in range(len(ingredients))]
    scores = []
    for name, ingredient in zip(names, ingredients):
        scores.append(score(model_from(ingredient, ingredient["model"])))
        echo(f"ingredient {name}: J&F {scores[-1]:.4f}")
    order = sorted(range(len(ingredients)), key=lambda i: -scores[i])  # stable: ties keep the given order
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = score(model_from(ingredients[i], average_states([ingredients[k]["model"] for k in kept + [i]])))
        added = candidate >= best
        echo(f"soup + {names[i]}: J&F {candidate:.4f} ({'kept' if added else 'dropped'}; soup was {best:.4f})")
        if added:
            kept.append(i)
            best = candidate
    soup = model_from(ingredients[0], average_states([ingredients[k]["model"] for k in kept]))
    record = {"scores": {names[i]: scores[i] for i in range(len(names))}, "order": [names[i] for i in order],
              "kept": [names[i] for i in kept], "soup_score": best}
    return soup, record


@click.command("soup")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Checkpoint to write.")
@click.option("--greedy", is_flag=True, help="Greedy soup by validation J&F (needs --val-root).")
@click.option("--val-root", type=click.Path(path_type=Path), default=None, help="Validation dataset root.")
@click.option("--dataset", default="davis2017", show_default=True, help="davis2017 | davis2016.")
@click.option("--split", default="val", show_default=True)
@click.option("--sequences", multiple=True, help="Only these sequences (comma-separated or repeated).")
@click.option("--size", type=click.IntRange(min=16), default=480, show_default=True, help="Short side.")
@click.option("--queue-len", type=click.IntRange(1, 20), default=2, show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="CPU threads for validation.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out checkpoint.")
def soup_command(checkpoints: tuple[Path, ...], out: Path, greedy: bool, val_root: Path | None, dataset: str,
                 split: str, sequences: tuple[str, ...], size: int, queue_len: int, threads: int | None,
                 overwrite: bool) -> None:
    """Average checkpoints of one architecture into a uniform (default) or greedy soup."""
    from mvos.runtime.io import check_output
    from mvos.training.trainer import score_model

    check_output(out, inputs=(*checkpoints, val_root), overwrite=overwrite)
    if threads is not None:
        torch.set_num_threads(threads)
    if greedy and val_root is None:
        raise MvosError("--greedy ranks ingredients by validation J&F: pass --val-root")
    paths = list(checkpoints)
    ingredients = read_ingredients(paths)
    names = [str(p) for p in paths]
    wanted = [s for item in sequences for s in item.split(",") if s] or None

    def score(model: MobileVOS) -> float:
        return score_model(model, dataset, val_root, split, wanted, size, queue_len)["val_JF"]

    if greedy:
        soup, record = greedy_soup(ingredients, score, names, echo=click.echo)
        record["method"] = "greedy"
    else:
        soup = uniform_soup(ingredients)
        record = {"method": "uniform", "kept": names}
        if val_root is not None:
            record["soup_score"] = score(soup)
    save_checkpoint(out, soup, soup=record)
    summary = f" (J&F {record['soup_score']:.4f})" if "soup_score" in record else ""
    click.echo(f"wrote {out}: {record['method']} soup of {len(record['kept'])} of {len(paths)} checkpoints{summary}")

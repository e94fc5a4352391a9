"""`mvos soup`: model soups (Wortsman et al., ICML 2022) of mobilevos checkpoints of one architecture.

Uniform: the plain average of every ingredient's weights. Greedy: ingredients sorted by validation J&F, best
first; each is added to the soup only if the soup's J&F does not drop.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mvos.runtime.backbones import check_state_dict
from mvos.runtime.checkpoint import read_checkpoint
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

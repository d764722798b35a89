"""Models compared with the main one (the ``compare`` config key)."""

from __future__ import annotations

from typing import Mapping

MODEL_SECTIONS = ("cascade", "degrade", "diffusion", "model", "predictor", "skullstrip", "train")


RUN_ONLY = ("checkpoint_every", "loader_workers")  # train keys that do not change the trained model


def model_config(config: Mapping) -> dict:
    """The part of the workflow config a trained model depends on.

    Sections cascade, degrade, diffusion, model and train, less what only
    says how a run proceeds (``RUN_ONLY``): resuming is exact, so how often
    training saves its resume checkpoint does not change the model, nor do
    the processes that make its patches (each step's patches are a function
    of the seed and the step); changing them must not re-run training.
    """
    out = {key: dict(config[key]) for key in MODEL_SECTIONS}
    for key in RUN_ONLY:
        out["train"].pop(key, None)
    return out


def compare_configs(model_config: Mapping, compare: Mapping[str, Mapping]) -> dict[str, dict]:
    """{name: the main model config with the comparison's ``model``/``train`` keys overridden}.

    ``model_config`` is the part of the config a trained model depends on
    (``model_config(config)``). A key the main config does
    not have is refused with its full name, so a typo cannot silently compare
    the main model with itself.
    """
    out = {}
    for name, overrides in compare.items():
        merged = {key: dict(value) if isinstance(value, Mapping) else value for key, value in model_config.items()}
        for section in ("model", "train"):
            for key, value in (overrides.get(section) or {}).items():
                if key not in model_config[section]:
                    known = ", ".join(sorted(model_config[section]))
                    raise ValueError(f"compare.{name}.{section}.{key}: no such {section} setting (known: {known})")
                merged[section][key] = value
        if merged == dict(model_config):
            raise ValueError(f"compare.{name}: overrides nothing, so it would be the main model again")
        out[name] = merged
    return out

"""The workflow config's schema, and the typed objects that code reads config sections through.

``config.schema.yaml`` (beside this file, and linked from ``config/`` for
Snakemake) types, defaults and describes every key. The Snakefile validates
the whole config against it before anything runs; code that reads one
section outside the workflow (the CLI, a stage checkpoint's stored config)
goes through ``section``, which fills the schema's defaults and validates
the same way. The defaults therefore live in one place: the schema.

A section that several layers read becomes one frozen dataclass built by
``from_mapping`` (``SamplingOptions`` and ``TrainSettings`` here; ``diffusion.parameterization.
Parameterization`` for the diffusion section's prediction settings), so it is
validated once, where it enters, and passed on whole.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A config value the schema or a cross-key rule refuses; the message names the key."""


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def schema() -> dict:
    """The workflow config's JSON schema (a copy: callers may change it)."""
    return copy.deepcopy(_schema())


def section_defaults(name: str) -> dict[str, Any]:
    """{key: default} of one top-level section, as the schema gives them."""
    properties = _section_schema(name).get("properties", {})
    return {key: copy.deepcopy(spec["default"]) for key, spec in properties.items() if "default" in spec}


def _section_schema(name: str) -> dict:
    sections = _schema()["properties"]
    if name not in sections:
        raise ConfigError(f"no config section {name!r}; known: {', '.join(sections)}")
    return sections[name]


def section(name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """One section with the schema's defaults filled in, validated against its schema.

    Raises ``ConfigError`` naming the first offending key, e.g.
    ``sampling.steps: 0 is less than the minimum of 1``.
    """
    from jsonschema import Draft202012Validator

    out = {**section_defaults(name), **dict(values)}
    errors = sorted(Draft202012Validator(_section_schema(name)).iter_errors(out), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = ".".join([name, *(str(p) for p in first.path)])
        raise ConfigError(f"{where}: {first.message}")
    return out


# Keys that moved, old dotted name -> new: a config that still sets one is refused with where it went.
MOVED_KEYS = {
    "sampling.calibration_subjects": "calibration.subjects",
    "sampling.calibration": "calibration.method",
}


def refuse_moved_keys(config: Mapping[str, Any]) -> None:
    """``ConfigError`` naming the first key of ``MOVED_KEYS`` that ``config`` still sets, and its new place
    (the schema's own error would say only that the key is not allowed)."""
    for old, new in MOVED_KEYS.items():
        name, key = old.split(".")
        if isinstance(config.get(name), Mapping) and key in config[name]:
            raise ConfigError(f"{old}: moved to {new}; write it as {new.split('.')[0]}: {{{new.split('.')[1]}: "
                              f"{config[name][key]!r}}}")


def check_combinations(diffusion: Mapping[str, Any], sampling: Mapping[str, Any]) -> None:
    """Refuse combinations of valid keys that cannot work, with a one-line reason (``ConfigError``).

    - The ``seed`` schedule's ᾱ_t underflows to 0 in float32 from t ≈ 491, so an
      ``eps`` network's x0 = (x_t - sqrt(1 - ᾱ) eps) / sqrt(ᾱ) divides by zero,
      and ``edm``'s noise level sqrt((1 - ᾱ) / ᾱ) is infinite.
    - The ``predictor`` estimate needs a predictor: ``diffusion.target: predictor_residual``.
    - The ``posterior_mean`` estimate is the x0 prediction at t = T, where an
      ``eps`` network's x0 divides by sqrt(ᾱ_T) (about 0.006 for the cosine
      schedule): it multiplies the network's error by over 150.
    """
    d = {**section_defaults("diffusion"), **dict(diffusion)}
    estimate = {**section_defaults("sampling"), **dict(sampling)}["estimate"]
    if estimate == "predictor" and d["target"] != "predictor_residual":
        raise ConfigError(f"sampling.estimate: 'predictor' is the stage predictor's output, which only the "
                          f"predict-and-refine design has (diffusion.target: predictor_residual, not {d['target']!r})")
    if d["schedule"] == "seed" and d["prediction"] in ("eps", "edm"):
        raise ConfigError(f"diffusion.prediction: {d['prediction']!r} cannot be used with schedule 'seed', whose "
                          "ᾱ_t underflows to 0 from t ≈ 491 (x0 from it divides by zero); use x0 or v")
    if estimate == "posterior_mean" and d["prediction"] == "eps":
        raise ConfigError("sampling.estimate: 'posterior_mean' is the x0 prediction at t = T, which an 'eps' network "
                          "gives only by dividing by sqrt(ᾱ_T) ≈ 0; use prediction x0, v or edm, or estimate sample_mean")


@dataclass(frozen=True)
class TrainSettings:
    """How one network of a stage trains: the ``train`` section (the diffusion model) or the ``predictor``
    section (the stage's predictor; predict, then refine), meanings in the schema.

    Build it with ``from_section``, which fills the schema's defaults and validates; keys one section has and
    the other has not take the defaults below, which say what their absence means.
    """

    steps: int
    batch_size: int
    patch_size: int
    lr: float
    warmup_steps: int
    ema_decay: float
    grad_clip: float
    flip: bool
    val_every: int
    val_patches: int
    seed: int
    objective: Literal["diffusion", "regression"] = "diffusion"  # train only
    t_end_fraction: float = 0.0  # train only
    cond_augment: Mapping[str, Any] = field(default_factory=dict)  # train only: stages after the first
    intensity_augment: Mapping[str, Any] = field(default_factory=dict)  # both: training.patches.IntensityAugment
    loss: Literal["mse", "l1"] = "mse"  # predictor only

    @classmethod
    def from_section(cls, name: Literal["train", "predictor"], values: Mapping[str, Any]) -> "TrainSettings":
        checked = section(name, values)
        return cls(**{f.name: checked[f.name] for f in fields(cls) if f.name in checked})


Estimate = Literal["predictor", "sample_mean", "posterior_mean"]
Variance = Literal["posterior", "analytic"]
SamplerName = Literal["ancestral", "ddim"]


@dataclass(frozen=True)
class SamplingOptions:
    """The ``sampling`` section: how a trained cascade draws its output (meanings in the schema).

    Build it with ``from_mapping``, which fills the schema's defaults,
    validates every key and the rules between keys; the workflow, the CLI and
    the report all do, so a setting means the same thing everywhere.
    """

    method: SamplerName
    steps: int
    eta: float
    patch_size: int
    overlap: float
    batch_size: int
    start_t: int | None
    n_samples: int
    estimate: Estimate
    flip_ensemble: bool
    variance: Variance
    data_consistency: int
    seed: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "SamplingOptions":
        checked = section("sampling", values)
        return cls(**{f.name: checked[f.name] for f in fields(cls)})

    def __post_init__(self) -> None:
        if self.estimate == "posterior_mean" and self.start_t is not None:
            raise ConfigError("sampling.estimate: 'posterior_mean' needs the reverse process to start "
                              "from pure noise (sampling.start_t: null)")

    @property
    def steps_run(self) -> int:
        """The reverse steps that run: with the posterior-mean estimate and one
        sample only the first step's x0 prediction is kept, so only that step
        runs (the later ones would change nothing); with the predictor's
        estimate and one sample, none."""
        if self.estimate == "predictor" and self.n_samples == 1:
            return 0
        if self.estimate == "posterior_mean" and self.n_samples == 1:
            return 1
        return self.steps

    def with_values(self, **changes: Any) -> "SamplingOptions":
        """A copy with some keys changed, validated like the original."""
        return type(self).from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line for logs: what runs, e.g. 'ddim 2 step(s), 3 sample(s), posterior_mean over flips, ...'."""
        flips = " over flips" if self.flip_ensemble else ""
        return (f"{self.method} {self.steps_run} step(s), {self.n_samples} sample(s), "
                f"{self.estimate}{flips}, {self.variance} variance")


@dataclass(frozen=True)
class CalibrationSettings:
    """The ``calibration`` section: on how many validation subjects, and how, the sd map is calibrated (meanings
    in the schema). Built once with ``from_mapping`` where the section enters (the workflow's ``common.smk``)."""

    subjects: int
    method: Literal["floor_scale", "scale"]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "CalibrationSettings":
        checked = section("calibration", values)
        return cls(subjects=int(checked["subjects"]), method=checked["method"])


@dataclass(frozen=True)
class ApplySettings:
    """The ``apply`` section: which trained cascade apply mode runs, and what it writes (meanings in the schema).

    Built once with ``from_mapping`` where the section enters (the workflow's
    ``common.smk``); ``enabled`` is apply mode.
    """

    checkpoints: tuple[str, ...]
    test_derivatives: bool
    qc_panels: int
    sd_calibration: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ApplySettings":
        checked = section("apply", values)
        if checked["checkpoints"] and checked["test_derivatives"]:
            raise ConfigError("apply.test_derivatives: writes a training run's test subjects; apply mode "
                              "(apply.checkpoints set) writes every scan as a derivative already")
        if checked["sd_calibration"] and not checked["checkpoints"]:
            raise ConfigError("apply.sd_calibration: calibrates apply mode's sd maps; set apply.checkpoints too (a "
                              "training run calibrates its own with calibration.subjects)")
        return cls(checkpoints=tuple(str(p) for p in checked["checkpoints"]),
                   test_derivatives=bool(checked["test_derivatives"]), qc_panels=int(checked["qc_panels"]),
                   sd_calibration=checked["sd_calibration"])

    @property
    def enabled(self) -> bool:
        """Apply mode: a trained cascade is given, so there is no split, training or evaluation."""
        return bool(self.checkpoints)

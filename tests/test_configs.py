"""The shipped configs: config.yaml plus the GPU-sized config/hcp_gpu.yaml validate and build."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from snakemake.utils import validate

from conftest import REPO
from mrisr.config import SamplingOptions
from mrisr.diffusion.nets import unet_from_config

SCHEMA = REPO / "config" / "config.schema.yaml"


def merged(*names: str) -> dict:
    """Config files merged as Snakemake merges --configfile files: later keys replace earlier ones."""
    def update(base: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                update(base[key], value)
            else:
                base[key] = copy.deepcopy(value)

    config: dict = {}
    for name in names:
        update(config, yaml.safe_load((REPO / "config" / name).read_text()))
    validate(config, str(SCHEMA))
    return config


def test_hcp_gpu_config_sets_only_model_training_and_sampling_keys():
    keys = set(yaml.safe_load((REPO / "config" / "hcp_gpu.yaml").read_text()))
    assert keys == {"predictor", "model", "train", "sampling", "device"}, "data-source keys belong to config/hcp.yaml"


def test_hcp_gpu_config_validates_and_its_model_fits_its_patches():
    config = merged("config.yaml", "hcp_gpu.yaml")
    assert config["source"] == "demo", "keys hcp_gpu.yaml does not set keep their values"
    assert config["device"] == "cuda" and config["train"]["checkpoint_every"] == 1000
    with torch.device("meta"):
        model = unet_from_config(config["model"])
    assert 40e6 < sum(p.numel() for p in model.parameters()) < 60e6  # "51 M parameters" in its comment
    for key in ("train", "sampling"):
        assert config[key]["patch_size"] % model.divisor == 0
    # the sd map's samples: 20 passes of the U-Net per volume (2.73 s each on an H200: under a GPU-minute)
    options = SamplingOptions.from_mapping(config["sampling"])
    assert options.n_samples * options.steps_run <= 20


def test_demo_gpu_config_is_the_demo_with_more_training():
    keys = set(yaml.safe_load((REPO / "config" / "demo_gpu.yaml").read_text()))
    assert keys == {"predictor", "model", "train", "sampling", "device"}, "the cohort and protocol stay the demo's"
    config = merged("config.yaml", "demo_gpu.yaml")
    assert config["source"] == "demo" and config["diffusion"]["target"] == "predictor_residual"
    assert config["device"] == "cuda" and config["predictor"]["steps"] >= 10 * 200
    model = unet_from_config(config["model"], cond_channels=2)
    assert config["train"]["patch_size"] % model.divisor == 0 and config["predictor"]["patch_size"] % 2 == 0


@pytest.mark.slow
def test_hcp_gpu_training_step_costs_what_its_comment_says():
    """33 TFLOP per step (8 patches of 64^3, forward and backward), counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    config = merged("config.yaml", "hcp_gpu.yaml")
    batch, patch = config["train"]["batch_size"], config["train"]["patch_size"]
    with torch.device("meta"):
        model = unet_from_config(config["model"])
        x = torch.zeros(batch, 1, patch, patch, patch)
        counter = FlopCounterMode(display=False)
        with counter:
            model(x, x, torch.zeros(batch, dtype=torch.long)).sum().backward()
    assert round(counter.get_total_flops() / 1e12) == 33


@pytest.mark.parametrize("diffusion, sampling, message", [
    ({"schedule": "seed", "prediction": "eps"}, {"estimate": "sample_mean"}, "cannot be used with schedule 'seed'"),
    ({"schedule": "seed", "prediction": "edm"}, {}, "cannot be used with schedule 'seed'"),
    ({"schedule": "cosine", "prediction": "eps"}, {"estimate": "posterior_mean"}, "divid"),
])
def test_broken_combinations_are_refused_with_a_reason(diffusion, sampling, message):
    from mrisr.config import ConfigError, check_combinations

    with pytest.raises(ConfigError, match=message):
        check_combinations(diffusion, sampling)


def test_working_combinations_pass():
    from mrisr.config import check_combinations

    check_combinations({"schedule": "seed", "prediction": "x0"}, {"estimate": "posterior_mean"})
    check_combinations({"schedule": "cosine", "prediction": "eps"}, {"estimate": "sample_mean"})
    config = merged("config.yaml")
    check_combinations(config["diffusion"], config["sampling"])


def test_cascade_x4_config_is_a_two_stage_x4_cascade_with_augmentation_compared_to_none():
    """config/cascade_x4.yaml over the demo's: x4 in two x2 stages, stage 2 conditioning-augmented, and the
    comparison model the same cascade without augmentation (and nothing else changed)."""
    from mrisr.compare import compare_configs, model_config

    config = merged("config.yaml", "cascade_x4.yaml")
    assert config["cascade"]["factors"] == [2, 2]
    assert config["train"]["cond_augment"]["blur"] > 0 and config["train"]["cond_augment"]["noise"] > 0
    assert config["train"]["steps"] == merged("config.yaml")["train"]["steps"]  # the demo's recipe otherwise
    main = model_config(config)
    other = compare_configs(main, config["compare"])["no_augment"]
    assert other["train"]["cond_augment"] == {"blur": 0.0, "noise": 0.0}
    assert {k: v for k, v in other["train"].items() if k != "cond_augment"} == \
        {k: v for k, v in main["train"].items() if k != "cond_augment"}


def test_apply_demo_config_applies_the_demo_model_with_its_calibrated_sd():
    """config/apply_demo.yaml: apply mode with the demo's checkpoint and the sd scale the demo run fits
    (where workflow/rules/infer.smk writes it)."""
    from mrisr.config import ApplySettings

    settings = ApplySettings.from_mapping(merged("config.yaml", "apply_demo.yaml")["apply"])
    assert settings.enabled and settings.checkpoints == ("results/models/stage1/checkpoint.pt",)
    assert settings.sd_calibration == "results/calibration/sd_calibration.json"
    assert f'json="{settings.sd_calibration}"' in (REPO / "workflow" / "rules" / "infer.smk").read_text()


def test_openneuro_config_is_a_data_source_config_that_takes_the_gpu_model():
    keys = set(yaml.safe_load((REPO / "config" / "openneuro.yaml").read_text()))
    assert keys == {"source", "openneuro"}, "model keys belong to config/hcp_gpu.yaml"
    config = merged("config.yaml", "openneuro.yaml", "hcp_gpu.yaml")
    assert config["source"] == "openneuro" and config["device"] == "cuda"
    assert config["model"] == merged("config.yaml", "hcp_gpu.yaml")["model"]
    from mrisr.data.sources import data_identity, ships_mask, subject_ids

    subjects = subject_ids(config)
    assert subjects == [f"sub-{n:02d}" for n in range(1, 73)]
    assert not ships_mask(config)
    assert data_identity(config) == {"bucket": "openneuro.org", "accession": "ds002748", "session": None}


def test_train_settings_are_one_typed_object_with_the_schemas_defaults_validated_once():
    from mrisr.config import ConfigError, TrainSettings, section_defaults

    train = TrainSettings.from_section("train", {"steps": 12})
    assert train.steps == 12 and train.lr == section_defaults("train")["lr"] and train.objective == "diffusion"
    predictor = TrainSettings.from_section("predictor", {})
    assert predictor.loss == section_defaults("predictor")["loss"] and predictor.flip is True
    assert predictor.cond_augment == {} and predictor.t_end_fraction == 0.0  # keys the predictor has not
    with pytest.raises(ConfigError, match=r"predictor\.loss"):
        TrainSettings.from_section("predictor", {"loss": "l2"})
    with pytest.raises(ConfigError, match=r"train\.steps"):
        TrainSettings.from_section("train", {"steps": 0})


def test_thick_slice_config_is_the_demo_with_thick_slices_along_one_axis():
    """config/thick_slice.yaml: the demo's recipe on slice-profile LRs, x4 along the third axis only, its
    patches divisible by the factor along every axis; a bad per-axis factor is refused by the schema."""
    from snakemake.exceptions import WorkflowError

    from mrisr.diffusion.cascade import total_factor

    config = merged("config.yaml", "thick_slice.yaml")
    assert config["degrade"]["method"] == "slice" and total_factor(config["cascade"]["factors"]) == (1, 1, 4)
    demo = merged("config.yaml")
    assert config["skullstrip"]["normalise"] == "field_of_view"  # no brain extraction on 8 mm slices
    assert {k: v for k, v in config.items() if k not in ("degrade", "cascade", "skullstrip")} == \
        {k: v for k, v in demo.items() if k not in ("degrade", "cascade", "skullstrip")}
    assert all(config[s]["patch_size"] % 4 == 0 for s in ("predictor", "train"))
    for bad in ([[1, 1]], [[1, 1, 1]], [[0, 1, 4]], [1]):
        with pytest.raises(WorkflowError):
            validate({**demo, "cascade": {"factors": bad}}, str(SCHEMA))


def test_research_settings_are_marked_in_the_schema_and_listed_in_the_docs():
    """Every key the schema marks x-research (with what was measured) is in docs/configuration.md's table of
    research settings, and nothing else is; no shipped config moves one from its default."""
    import re

    from mrisr.config import schema

    marked = {f"{name}.{key}" for name, spec in schema()["properties"].items()
              for key, sub in spec.get("properties", {}).items() if sub.get("x-research")}
    text = (REPO / "docs" / "configuration.md").read_text()
    table = text.split("| key | why it is a research setting |", 1)[1].split("\n\n", 1)[0]
    listed = {k for row in table.splitlines()[2:] for k in re.findall(r"`([a-z_]+\.[a-z_]+)`", row.split("|")[1])}
    assert marked == listed and len(marked) >= 10
    shipped = {p.name: yaml.safe_load(p.read_text()) or {} for p in (REPO / "config").glob("*.yaml")
               if p.name != "config.schema.yaml"}
    for name, config in shipped.items():
        for key in marked:
            section, sub = key.split(".")
            value = (config.get(section) or {}).get(sub)
            default = schema()["properties"][section]["properties"][sub].get("default")
            assert value in (None, default), (name, key)


def test_a_moved_key_is_refused_with_its_new_place():
    from mrisr.config import CalibrationSettings, ConfigError, refuse_moved_keys

    refuse_moved_keys({"sampling": {"n_samples": 3}, "calibration": {"subjects": 2}})
    with pytest.raises(ConfigError, match=r"sampling.calibration: moved to calibration.method; write it as "
                                          r"calibration: \{method: 'scale'\}"):
        refuse_moved_keys({"sampling": {"calibration": "scale"}})
    assert CalibrationSettings.from_mapping({}) == CalibrationSettings(subjects=4, method="floor_scale")
    with pytest.raises(ConfigError, match="calibration.method: 'sd' is not one of"):
        CalibrationSettings.from_mapping({"method": "sd"})
    with pytest.raises(ConfigError, match="sampling: Additional properties are not allowed"):
        SamplingOptions.from_mapping({"calibration_subjects": 2})

"""The Slurm profile without a real cluster: where each rule's jobs would go, as Snakemake resolves it.

The rules are the ones the workflow defines for each config (tests/rule_settings.py
lists them through Snakemake's own command line), never a list kept here: a GPU
rule added later is checked as soon as it exists. tests/test_slurm.py runs the
profile on a real cluster.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, TINY_CONFIG

PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
GPU_PARTITION, GPU_ACCOUNT, CPU_PARTITION = "mrisr-gpu", "mrisr-gpu-account", "mrisr-cpu"


def user_profile(tmp_path: Path, gpu_jobs: dict | None = None, **rules: dict) -> Path:
    """profiles/slurm with what a user sets: the CPU partition, ``gpu_jobs`` and entries for ``rules``."""
    profile = yaml.safe_load(PROFILE.read_text())
    profile["default-resources"]["slurm_partition"] = CPU_PARTITION
    profile["set-resources"]["gpu_jobs"] |= gpu_jobs or {}
    for rule, values in rules.items():
        profile["set-resources"].setdefault(rule, {}).update(values)
    folder = tmp_path / "profile"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile))
    return folder


def rule_settings(tmp_path: Path, profile: Path, *configs: Path) -> dict:
    """{rule: {"resources", "local", "group"}} of the workflow under ``profile`` and ``configs``."""
    out = tmp_path / f"rules_{len(list(tmp_path.glob('rules_*')))}.json"
    cmd = [sys.executable, str(REPO / "tests" / "rule_settings.py"), str(out), "--profile", str(profile),
           "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile", *map(str, configs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


def apply_config(tmp_path: Path) -> Path:
    """Apply mode on two HCP subjects, with a one-stage checkpoint whose config is the tiny one (no weights)."""
    from mrisr.compare import model_config

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for key, value in yaml.safe_load(TINY_CONFIG.read_text()).items():
        config[key] = config.get(key, {}) | value if isinstance(value, dict) else value
    config["cascade"]["factors"] = [2]
    checkpoint = tmp_path / "stage1.pt"
    torch.save({"ema": {}, "config": model_config(config), "stage": 0}, checkpoint)
    path = tmp_path / "apply.yaml"
    path.write_text(yaml.safe_dump({"cascade": {"factors": [2]}, "source": "hcp",
                                    "hcp": {"subjects": ["100307", "100408"]},
                                    "apply": {"checkpoints": [str(checkpoint)]}}))
    return path


def network_rules() -> set[str]:
    """Rules whose script runs a network: they pass config["device"] to it (read from workflow/rules)."""
    found = set()
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        blocks = re.split(r"^\s*(?:rule|checkpoint) (\w+):\n", smk.read_text(), flags=re.M)
        found |= {name for name, body in zip(blocks[1::2], blocks[2::2]) if 'config["device"]' in body}
    return found


def gpu_rules(rules: dict) -> set[str]:
    return {name for name, rule in rules.items() if int(rule["resources"].get("gpu") or 0) > 0}


def test_one_setting_sends_every_gpu_rule_to_the_gpu_partition(tmp_path):
    """The user sets the GPU partition and account once (gpu_jobs); every rule that asks for a GPU gets them,
    in training mode with the sd map's calibration and a compared model, and in apply mode."""
    profile = user_profile(tmp_path, {"slurm_partition": GPU_PARTITION, "slurm_account": GPU_ACCOUNT})
    plans = [rule_settings(tmp_path, profile, TINY_CONFIG, REPO / "config" / "compare_triplanar2d.yaml"),
             rule_settings(tmp_path, profile, TINY_CONFIG, apply_config(tmp_path))]
    seen, asked = set(), set()
    for rules in plans:
        seen |= set(rules)
        asked |= gpu_rules(rules)
        for name, rule in rules.items():
            resources = rule["resources"]
            if name in gpu_rules(rules):
                assert resources["slurm_partition"] == GPU_PARTITION, (name, resources)
                assert resources["slurm_account"] == GPU_ACCOUNT and resources["cpus_per_gpu"] == 8, (name, resources)
                assert resources["mem_mb"] == 16000, (name, resources)
                # gpu_jobs' 2 h, or the training rules' own 12 h (their entries win key by key)
                assert resources["runtime"] == (720 if name.startswith("train_") else 120), (name, resources)
            else:
                assert resources["slurm_partition"] == CPU_PARTITION and "slurm_account" not in resources, name
    networks = network_rules()
    assert {"train_predictor", "predict", "train_stage", "super_resolve", "apply_scan"} <= networks  # the check sees them
    assert networks <= seen, f"network rules no config here defines: {networks - seen}"
    assert networks <= asked, f"rules that run a network but ask for no GPU (resources gpu=1): {networks - asked}"


def test_without_the_gpu_setting_gpu_rules_fall_to_the_cpu_partition_and_gpu_0_opts_out(tmp_path):
    """The check above can fail: with no GPU partition set, GPU rules get the CPU partition of
    default-resources (the trap gpu_jobs closes); a rule set to gpu: 0 is a CPU job."""
    profile = user_profile(tmp_path, super_resolve={"gpu": 0})
    rules = rule_settings(tmp_path, profile, TINY_CONFIG)
    assert rules["train_stage"]["resources"]["slurm_partition"] == CPU_PARTITION
    assert "super_resolve" not in gpu_rules(rules) and "train_stage" in gpu_rules(rules)
    assert rules["super_resolve"]["resources"]["mem_mb"] == 4000, "a CPU job takes none of gpu_jobs"


@pytest.mark.parametrize("on_submit_host", [False, True])
def test_fetch_runs_in_the_preprocess_job_or_on_the_submit_host(tmp_path, on_submit_host):
    """fetch.on_submit_host: fetch leaves its subjects' cluster job and becomes a local rule;
    skull stripping, the LR volume and the stage caches or baseline stay in it (the 4 subjects in one job)."""
    config = tmp_path / "fetch.yaml"
    config.write_text(yaml.safe_dump({"fetch": {"on_submit_host": on_submit_host}}))
    profile = user_profile(tmp_path)
    rules = rule_settings(tmp_path, profile, TINY_CONFIG, config)
    assert rules["fetch"]["local"] is on_submit_host
    assert rules["fetch"]["group"] == (None if on_submit_host else "preprocess")
    assert "fetch" not in yaml.safe_load(PROFILE.read_text())["groups"], "a profile's group would override it"
    cmd = ["snakemake", "--profile", str(profile), "--snakefile", str(REPO / "Snakefile"), "--directory",
           str(tmp_path), "--configfile", str(TINY_CONFIG), str(config), "-n", "--forceall"]
    exe = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run([str(exe), *cmd[1:]], capture_output=True, text=True, cwd=REPO, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    groups = [sorted(re.findall(r"^    rule (\w+):", re.split(r"\n\[", chunk, maxsplit=1)[0], flags=re.M))
              for chunk in out.split("Group job preprocess")[1:]]
    members = ["make_lr", "skullstrip"] * 4 + ["baseline"] + ["cache_stage"] * 6  # 3 train/val subjects x 2 stages
    assert groups == [sorted(members if on_submit_host else members + ["fetch"] * 4)], groups
    assert len(re.findall(r"^rule fetch:", out, flags=re.M)) == (4 if on_submit_host else 0)

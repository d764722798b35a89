# super_resolve: the cascade applied to a subject; baseline: spline interpolation;
# with several samples, the sd map's calibration on validation subjects.


# The sampling settings the run's inference uses, beside its models: every
# super_resolve job reads them from here, and `mrisr super-resolve` takes them as
# its defaults for these checkpoints, so the CLI gives the workflow's volume.
# A change of the sampling section re-runs this rule (its params) and so every
# job that reads the file.
rule sampling_settings:
    localrule: True
    output:
        json=f"results/models/{SAMPLING_SETTINGS}",
    params:
        sampling=SAMPLING,
    log:
        "results/logs/sampling_settings.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/sampling_settings.py"


# The cascade applied to a subject, in every {branch}: the main model on a test
# subject (results/sr/{subject}/), on a validation subject for the sd map's
# calibration (calibration/: results/calibration/sr/{subject}/, read by
# fit_sd_calibration only), or a compared model (config key compare) on a test
# subject (compare/{name}/), sampled exactly as the main model is.
rule super_resolve:
    input:
        lr=subject_lr,
        checkpoints=sr_checkpoints,
        sampling=rules.sampling_settings.output.json,
    output:
        **SR_BRANCH_OUTPUTS,
    params:
        device=config["device"],
    log:
        "results/logs/super_resolve/{branch}{subject}.log",
    benchmark:
        "results/benchmarks/super_resolve/{branch}{subject}.tsv"
    resources:
        mem_mb=4000,
        gpu=1,  # runs a network: a GPU job on a cluster (scheduling.smk)
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/super_resolve.py"


rule baseline:
    input:
        lr=test_lr,
    output:
        spline="results/baseline/{subject}/spline.nii.gz",
    params:
        factor=FACTOR,
        order=config["degrade"]["order"],
    log:
        "results/logs/baseline/{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/baseline.py"


if CALIBRATION_SUBJECTS:

    # The sd maps' calibration (calibration.method: floor and scale, or scale only),
    # fitted on the validation subjects' brains.
    rule fit_sd_calibration:
        localrule: True
        input:
            hr=expand(rules.skullstrip.output.t1, subject=CALIBRATION_SUBJECTS),
            mask=expand(rules.skullstrip.output.mask, subject=CALIBRATION_SUBJECTS),
            sr=expand(in_branch(SR_BRANCH_OUTPUTS["sr"], CALIBRATION_BRANCH), subject=CALIBRATION_SUBJECTS),
            sd=expand(in_branch(SR_BRANCH_OUTPUTS["sd"], CALIBRATION_BRANCH), subject=CALIBRATION_SUBJECTS),
            checkpoints=all_checkpoints,
        output:
            json="results/calibration/sd_calibration.json",
        params:
            subjects=CALIBRATION_SUBJECTS,
            method=CALIBRATION.method,
            sampling=SAMPLING,
        log:
            "results/logs/fit_sd_calibration.log",
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/fit_sd_calibration.py"

    # A test subject's calibrated sd map (seconds of work).
    rule calibrate_sd:
        localrule: True
        input:
            sd=SR_OUTPUTS["sd"],
            calibration=rules.fit_sd_calibration.output.json,
        output:
            sd=SD_MAP,
        log:
            "results/logs/calibrate_sd/{subject}.log",
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/calibrate_sd.py"

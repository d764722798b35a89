# super_resolve: the cascade applied to a test subject; baseline: spline interpolation.


rule super_resolve:
    input:
        lr=test_lr,
        checkpoints=all_checkpoints,
    output:
        **SR_OUTPUTS,
    params:
        sampling=SAMPLING,
        device=config["device"],
    log:
        "results/logs/super_resolve/{subject}.log",
    benchmark:
        "results/benchmarks/super_resolve/{subject}.tsv"
    resources:
        mem_mb=4000,
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


# Cascaded SR of a test subject with a compared model (config key compare),
# sampled exactly as the main model is.
rule super_resolve_compare:
    input:
        lr=test_lr,
        checkpoints=compare_checkpoints,
    output:
        sr="results/compare/{name}/sr/{subject}/sr.nii.gz",
        stages=expand("results/compare/{{name}}/sr/{{subject}}/stage{stage}.nii.gz", stage=STAGES),
    params:
        sampling=SAMPLING,
        device=config["device"],
    log:
        "results/logs/super_resolve_compare/{name}_{subject}.log",
    benchmark:
        "results/benchmarks/super_resolve_compare/{name}_{subject}.tsv"
    resources:
        mem_mb=4000,
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/super_resolve.py"

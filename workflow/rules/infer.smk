# super_resolve: the cascade applied to a test subject; baseline: spline interpolation.


rule super_resolve:
    input:
        lr=test_lr,
        checkpoints=all_checkpoints,
    output:
        **SR_OUTPUTS,
    params:
        sampling=config["sampling"],
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

# make_lr: the low-resolution volume, spline-downsampled from the HR volume.


rule make_lr:
    input:
        hr=rules.skullstrip.output.t1,
    output:
        lr="results/lr/{subject}/x{factor}.nii.gz",
    params:
        order=config["degrade"]["order"],
        antialias=config["degrade"]["antialias"],
    log:
        "results/logs/make_lr/{subject}_x{factor}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/make_lr.py"

# make_lr: the low-resolution volume (mrisr/data/protocol.py). Acquisition
# protocol (the default): the raw whole head degraded over its field of view,
# then cropped to the HR volume's box; the HR's mask never shapes it. Masked
# protocol (the seed's): the skull-stripped HR volume degraded.


rule make_lr:
    input:
        hr=rules.skullstrip.output.t1,
        **({"raw": rules.fetch.output.t1} if ACQUISITION else {}),
    output:
        lr="results/lr/{subject}/x{factor}.nii.gz",
    params:
        order=config["degrade"]["order"],
        method=config["degrade"]["method"],
        **SLICE_PROFILE,
        percentile=config["skullstrip"]["percentile"],
        normalise=config["skullstrip"]["normalise"],
    log:
        "results/logs/make_lr/{subject}_x{factor}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/make_lr.py"

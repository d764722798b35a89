# fetch: subjects from the configured source; skullstrip: mask, crop, normalise.


rule fetch_demo:
    output:
        t1="results/raw/{subject}/T1w.nii.gz",
        mask="results/raw/{subject}/brainmask.nii.gz",
    params:
        seed=config["demo"]["seed"],
        voxel_size_mm=config["demo"]["voxel_size_mm"],
    log:
        "results/logs/fetch/{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/fetch_demo.py"


rule skullstrip:
    input:
        t1=rules.fetch_demo.output.t1,
        mask=rules.fetch_demo.output.mask,
    output:
        t1="results/hr/{subject}/T1w_brain.nii.gz",
        mask="results/hr/{subject}/brainmask.nii.gz",
    params:
        margin_mm=config["skullstrip"]["margin_mm"],
        percentile=config["skullstrip"]["percentile"],
        multiple=FACTOR,
    log:
        "results/logs/skullstrip/{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/skullstrip.py"

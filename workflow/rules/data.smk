# fetch: one subject from the configured source (demo, hcp or local);
# skullstrip: mask (the source's, or estimated), crop, normalise; under the
# acquisition protocol the HR keeps the whole head in its box (data/protocol.py).


rule fetch:
    input:
        unpack(local_scan_files),
    output:
        t1="results/raw/{subject}/T1w.nii.gz",
        **source_mask_output(),
    params:
        source=config["source"],
        data=canonical(data_identity(config)),
    log:
        "results/logs/fetch/{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/fetch.py"


rule skullstrip:
    input:
        unpack(raw_volumes),
    output:
        t1="results/hr/{subject}/T1w.nii.gz",
        mask="results/hr/{subject}/brainmask.nii.gz",
    params:
        margin_mm=config["skullstrip"]["margin_mm"],
        percentile=config["skullstrip"]["percentile"],
        normalise=config["skullstrip"]["normalise"],
        multiple=FACTOR,
        protocol=config["degrade"]["protocol"],
        order=config["degrade"]["order"],
        method=config["degrade"]["method"],
    log:
        "results/logs/skullstrip/{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/skullstrip.py"

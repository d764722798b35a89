# fetch: one subject from the configured source (demo, hcp or local);
# skullstrip: mask (the source's, or estimated), crop, normalise; under the
# acquisition protocol the HR keeps the whole head in its box (data/protocol.py).
#
# Where fetch runs on a cluster (config key fetch.on_submit_host): by default in a
# cluster job, in its subject's preprocess group with skullstrip and make_lr (the
# group is declared here, not in profiles/slurm: Snakemake runs a grouped rule in
# its group's job even when it is a local rule, and a profile's groups override
# the workflow's), so a compute node downloads an HCP subject from S3; with
# true, as a local rule on the submit host, where Snakemake runs, for clusters
# whose compute nodes have no internet. Groups act only on a cluster (and show
# in dry-runs); a local run is the same either way.
FETCH_ON_SUBMIT_HOST = config["fetch"]["on_submit_host"]

rule fetch:
    localrule: FETCH_ON_SUBMIT_HOST
    group: None if FETCH_ON_SUBMIT_HOST else "preprocess"
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
        **SLICE_PROFILE,
    log:
        "results/logs/skullstrip/{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/skullstrip.py"

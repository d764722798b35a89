# Apply mode (config key apply.checkpoints): the trained cascade over every scan of
# the source as acquired, written as BIDS Derivatives under results/derivatives/mrisr/
# (mrisr/derivatives.py), and a QC page. The scans come through the same fetch rule as
# in training mode. With apply.test_derivatives a training run's test subjects are
# written as the same derivatives instead (export_derivatives).


rule describe_derivatives:
    # Seconds of work: on a cluster it runs where Snakemake runs, not as a job.
    localrule: True
    output:
        json="results/derivatives/mrisr/dataset_description.json",
    params:
        sources=[source_dataset(config)],
        links=dataset_links(),
    log:
        "results/logs/describe_derivatives.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/describe_derivatives.py"


if APPLY.enabled:

    rule apply_mask:
        input:
            unpack(scan_raw_volumes),
        output:
            **MASK_OUTPUTS,
        params:
            sources=mask_sources,
        log:
            "results/logs/apply_mask/{scan}.log",
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/apply_mask.py"

    rule apply_scan:
        input:
            unpack(apply_inputs),
        output:
            **DERIVATIVE_OUTPUTS,
        params:
            sampling=SAMPLING,
            device=config["device"],
            sources=scan_sources,
        log:
            "results/logs/apply_scan/{scan}.log",
        benchmark:
            "results/benchmarks/apply_scan/{scan}.tsv"
        resources:
            mem_mb=4000,
            gpu=1,  # runs a network: a GPU job on a cluster (scheduling.smk)
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/apply_scan.py"

    rule plot_scan:
        input:
            unpack(qc_inputs),
        output:
            panels="results/report/apply/{scan}.png",
            thumb="results/report/apply/{scan}_thumb.png",
        log:
            "results/logs/plot_scan/{scan}.log",
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/plot_scan.py"

    rule apply_report:
        # Seconds of work: on a cluster it runs where Snakemake runs, not as a job.
        localrule: True
        input:
            sidecars=expand(DERIVATIVE_OUTPUTS["sr_sidecar"], scan=DERIVATIVE_SCANS),
            panels=expand(rules.plot_scan.output.panels, scan=DERIVATIVE_SCANS),
            thumbs=expand(rules.plot_scan.output.thumb, scan=DERIVATIVE_SCANS),
            benchmarks=expand(rules.apply_scan.benchmark, scan=DERIVATIVE_SCANS),
            derivatives=derivative_files(DERIVATIVE_SCANS),  # checked against the BIDS schema first
        output:
            html="results/report/apply.html",
        params:
            names=[ScanName.from_stem(stem).prefix for stem in DERIVATIVE_SCANS],
            config=config,
            model_config=APPLY_MODEL,
            checkpoints=list(APPLY.checkpoints),
            panels_max=APPLY.qc_panels,
            # the tree's root: the folder of its dataset_description.json, derivative_files' first file
            derivatives=lambda wildcards, input: str(Path(input.derivatives[0]).parent),
        log:
            "results/logs/apply_report.log",
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/apply_report.py"

else:

    rule export_derivatives:
        input:
            unpack(held_out_files),
            checkpoints=all_checkpoints,
        output:
            **DERIVATIVE_OUTPUTS,
            **MASK_OUTPUTS,
        params:
            sampling=SAMPLING,
            factors=FACTORS,
            sources=mask_sources,
        log:
            "results/logs/export_derivatives/{scan}.log",
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/export_derivatives.py"

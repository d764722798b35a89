# evaluate: PSNR/SSIM in the brain mask per test subject; collect_metrics: one table.


rule evaluate:
    input:
        unpack(uncertainty_input),
        unpack(compare_sr),
        unpack(predictor_sr),
        hr=rules.skullstrip.output.t1,
        mask=rules.skullstrip.output.mask,
        sr=SR_OUTPUTS["sr"],
        spline=rules.baseline.output.spline,
    output:
        **EVAL_OUTPUTS,
    log:
        "results/logs/evaluate/{subject}.log",
    benchmark:
        "results/benchmarks/evaluate/{subject}.tsv"
    resources:
        mem_mb=2000,
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/evaluate.py"


rule collect_metrics:
    # Seconds of work: on a cluster it runs where Snakemake runs, not as a job.
    localrule: True
    input:
        tsvs=expand(rules.evaluate.output.tsv, subject=TEST_SUBJECTS),
    output:
        tsv=report(
            "results/metrics.tsv",
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
    log:
        "results/logs/collect_metrics.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/collect_metrics.py"

# report: the self-contained HTML report.


rule report:
    # Seconds of work: on a cluster it runs where Snakemake runs, not as a job.
    localrule: True
    input:
        metrics=rules.collect_metrics.output.tsv,
        splits=rules.split.output.tsv,
        train_logs=all_train_logs,
        lr=expand(rules.make_lr.output.lr, subject=figure_subject(), factor=FACTOR),
        spline=expand(rules.baseline.output.spline, subject=figure_subject()),
        sr=expand(rules.super_resolve.output.sr, subject=figure_subject()),
        hr=expand(rules.skullstrip.output.t1, subject=figure_subject()),
    output:
        html=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
    params:
        config=config,
        figure_subject=figure_subject(),
    log:
        "results/logs/report.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/report.py"

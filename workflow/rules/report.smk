# plot_slices: slice panels and a sweep per test subject; report: the self-contained HTML report.


rule plot_slices:
    # Seconds of work per subject (PNG panels for the report): a local rule on a cluster.
    localrule: True
    input:
        lr=test_lr,
        spline=rules.baseline.output.spline,
        sr=SR_OUTPUTS["sr"],
        hr=rules.skullstrip.output.t1,
        mask=rules.skullstrip.output.mask,
    output:
        panels=report(
            "results/report/slices/{subject}.png",
            caption="../report/slices.rst",
            category="Super-resolution",
            subcategory="{subject}",
            labels={"subject": "{subject}", "figure": "slice panels"},
        ),
        sweep=report(
            "results/report/slices/{subject}.gif",
            caption="../report/sweep.rst",
            category="Super-resolution",
            subcategory="{subject}",
            labels={"subject": "{subject}", "figure": "axial sweep"},
        ),
    log:
        "results/logs/plot_slices/{subject}.log",
    benchmark:
        "results/benchmarks/plot_slices/{subject}.tsv"
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/plot_slices.py"


rule report:
    # Seconds of work: on a cluster it runs where Snakemake runs, not as a job.
    localrule: True
    input:
        metrics=rules.collect_metrics.output.tsv,
        splits=rules.split.output.tsv,
        train_logs=all_train_logs,
        benchmarks=cost_benchmarks,
        panels=expand(rules.plot_slices.output.panels, subject=TEST_SUBJECTS),
        sweeps=expand(rules.plot_slices.output.sweep, subject=TEST_SUBJECTS),
        calibration=expand(EVAL_OUTPUTS.get("calibration", []), subject=TEST_SUBJECTS),
        sd_calibration=rules.fit_sd_calibration.output.json if CALIBRATION_SUBJECTS else [],
        compare_logs=[log for logs in compare_train_logs().values() for log in logs],
    output:
        html=report(
            "results/report/index.html",
            caption="../report/index.rst",
            category="Report",
        ),
        metrics_png=report(
            "results/report/metrics.png",
            caption="../report/metrics_plot.rst",
            category="Evaluation",
        ),
        summary_tsv=report(
            "results/report/summary.tsv",
            caption="../report/summary.rst",
            category="Evaluation",
        ),
        loss_png=report(
            "results/report/loss.png",
            caption="../report/loss_all.rst",
            category="Training",
        ),
        schedule_png=report(
            "results/report/schedule.png",
            caption="../report/schedule.rst",
            category="Diffusion model",
        ),
        cost_tsv=report(
            "results/report/cost.tsv",
            caption="../report/cost.rst",
            category="Cost",
        ),
    params:
        config=config,
        subjects=TEST_SUBJECTS,
        compare_logs=compare_train_logs(),
    log:
        "results/logs/report.log",
    benchmark:
        "results/benchmarks/report/report.tsv"
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/report.py"

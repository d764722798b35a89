# split: seeded, subject-level train/val/test assignment.


rule split:
    # Seconds of work: on a cluster it runs where Snakemake runs, not as a job.
    localrule: True
    output:
        tsv="results/splits.tsv",
    params:
        subjects=SUBJECTS,
        seed=config["split"]["seed"],
        val_fraction=config["split"]["val_fraction"],
        test_fraction=config["split"]["test_fraction"],
    log:
        "results/logs/split.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/split.py"

# cache_stage: one job per train/val subject and cascade stage: the stage's
# condition, target and mask as uncompressed .npy files that training reads a
# patch at a time (mrisr/training/cache.py), so a training job's memory does
# not grow with the cohort and its first step does not wait for the cohort.
rule cache_stage:
    input:
        hr=rules.skullstrip.output.t1,
        lr=subject_lr,
        mask=rules.skullstrip.output.mask,
    output:
        cond="results/cache/stage{stage}/{subject}/cond.npy",
        target="results/cache/stage{stage}/{subject}/target.npy",
        mask="results/cache/stage{stage}/{subject}/mask.npy",
        info="results/cache/stage{stage}/{subject}/cache.json",
    params:
        stage=stage_index,
        factors=FACTORS,
        order=config["degrade"]["order"],
        method=config["degrade"]["method"],
        **SLICE_PROFILE,
    log:
        "results/logs/cache_stage/stage{stage}_{subject}.log",
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/cache_stage.py"


# train_predictor: predict-and-refine's predictor g of a stage, trained first on the
# train subjects (validated on val) by the same loop as the diffusion model; predict:
# its output over one subject's stage cache, written once, so the diffusion model
# trains on x0 - g(LR) without running g in its loop.
if PREDICT_AND_REFINE:

    rule train_predictor:
        input:
            caches=training_caches,
            splits=rules.split.output.tsv,
        output:
            checkpoint="results/models/stage{stage}/predictor.pt",
            log_tsv="results/models/stage{stage}/predictor_log.tsv",
            plot="results/models/stage{stage}/predictor_loss.png",
        params:
            stage=stage_index,
            config=MODEL_CONFIG,
            device=config["device"],
            resume="results/models/stage{stage}/predictor_resume.pt",
            network="predictor",
        log:
            "results/logs/train_predictor/stage{stage}.log",
        benchmark:
            "results/benchmarks/train_predictor/stage{stage}.tsv"
        resources:
            mem_mb=4000,
            gpu=1,  # runs a network: a GPU job on a cluster (scheduling.smk)
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/train_stage.py"

    # One job per stage over all its train/val subjects: the predictor is loaded once, and
    # a cluster gets one GPU job of minutes instead of one per subject of seconds each.
    rule predict:
        input:
            predictor=rules.train_predictor.output.checkpoint,
            caches=training_caches,
        output:
            preds=expand(PREDICTIONS, stage="{stage}", subject=fitting_subjects()),
        params:
            device=config["device"],
        log:
            "results/logs/predict/stage{stage}.log",
        resources:
            mem_mb=2000,
            gpu=1,  # runs a network: a GPU job on a cluster (scheduling.smk)
        conda:
            "../../envs/mrisr.yaml"
        script:
            "../scripts/predict.py"


# train_stage: one job per cascade stage and model ({branch}: "" for the main model,
# "compare/{name}/" for a compared one, config key compare: the same data and script,
# its own model/train settings), on train subjects, validated on val. It resumes
# from results/{branch}models/stage{k}/resume.pt when an earlier attempt was stopped
# (time limit, pre-emption, Ctrl-C). It asks for one GPU; the partition, DDP (gpu=N)
# and the other GPU settings come from the profile (set-resources gpu_jobs and train_stage).


rule train_stage:
    input:
        unpack(diffusion_training_inputs),
        caches=training_caches,
        splits=rules.split.output.tsv,
    output:
        checkpoint="results/{branch}models/stage{stage}/checkpoint.pt",
        log_tsv=report(
            "results/{branch}models/stage{stage}/train_log.tsv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{branch}stage {stage}",
        ),
        plot=report(
            "results/{branch}models/stage{stage}/loss.png",
            caption="../report/loss.rst",
            category="Training",
            subcategory="{branch}stage {stage}",
        ),
    wildcard_constraints:
        branch=TRAIN_BRANCHES,
    params:
        stage=stage_index,
        config=lambda wildcards: branch_of(wildcards)[0],
        device=config["device"],
        # Not an output: Snakemake deletes outputs before a job (re)starts, and
        # this must survive until a retried or requeued job resumes from it.
        resume="results/{branch}models/stage{stage}/resume.pt",
        network="diffusion",
    log:
        "results/logs/train_stage/{branch}stage{stage}.log",
    benchmark:
        "results/benchmarks/train_stage/{branch}stage{stage}.tsv"
    resources:
        mem_mb=4000,
        gpu=1,  # runs a network: a GPU job on a cluster (scheduling.smk)
    conda:
        "../../envs/mrisr.yaml"
    script:
        "../scripts/train_stage.py"

# The user's verbs. `make reproduce` and `make test` set everything up themselves.
.DEFAULT_GOAL := help
SHELL := /bin/bash

VENV := .venv
PY := $(VENV)/bin/python
# uv from PATH, else as a module of the system Python (installed on first use).
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
PYTEST_ARGS ?= -m "not slow"
# pytest-xdist workers (one per core; tests/conftest.py gives each one torch thread). 0 runs
# the suite in this process, as plain pytest does.
TEST_WORKERS ?= auto

# The tier (conf/scale/): cpu (default; `make reproduce`'s 45 minutes), long (`make
# reproduce-long`: hours on this CPU) or paper (a GPU's). Each experiment target trains and
# analyses its own tier: `make fig2 SCALE=long`. The cpu tier's runs and results are runs/ and
# results/; another tier's are runs/<tier>/ and results/<tier>/ (RUNS, RESULTS: where).
SCALE ?= cpu
SCALES := cpu long paper
$(if $(filter $(SCALE),$(SCALES)),,$(error SCALE=$(SCALE) is not a tier: choose one of $(SCALES)))
TIER_DIR := $(if $(filter cpu,$(SCALE)),,/$(SCALE))
RUNS ?= runs$(TIER_DIR)
RESULTS ?= results$(TIER_DIR)
# Extra overrides for every training command (e.g. TRAIN_ARGS="trainer.device=cuda").
TRAIN_ARGS ?=
TRAIN = $(PY) -m bnrepro.train -m scale=$(SCALE) scale.runs=$(RUNS) $(TRAIN_ARGS)
# PLAN=<file>: the training commands append the runs they would train (with their steps) to
# that file and train nothing; the analyses are skipped (bnrepro.reproduce, bnrepro.run.plan).
ANALYSE = $(if $(PLAN),: plan only so no analysis:,$(PY) -m bnrepro.analyse)
export BNREPRO_PLAN := $(PLAN)

.PHONY: help setup test test-all reproduce reproduce-long shift-trials norm-trials fig1 sweep-mnist fig2 fig2-lr depth sweep-cifar dln \
	santurkar batchsize batchsize-lr bench bench-profile gpu-check notebooks lint format clean report wandb-workspace

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: $(VENV)/.installed  ## create .venv from uv.lock (only when missing or stale)

$(VENV)/.installed: pyproject.toml uv.lock
	@$(UV) --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen --compile-bytecode
	@touch $@

test: setup  ## the default test suite (slow tests excluded)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test-all: PYTEST_ARGS :=
test-all: test  ## every test, slow ones included

# `make reproduce`: Ioffe & Szegedy's figures one after another (torch's two threads each),
# then the trials of their claim as two one-thread parts side by side (two one-thread
# populations at once: 1.4x the throughput of one two-thread one at a time here), then
# results/REPORT.md. Each part logs to runs/logs/<part>.log and prints its time. Pairing the
# two-thread parts loses (measured: a sweep population took 536 s beside fig2 instead of ~160 s
# alone), so they run alone. Finished runs are not retrained (they resume as done), so an
# interrupted `make reproduce` picks up where it stopped; a part that fails is reported with
# the end of its log and the others still run (-k).
SEQUENTIAL_PARTS := fig1 sweep-mnist fig2
PAIRED_PARTS := norm-trials shift-trials
reproduce: setup  ## every figure, claim and the report in results/ (trains what it needs)
	@mkdir -p runs/logs
	@echo "make reproduce: $(SEQUENTIAL_PARTS), then $(PAIRED_PARTS) side by side, then the report (logs: runs/logs/<part>.log)"
	@start=$$(date +%s); status=0; \
	$(MAKE) --no-print-directory -k $(addprefix logged-,$(SEQUENTIAL_PARTS)) || status=1; \
	$(MAKE) --no-print-directory -k -j2 $(addprefix logged-,$(PAIRED_PARTS)) || status=1; \
	$(MAKE) --no-print-directory report || status=1; \
	echo "make reproduce: $$([ $$status = 0 ] && echo done || echo 'finished with errors, see above')" \
		"in $$(( $$(date +%s) - start )) s; see results/REPORT.md"; exit $$status

# `make reproduce-long`: every experiment that has a long profile (conf/profile/long/), one
# after another on both threads, then the report of both tiers (bnrepro.reproduce). Hours on
# this CPU (docs/costs.md); killed or stopped, the same command continues where it stopped. One
# progress line a minute: model-steps done and left, runs finished, ETA. Logs: runs/long/logs/.
reproduce-long: setup  ## every experiment at the long tier (hours; rerun to resume), then the report
	$(PY) -m bnrepro.reproduce --scale long

logged-%: setup
	@start=$$(date +%s); log=runs/logs/$*.log; echo "  $* started (log: $$log)"; \
	if $(MAKE) --no-print-directory -j1 $* > $$log 2>&1; then \
		echo "  $* done in $$(( $$(date +%s) - start )) s"; \
	else echo "error: $* failed; the end of $$log:"; tail -n 20 $$log; exit 1; fi

# The experiments that put the claim on trial, in two groups (each a part of `make reproduce`).
shift-trials: setup  ## Santurkar et al. (make santurkar) and the deep linear net (make dln)
	@$(MAKE) --no-print-directory -j1 santurkar dln

norm-trials: setup  ## norms vs batch size (make batchsize) and residual depth (make depth)
	@$(MAKE) --no-print-directory -j1 batchsize depth

# Fig. 1's two populations (BN and no BN, 3 seeds each) train side by side, one torch thread
# each (the pin is this target's, not the config's): measured 1.4x the throughput of one after
# the other with two threads. trainer.threads is not in run directory names (conf/train.yaml)
# but is in the checkpoint fingerprint, so these runs keep their directories and a run of
# other threads is refused, not resumed. `python -m bnrepro.train -m experiment=fig1_mnist`
# trains the same configs in one process on torch's default threads.
FIG1_NORMS := bn none
fig1: setup  ## Fig. 1: BN vs no-BN, 3 seeds x 50k steps, then the figure
	@$(MAKE) --no-print-directory -j2 $(addprefix fig1-norm-,$(FIG1_NORMS))
	$(ANALYSE) fig1 $(RUNS)/fig1_mnist --out $(RESULTS)

fig1-norm-%: setup
	$(TRAIN) experiment=fig1_mnist model.norm=$* trainer.threads=1

sweep-mnist: setup  ## the 144-run MNIST grid, aggregated into results/sweep_mnist*
	$(TRAIN) experiment=sweep_mnist
	$(ANALYSE) sweep-mnist $(RUNS)/sweep_mnist --out $(RESULTS)

# CIFAR runs use true CIFAR-10 when it can be loaded, else the JPEG mirror (labelled
# cifar10-jpeg everywhere: those are not CIFAR-10 numbers).
CIFAR := $$($(PY) -m bnrepro.data cifar10 cifar10-jpeg)

fig2: setup fig2-lr  ## Figs. 2-3: Baseline vs BN variants on CIFAR, 7 variants x 3 seeds (CPU)
	@ds=$(CIFAR) && \
	$(TRAIN) experiment=fig2_cifar dataset=$$ds && \
	$(ANALYSE) fig2 $(RUNS)/fig2_$$ds $(if $(FIG2_LR),--lr-runs $(RUNS)/fig2_lr_$$ds) --out $(RESULTS)

# The base-rate grid runs at the tiers with a fig2_cifar_lr profile (the cpu and paper ones; the
# long tier's one seed per rate could never decide it: conf/profile/long/fig2_cifar.yaml).
FIG2_LR := $(or $(filter cpu,$(SCALE)),$(wildcard conf/profile/$(SCALE)/fig2_cifar_lr.yaml))
fig2-lr: setup  ## fig2's base-rate check: the Baseline at 4 candidate rates, scored on validation
	@$(if $(FIG2_LR),ds=$(CIFAR) && $(TRAIN) experiment=fig2_cifar_lr dataset=$$ds,\
	echo "fig2-lr: no $(SCALE) profile (conf/profile/$(SCALE)/fig2_cifar_lr.yaml): the base-rate check is the cpu tier's")

depth: setup  ## De & Smith: ResNets of depth 8 and 32, BN / no norm / SkipInit x 3 rates x 3 seeds (CPU), init sweep to depth 110
	@ds=$(CIFAR) && \
	$(TRAIN) experiment=depth_cifar dataset=$$ds && \
	$(ANALYSE) depth $(RUNS)/depth_$$ds --out $(RESULTS)

# CPU-sized slice of the CIFAR grid (not in `make reproduce` any more: fig2 replaces it): true CIFAR-10 when it can be loaded, else the JPEG mirror
# (labelled cifar10-jpeg everywhere). The full grid: `python -m bnrepro.train -m
# experiment=sweep_cifar` (108 runs; model=cnn_paper for the GPU-sized net).
CIFAR_SLICE ?= seed=0 optim.lr=0.01,0.1,1.0 model.dropout=0.0,0.5 model.width_multiplier=0.5 \
	trainer.max_steps=400 trainer.eval_every=200 trainer.checkpoint_every=400
sweep-cifar: setup  ## CPU-sized CIFAR grid (cnn quick profile), aggregated into results/
	@ds=$(CIFAR) && \
	$(TRAIN) experiment=sweep_cifar dataset=$$ds $(CIFAR_SLICE) && \
	$(ANALYSE) sweep-cifar $(RUNS)/sweep_$$ds --out $(RESULTS) \
		--where model.width_multiplier=0.5 --where trainer.max_steps=400

report: setup  ## results/REPORT.md: every figure and claim in results/, with its verdict
	$(PY) -m bnrepro.report --results results

# The wandb workspace (sections per experiment) defined in src/bnrepro/analysis/wandb_workspace.py. Needs a
# wandb login; WANDB_ENTITY / WANDB_PROJECT or ARGS="--entity E --project P". Without a server:
# make wandb-workspace ARGS=--dry-run (writes the spec as JSON).
wandb-workspace: setup  ## save the wandb workspace defined in code, print its URL
	$(PY) -m bnrepro.analysis.wandb_workspace $(ARGS)

# Santurkar et al.'s deep linear net (conf/dln.yaml): its CPU profile is 2,000 of the paper's
# 10,000 full-batch steps; SCALE=long and SCALE=paper train all 10,000 (conf/profile/*/dln.yaml).
DLN_ARGS ?=
dln: setup  ## Santurkar's deep linear net: ICS and landscape, standard vs BN, 2 rates x 5 seeds
	$(PY) -m bnrepro.train_dln scale=$(SCALE) scale.runs=$(RUNS) $(DLN_ARGS)
	$(ANALYSE) dln $(RUNS)/dln --out $(RESULTS)

# Santurkar et al. (2018) Sec. 2.1 and 3.3: standard vs BN vs noisy BN (and l_p norms on MNIST),
# distributions of layer inputs and their shift; CPU-sized (about 2 + 4 minutes).
# The CIFAR net's second sweep (no measures, at the paper's 0.1): noisy BN, the noise alone (not
# at the long tier) and at the cpu tier the l_p norms too (the long tier leaves them to the cpu
# tier, for time: conf/profile/long/santurkar_cifar.yaml).
comma := ,
SANTURKAR_CIFAR_NORMS := noisy_bn$(if $(filter-out long,$(SCALE)),$(comma)noise_only)$(if $(filter cpu,$(SCALE)),$(comma)lp1$(comma)lp2$(comma)lpinf)
santurkar: setup  ## Santurkar et al. Figs. 1-6 analogs: MNIST MLP + CIFAR CNN, 3 seeds, then the figures
	$(TRAIN) experiment=santurkar_mnist
	@ds=$(CIFAR) && \
	$(TRAIN) experiment=santurkar_cifar dataset=$$ds && \
	$(TRAIN) experiment=santurkar_cifar dataset=$$ds optim.lr=0.1 \
		model.norm=$(SANTURKAR_CIFAR_NORMS) measures.ics.every=0 \
		measures.landscape.every=0 && \
	$(ANALYSE) santurkar $(RUNS)/santurkar_mnist $(RUNS)/santurkar_$$ds --out $(RESULTS)

bench: setup  ## ms per model-step, ours vs the loops a PyTorch user writes, and the roofline
	$(PY) -m bnrepro.bench

bench-profile: setup  ## where a step's time goes, op by op, ours beside the bench's peers
	$(PY) -m bnrepro.bench.profile

# On a machine with a GPU, as is: versions and precision flags, the tests marked gpu, every
# experiment's smoke profile on CUDA, kill/resume, determinism, population vs solo, host syncs
# per step and the bench's rows, each section under its own time budget (10 minutes in all);
# one report. `python -m bnrepro.gpu_check --device cpu` runs it tiny on the CPU.
gpu-check: setup  ## on a GPU (10 minutes): the GPU's checks, into results/gpu_check.md
	$(PY) -m bnrepro.gpu_check --out results/gpu_check.md

# The notebooks' sources are notebooks/*.py (jupytext percent format); executed copies, with
# their outputs, go to results/notebooks/ (ignored by git). Trains nothing: reads runs/.
notebooks: setup  ## execute every notebook on runs/ into results/notebooks/*.ipynb
	$(PY) scripts/run_notebooks.py --out results/notebooks

# Norms vs batch size (Wu & He 2018, Fig. 1 style): BN, Batch Renorm, GN, LN and no norm at batch
# sizes 2..128 (MNIST) and 2..32 (CIFAR), 3 seeds, the CPU profile of
# conf/experiment/batchsize_{mnist,cifar}.yaml. CIFAR as in fig2: true CIFAR-10 when it can be
# loaded, else the JPEG mirror (labelled cifar10-jpeg everywhere).
BATCHSIZE_LRS ?= 0.00625,0.0125,0.025,0.05,0.1,0.2,0.4
# The norms without batch statistics run once, at the SGD batch (they never see the ghost batch).
BATCHSIZE_FLAT := model.norm=gn,ln,none model.bn_ghost_batch=0
# The base rates in the configs were chosen on validation by `make batchsize-lr` (3.5 minutes;
# not part of `make reproduce`, for time): when its runs are here the plot checks that choice,
# else the check is left out of its claims and the report.
batchsize: setup  ## norms vs batch size on MNIST and CIFAR, 3 seeds, then the figures
	$(TRAIN) experiment=batchsize_mnist
	$(TRAIN) experiment=batchsize_mnist $(BATCHSIZE_FLAT)
	@ds=$(CIFAR) && \
	$(TRAIN) experiment=batchsize_cifar dataset=$$ds && \
	$(TRAIN) experiment=batchsize_cifar dataset=$$ds $(BATCHSIZE_FLAT) && \
	lr=$$(ls -d $(RUNS)/batchsize_lr_mnist $(RUNS)/batchsize_lr_$$ds 2>/dev/null || true) && \
	$(ANALYSE) batchsize $(RUNS)/batchsize_mnist $(RUNS)/batchsize_$$ds \
		$${lr:+--lr-runs $$lr} --out $(RESULTS)

batchsize-lr: setup  ## batchsize's base rates: 7 candidates x 5 norms at batch 32, seed 0
	$(TRAIN) experiment=batchsize_mnist model.norm=bn,brn,gn,ln,none \
		model.bn_ghost_batch=0 seed=0 optim.lr=$(BATCHSIZE_LRS) hydra.sweep.dir=$(RUNS)/batchsize_lr_mnist
	@ds=$(CIFAR) && $(TRAIN) experiment=batchsize_cifar dataset=$$ds \
		model.norm=bn,brn,gn,ln,none model.bn_ghost_batch=0 seed=0 optim.lr=$(BATCHSIZE_LRS) \
		hydra.sweep.dir=$(RUNS)/batchsize_lr_$$ds

lint: setup  ## ruff
	$(PY) -m ruff check src scripts tests notebooks

format: setup  ## ruff format + autofix
	$(PY) -m ruff check --fix src scripts tests notebooks
	$(PY) -m ruff format src scripts tests notebooks

clean:  ## remove caches (keeps .venv, data/, runs/ and results/)
	rm -rf .pytest_cache .ruff_cache outputs multirun

# signdistill: every stage is one target; every target installs what it needs first.
# Usage: make demo | make test | make features DATASET=phoenix14 DATA_ROOT=/data | make teacher CONFIG=...
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= synthsign
DATA_ROOT ?=
CACHE ?= cache
WORKERS ?= 2
SHARD ?= 0/1
CONFIG ?= configs/teachers/synthsign_fusion_attention.yaml
RECIPE ?= kdmslrt
CKPT ?= exp/teachers/synthsign_fusion_attention/best.pt
SPLIT ?= dev
OUT ?= exp
STUDENT ?= exp/demo/student/best.pt

.PHONY: setup features teacher student eval export tflite tflite-env tables cv demo test bench bench-scale clean-cache

# The venv is rebuilt only when pyproject.toml changes, so `make setup` is quick when done.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, found {sys.version.split()[0]}; set PYTHON=python3.11"'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[serve,test]'
	@touch $@

setup: $(VENV)/.installed

features: setup
	$(PY) -m preprocess.features --dataset $(DATASET) $(if $(DATA_ROOT),--data-root $(DATA_ROOT)) \
		--cache $(CACHE) --workers $(WORKERS) --shard $(SHARD)

# Output: exp/teachers/<config name>/ (best.pt, last.pt, metrics.jsonl, train.log); re-running resumes.
# DATASET given on the command line is the corpus every stage trains on (a YAML path: its file stem).
DATASET_ARG = $(if $(filter command line environment,$(origin DATASET)),--dataset $(basename $(notdir $(DATASET))))

teacher: setup
	$(PY) -m models.train --config $(CONFIG) --cache $(CACHE) --resume $(DATASET_ARG)

# Output: exp/students/<recipe>/ (results.json with dev/test WER); NO_KD=1 trains the CTC-only twin.
student: setup
	$(PY) -m distill.train --recipe $(RECIPE) --cache $(CACHE) $(if $(NO_KD),--no-kd) $(DATASET_ARG)

eval: setup
	$(PY) -m evaluate.eval --ckpt $(CKPT) --cache $(CACHE) --split $(SPLIT)

export: setup
	$(PY) -m evaluate.export --ckpt $(CKPT) --out $(basename $(CKPT)).onnx --int8

# TFLite (LiteRT) needs its own environment: the converters cannot share the pinned torch/onnx
# (litert-torch caps torch below 2.14; onnx2tf needs TensorFlow). About 2.6 GB, built once.
TFLITE_VENV ?= .venv-tflite
$(TFLITE_VENV)/.installed:
	$(PYTHON) -m venv $(TFLITE_VENV)
	$(TFLITE_VENV)/bin/pip install -q --upgrade pip
	$(TFLITE_VENV)/bin/pip install -q onnx2tf==1.29.24 tensorflow==2.19.0 tf_keras==2.19.0 ai-edge-litert==2.1.0 \
		onnx==1.19.1 onnxruntime==1.23.0 onnxsim==0.4.36 onnx_graphsurgeon==0.5.8 sng4onnx==2.0.1 psutil numpy==1.26.4
	@touch $@

tflite-env: $(TFLITE_VENV)/.installed

tflite: setup tflite-env
	TFLITE_PYTHON=$(TFLITE_VENV)/bin/python $(PY) -m evaluate.export --ckpt $(CKPT) --out $(basename $(CKPT)).onnx --int8 --tflite

tables: setup
	$(PY) -m evaluate.tables all --cache $(CACHE)

# k-fold cross-validation (corpora without a dev split): teacher, distilled student, CTC twin over seeds.
# make cv DATASET=boston104 (after make features DATASET=boston104); report in $(OUT)/cv/<dataset>/report.md
CV_TEACHER ?= configs/teachers/keypoints_small.yaml
CV_RECIPE ?= keypoints_small
CV_ARGS ?= --folds 5 --seeds 0 1 2 --ensemble-teacher twin --models twin student
cv: setup
	$(PY) -m evaluate.cv --dataset $(basename $(notdir $(DATASET))) --teacher-config $(CV_TEACHER) --recipe $(CV_RECIPE) \
		--cache $(CACHE) --out $(OUT)/cv $(CV_ARGS)

demo: setup
	$(PY) -m evaluate.demo --cache $(CACHE) --out $(OUT)/demo

# sclite (Debian sctk) lets the scorer be checked against the official tool; tests skip without it.
test: setup
	@command -v sclite >/dev/null || command -v sctk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		echo "installing Debian sctk (sclite) for the scorer comparison tests" && \
		(apt-get install -y -qq sctk >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq sctk >/dev/null 2>&1)) || \
		echo "note: sclite not installed; the sclite comparison tests will skip"; }
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		echo "installing Debian chromium + chromium-driver for the web page's browser test" && \
		(apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && \
		apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)); } || \
		echo "note: chromium not installed; the web page's browser test will skip"
	$(PY) -m ruff check .
	$(PY) -m pytest tests

# Speed/size figures quoted in the README (run on an idle machine; no test depends on timings).
bench: setup
	$(PY) -m preprocess.bench --out $(OUT)/bench_features.json
	$(PY) -m models.flops
	@if [ -f $(STUDENT) ]; then \
		$(PY) -m evaluate.export --ckpt $(STUDENT) --out $(OUT)/bench_student.onnx --int8 && \
		$(PY) -m evaluate.speed --ckpt $(STUDENT) --onnx $(OUT)/bench_student.onnx --repeats 50 \
			$(if $(wildcard ../shared/clips/wlasl_68011_book.mp4),--live ../shared/clips/wlasl_68011_book.mp4) --json $(OUT)/bench_speed.json; \
	else echo "bench: no $(STUDENT) yet (make demo trains it); skipping the student speed figures"; fi
	@if [ -d $(OUT)/teachers ] || [ -d $(OUT)/students ]; then \
		$(PY) -m evaluate.tables all --cache $(CACHE) --out $(OUT)/bench_tables.md --json $(OUT)/bench_tables.json; \
	else echo "bench: no trained teachers or students under $(OUT) (make teacher / make student); skipping the tables"; fi

# PHOENIX14-scale figures (README "Scale"): training/loader throughput, memory, epoch and cache size
# (evaluate.scale), RAFT vs DIS at 224 and extraction frames/s per worker count (preprocess.bench --scale).
# Small defaults on a CPU (a few minutes); on a GPU e.g. SCALE_ARGS="--clips 64".
SCALE_ARGS ?=
bench-scale: setup
	$(PY) -m evaluate.speed --scale phoenix14 $(SCALE_ARGS) --json $(OUT)/bench_scale.json
	$(PY) -m preprocess.bench --scale --workers-list 1,2,4,8,16 --out $(OUT)/bench_scale_features.json

clean-cache:
	rm -rf $(CACHE)

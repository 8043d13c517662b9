# UNIX-KD: teacher server, student trainer, and the commands around them.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
BACKEND     ?= grpc
PORT        ?= $(if $(filter triton,$(BACKEND)),8001,50051)
HOST        ?= 127.0.0.1
DATA_ROOT   ?=
DATASET     ?=
# The default teacher: a resnet20 trained on Fashion-MNIST by `make teacher`, shipped in the
# repository (experiments/teachers/, with its command, commit and top-1 in the .json beside it).
TEACHER_ARCH       ?= resnet20
TEACHER_EPOCHS     ?= 2
TEACHER_MILESTONES ?= 1
TEACHER_RUN        ?= runs/teacher-fashion-mnist-$(TEACHER_ARCH)
TEACHER_CKPT       ?= experiments/teachers/fashion-mnist-$(TEACHER_ARCH).pt
CHECKPOINT         ?= $(TEACHER_CKPT)
DATA_FLAGS          = $(if $(DATA_ROOT),--data-root $(DATA_ROOT))

.PHONY: install data test serve-teacher teacher demo reproduce protos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# Fashion-MNIST where the loaders find it: already there, else Debian's package (as root), else
# torchvision's download; otherwise one line saying what to run.
data: install
	$(PY) -m common.get_data fashion-mnist $(DATA_FLAGS)

# The real-data tests skip (with a warning here) where the data cannot be had.
test: install
	$(PY) -m common.get_data fashion-mnist --optional $(DATA_FLAGS)
	$(PY) -m pytest -q

# Trains the teacher again and replaces the shipped checkpoint (about 6 min here on an idle machine).
TEACHER_TRAIN = $(PY) -m student_trainer --method ce --dataset fashion-mnist $(DATA_FLAGS) --arch $(TEACHER_ARCH) \
	  --epochs $(TEACHER_EPOCHS) --lr 0.05 --milestones '$(TEACHER_MILESTONES)' --no-progress --out $(TEACHER_RUN)
teacher: install data
	rm -rf $(TEACHER_RUN)
	$(TEACHER_TRAIN)
	$(PY) -m student_trainer.tools.publish_teacher $(TEACHER_RUN) $(TEACHER_CKPT) --command "$(subst $(PY),python,$(TEACHER_TRAIN))"

# Only when the checkpoint is missing (another TEACHER_ARCH): a fresh clone has the shipped one.
$(TEACHER_CKPT):
	$(MAKE) teacher

# DATASET=fashion-mnist: also hold its training split, to render trainers' view recipes (--send recipes).
serve-teacher: install $(if $(ARCH),,$(CHECKPOINT))
	$(PY) -m teacher_server $(if $(ARCH),--arch $(ARCH),--checkpoint $(CHECKPOINT)) --host $(HOST) --port $(PORT) \
	  --backend $(BACKEND) $(if $(DATASET),--dataset $(DATASET) $(DATA_FLAGS))

demo: install data $(TEACHER_CKPT)
	$(PY) -m student_trainer.tools.demo --checkpoint $(TEACHER_CKPT) $(DATA_FLAGS)

# The evidence: every group and seed and the frontier -> docs/results.md and docs/answer-store/results.md,
# reusing the committed run records (docs/runs/, docs/answer-store/runs/) whose flags match exactly
# (QUICK=1: smoke check)
JOBS ?= 2
EVIDENCE ?= experiments/fashion_mnist.toml experiments/answer_store.toml
reproduce: install data
	for config in $(EVIDENCE); do \
	  $(PY) -m student_trainer.tools.experiment $$config --jobs $(JOBS) $(if $(QUICK),--quick) || exit 1; done

protos:
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/teacher.proto

clean:
	rm -rf runs .pytest_cache

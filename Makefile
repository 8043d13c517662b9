# UNIX-KD: teacher server, student trainer, and the commands around them.
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
BACKEND     ?= grpc
PORT        ?= $(if $(filter triton,$(BACKEND)),8001,50051)
HOST        ?= 127.0.0.1
# The default teacher: trained on Fashion-MNIST by `make teacher` (cached in runs/).
TEACHER_ARCH   ?= resnet20
TEACHER_EPOCHS ?= 2
TEACHER_CKPT   ?= runs/teacher-fashion-mnist-$(TEACHER_ARCH)/best.pt
CHECKPOINT     ?= $(TEACHER_CKPT)

.PHONY: install test serve-teacher teacher demo reproduce frontier protos clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: install
	$(PY) -m pytest -q

teacher: $(TEACHER_CKPT)

$(TEACHER_CKPT): | install
	$(PY) -m student_trainer --method ce --dataset fashion-mnist --arch $(TEACHER_ARCH) \
	  --epochs $(TEACHER_EPOCHS) --lr 0.05 --milestones '' --out $(dir $@)

serve-teacher: install $(if $(ARCH),,$(CHECKPOINT))
	$(PY) -m teacher_server $(if $(ARCH),--arch $(ARCH),--checkpoint $(CHECKPOINT)) --host $(HOST) --port $(PORT) \
	  --backend $(BACKEND)

demo: install $(TEACHER_CKPT)
	$(PY) -m student_trainer.demo --checkpoint $(TEACHER_CKPT)

# Issue-6 evidence: KD vs UNIX-KD on Fashion-MNIST, 3 seeds + ablations -> docs/results.md (QUICK=1: smoke check)
reproduce: install
	$(PY) -m student_trainer.experiment experiments/fashion_mnist.toml $(if $(QUICK),--quick)

# Accuracy vs teacher compute: KD and UNIX at k = 16, 32, 48, 64 -> runs/frontier/results.md
frontier: install
	$(PY) -m student_trainer.experiment experiments/frontier.toml $(if $(QUICK),--quick)

protos:
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. protos/teacher.proto

clean:
	rm -rf runs .pytest_cache

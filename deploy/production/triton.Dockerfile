# NVIDIA's Triton container serving two model repositories:
#   /models         serving/models (committed): the rule model early_warning, a python-backend
#                   model that imports icuwatch.core (feature layout and rule scores) and
#                   needs numpy < 2 (with numpy 2 the python backend returns empty outputs);
#   /models-fusion  the exported fusion models (`icuwatch export-triton`: the teacher
#                   attention_<cohort> and the distilled early-exit student student_<cohort>), copied
#                   from the build context at FUSION_REPOSITORY (default var/triton/models, generated
#                   from locally trained weights, never committed). Their model.py imports numpy (< 2),
#                   torch and the backend utilities only, and loads 1/model.pt (TorchScript).
#
# Triton 24.10 = server 2.51, the version the local stack runs (nvidia-pytriton 0.7). Its Python
# is 3.10 while icuwatch's pyproject asks for 3.11, and the backend stub is built for the
# container's interpreter, so only icuwatch.core goes in, on PYTHONPATH (the rule model needs only
# numpy). Build from the repository root, after
# `icuwatch export-triton` (OPERATIONS.md, "Serving the trained fusion models"):
#   docker build -f deploy/production/triton.Dockerfile -t icuwatch-triton:24.10 .
#   docker build ... --build-arg FUSION_REPOSITORY=path/to/exported/repository .
ARG TRITON_VERSION=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

# torch for the fusion models' python backend, pinned to pyproject's torch==2.13.0 (a TorchScript
# file is tied to the torch release that wrote it: export.json records it, the check below
# compares). The CPU build, from PyTorch's CPU index, not PyPI's default Linux wheel (the CUDA
# build, which pulls GBs of nvidia-* wheels carrying a second CUDA runtime beside the container's):
# the exported models run on CPU (config.pbtxt instance_group KIND_CPU, model.py loads model.pt
# with map_location="cpu"); they are small (40k and 114k parameters) and per-request overhead, not
# arithmetic, bounds their latency (`icuwatch bench models`), so a GPU buys nothing; and it is the
# build icuwatch.Dockerfile and the development environment export and verify with (2.13.0+cpu).
# torch 2.13.0 requires Python >= 3.10 and has cp310 manylinux_2_28 wheels (24.10 is Ubuntu 22.04,
# glibc 2.35), so it installs into the python backend's 3.10 interpreter (python3 below).
ARG TORCH_VERSION=2.13.0
RUN echo "numpy<2" > /tmp/constraints.txt \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints.txt "numpy>=1.26,<2" \
 && python3 -m pip install --no-cache-dir -c /tmp/constraints.txt \
      --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
 && python3 -c "import numpy, torch; print('numpy', numpy.__version__, 'torch', torch.__version__)"

# The rule model imports icuwatch.core only (feature layout and rule scores: numpy), so the image
# carries that package alone, not the whole project and its dependencies.
COPY icuwatch/__init__.py /opt/icuwatch/icuwatch/__init__.py
COPY core /opt/icuwatch/icuwatch/core
COPY deploy/production/check_triton_repository.py /opt/icuwatch/check_triton_repository.py
ENV PYTHONPATH=/opt/icuwatch
RUN python3 -c "from icuwatch.core import features, rules; print(features.N_FEATURES)"

# The rule model repository; docker-compose.yml mounts serving/models over it read-only.
COPY serving/models /models

# The exported fusion model repository (a path in the build context). For an image without the
# fusion models, point it at an empty directory (OPERATIONS.md).
ARG FUSION_REPOSITORY=var/triton/models
COPY ${FUSION_REPOSITORY} /models-fusion

# Fails the build when torch is not the pinned release, a model name is in both repositories
# (tritonserver refuses to start), or an exported model was written by another torch release, does
# not load, or does not answer a two-row batch of its inputs.
RUN python3 /opt/icuwatch/check_triton_repository.py \
      --torch "${TORCH_VERSION}" /models /models-fusion

# --strict-readiness: /v2/health/ready only once every model of both repositories is ready.
# Explicit model control, every model loaded at start: `icuwatch models promote|rollback` loads and
# unloads versions on the running server (deploy/triton_models.py).
CMD ["tritonserver", "--model-repository=/models", "--model-repository=/models-fusion", "--strict-readiness=true", "--model-control-mode=explicit", "--load-model=*"]

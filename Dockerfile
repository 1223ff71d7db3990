# Interpretability workbench: the Streamlit app on port 8501, runs stored under /data.
#
#   docker build -t workbench .                                   # torch as pinned (see below)
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t workbench:cpu .
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 -t workbench:cuda .
#   docker run -p 8501:8501 -v workbench-data:/data workbench
#
# requirements.txt pins torch==2.13.0. From PyPI alone that pin is the CUDA build on x86_64
# Linux (several GB, and it also runs on CPU-only hosts); TORCH_INDEX_URL adds PyTorch's own
# index, whose 2.13.0+cpu / +cuXXX wheel then satisfies the same pin. docs/deploy.md has more.
FROM python:3.11-slim

ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WORKBENCH_DATA_DIR=/data \
    MPLCONFIGDIR=/tmp/matplotlib

WORKDIR /app

# Dependencies first, so code changes do not reinstall them. requirements-nodeps.txt holds
# onnx2torch, installed without its dependencies: its torchvision requirement must not be installed.
COPY requirements.txt requirements-nodeps.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then export PIP_EXTRA_INDEX_URL="$TORCH_INDEX_URL"; fi \
 && pip install -r requirements.txt \
 && pip install --no-deps -r requirements-nodeps.txt

RUN useradd --create-home --uid 10001 --user-group workbench \
 && mkdir -p /data \
 && chown workbench:workbench /data

COPY --chown=root:root . .

USER workbench
VOLUME /data
EXPOSE 8501

# Follows server.baseUrlPath and server.port when they are given as STREAMLIT_SERVER_BASE_URL_PATH /
# STREAMLIT_SERVER_PORT (docs/deploy.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; base = os.environ.get('STREAMLIT_SERVER_BASE_URL_PATH', '').strip('/'); url = 'http://127.0.0.1:' + os.environ.get('STREAMLIT_SERVER_PORT', '8501') + '/' + (base + '/' if base else '') + '_stcore/health'; sys.exit(0 if urllib.request.urlopen(url, timeout=4).status == 200 else 1)"]

CMD ["streamlit", "run", "app.py"]

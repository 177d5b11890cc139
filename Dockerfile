# chemgen's image: the package with its locked dependencies, the shipped weights, the computed-spectra library and
# 3Dmol.js for the web app. CPU by default; a CUDA build with --build-arg TORCH_VARIANT=cu128 (any variant
# https://download.pytorch.org/whl/ serves for torch 2.13.0).
#
#   docker build -t registry.example.org/chemgen:0.2.0 .                            # the image prefect.yaml names
#   docker build --build-arg TORCH_VARIANT=cu128 -t registry.example.org/chemgen:0.2.0-cu128 .
#
# Everything chemgen writes goes under /data (CHEMGEN_HOME=/data/chemgen): mount a volume there. The crystal
# data (MP-20 CSVs) is read from /data/shared/data (CHEMGEN_DATA_DIR).

ARG PYTHON_VERSION=3.11

FROM node:20-slim AS web-assets
WORKDIR /assets
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts --loglevel=error

FROM python:${PYTHON_VERSION}-slim
ARG TORCH_VARIANT=cpu
ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# RDKit's drawing and Chromium-free PNG output need these shared libraries
RUN apt-get update && apt-get install -y --no-install-recommends libxrender1 libxext6 libgomp1 curl \
    && rm -rf /var/lib/apt/lists/*
# torch first, from the index of the chosen variant (PyPI's wheel would pull CUDA into a CPU image)
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/${TORCH_VARIANT}
# then the lock, exactly, without torch (installed above) and without resolving anything
COPY requirements.lock /tmp/requirements.lock
RUN grep -v '^torch==' /tmp/requirements.lock > /tmp/requirements.txt \
    && pip install --no-deps -r /tmp/requirements.txt && pip install --no-deps matminer==0.10.1
COPY pyproject.toml README.md /src/
COPY chemgen /src/chemgen
RUN pip install --no-deps /src && rm -rf /src
COPY models/weights /opt/chemgen/weights
COPY datasets/spectra /opt/chemgen/spectra
COPY --from=web-assets /assets/node_modules/3dmol/build/3Dmol-min.js /opt/chemgen/3Dmol-min.js
ENV CHEMGEN_HOME=/data/chemgen CHEMGEN_DATA_DIR=/data/shared/data CHEMGEN_WEIGHTS_DIR=/opt/chemgen/weights \
    CHEMGEN_SPECTRA_DIR=/opt/chemgen/spectra CHEMGEN_3DMOL_JS=/opt/chemgen/3Dmol-min.js OMP_NUM_THREADS=1
RUN useradd --create-home --uid 1000 chemgen && mkdir -p /data && chown chemgen /data
USER chemgen
WORKDIR /data
EXPOSE 8765
CMD ["chemgen", "serve", "--host", "0.0.0.0", "--port", "8765"]

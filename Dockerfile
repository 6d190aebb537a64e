# One image for the API and the workers; the command picks the role:
#   python -m service              the API (port $PORT, default 8000)
#   python -m worker fits          a worker that runs fits
#   python -m worker interactive   a worker that answers predictions and summaries
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HBM_DATA_DIR=/data \
    PORT=8000

# A C compiler: PyTensor compiles parts of a model at run time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 10001 hbm \
    && mkdir -p /data \
    && chown hbm:hbm /data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY worker ./worker
RUN pip install .

USER hbm
# PyTensor and numba caches live in the user's home (writable, per container).
ENV HOME=/home/hbm
EXPOSE 8000
CMD ["python", "-m", "service"]

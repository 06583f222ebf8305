# One image for the trainer, the worker, the replayer and the API.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 scorer
WORKDIR /app

# Dependencies first, so code changes do not invalidate this layer: exactly the locked
# versions, every file checked against its hash (make lock updates the lock).
COPY requirements/runtime.lock ./requirements/
RUN pip install --require-hashes -r requirements/runtime.lock
COPY pyproject.toml README.md ./

COPY features ./features
COPY training ./training
COPY stream ./stream
COPY api ./api
COPY artifact ./artifact
COPY contracts ./contracts
RUN pip install --no-deps --no-build-isolation . && mkdir -p /models /data && chown scorer /models /data
# The compiled walk of the reasons' path attribution (artifact/paths.c), built once here
# beside the installed package; the compiler leaves the image again.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python -m artifact.paths \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/*

USER scorer
ENV SCORER_MODEL_PATH=/models/Pickled_model.pkl
CMD ["python", "-m", "api", "--host", "0.0.0.0", "--port", "8000"]

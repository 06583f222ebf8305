# One image for the trainer, the worker, the replayer and the API.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 10001 scorer
WORKDIR /app

# Dependencies first, so code changes do not invalidate this layer.
COPY pyproject.toml README.md ./
RUN mkdir -p features training stream api artifact contracts \
    && for p in features training stream api artifact contracts; do touch $p/__init__.py; done \
    && pip install . \
    && pip uninstall -y sberauto-scorer

COPY features ./features
COPY training ./training
COPY stream ./stream
COPY api ./api
COPY artifact ./artifact
COPY contracts ./contracts
RUN pip install --no-deps . && mkdir -p /models /data && chown scorer /models /data

USER scorer
ENV SCORER_MODEL_PATH=/models/Pickled_model.pkl
CMD ["python", "-m", "api", "--host", "0.0.0.0", "--port", "8000"]

# One image for every role: `steplog serve --roles api,engine,worker,projector` (any subset).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN mkdir -p engine api projections steplog \
    && touch engine/__init__.py api/__init__.py projections/__init__.py steplog/__init__.py \
    && pip install . \
    && pip uninstall -y steplog
COPY engine ./engine
COPY api ./api
COPY projections ./projections
COPY steplog ./steplog
# setup.py builds steplog's optional C extensions (the span export process's OTLP
# encoding, and the life of a span; without them steplog does both in Python): gcc only
# for the build.
COPY setup.py ./
# migrate.py finds ./migrations through the working directory when installed as a wheel.
COPY migrations ./migrations
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-deps . \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 steplog \
    && mkdir -p /app/.steplog && chown steplog /app/.steplog
USER steplog

ENV STEPLOG_HOST=0.0.0.0 \
    STEPLOG_PORT=8080 \
    STEPLOG_LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["steplog"]
CMD ["serve", "--roles", "api,engine,worker,projector"]

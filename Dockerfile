# The martech service image: the package, the example config and templates.
# Pinned: a rebuild gets the same Python, not whatever "3.12" meant that day.
FROM python:3.12.8-slim-bookworm

# A user of its own: the service never runs as root in the container.
RUN groupadd --system --gid 10001 martech \
 && useradd --system --uid 10001 --gid martech --home-dir /app --no-create-home martech

WORKDIR /app
COPY pyproject.toml README.md ./
COPY martech ./martech
COPY scheduler ./scheduler
COPY jobs ./jobs
RUN pip install --no-cache-dir .
COPY config ./config
COPY templates ./templates
# var/ is the service's only writable directory (a volume in docker-compose.yml); a named
# volume starts with this directory's owner, so the service can write to it.
RUN mkdir -p /app/var && chown martech:martech /app/var
ENV MARTECH_VAR_DIR=/app/var
VOLUME ["/app/var"]

USER martech:martech
EXPOSE 8025
HEALTHCHECK --interval=30s --timeout=10s CMD ["martech", "health"]
CMD ["martech", "run"]

# The martech service image: the package, the example config and templates.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY scheduler ./scheduler
COPY jobs ./jobs
RUN pip install --no-cache-dir .
COPY config ./config
COPY templates ./templates
ENV MARTECH_VAR_DIR=/app/var
HEALTHCHECK --interval=30s --timeout=10s CMD ["martech", "health"]
CMD ["martech", "run"]

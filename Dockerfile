# One image for every eventlab process: the six shop services and the outbox relay
# (`eventlab run NAME`), as compose.yaml starts them. Build: docker compose build
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# what the wheel is built from (pyproject.toml names README.md; data/ becomes eventlab/data)
COPY pyproject.toml README.md ./
COPY data ./data
COPY eventlab ./eventlab
# the PostgreSQL extra: psycopg for the store, DuckDB's postgres extension for the read side
RUN pip install ".[postgres]" && rm -rf /src

# a non-root user; its data directory keeps the mailbox, the gateway's log and supervision state
RUN useradd --create-home --uid 10001 eventlab && mkdir -p /var/lib/eventlab && chown eventlab /var/lib/eventlab
USER eventlab
WORKDIR /var/lib/eventlab
# bind the HTTP ports on every interface, so compose can publish them
ENV EVENTLAB_DATA_DIR=/var/lib/eventlab \
    EVENTLAB_HTTP_HOST=0.0.0.0

CMD ["eventlab", "--help"]

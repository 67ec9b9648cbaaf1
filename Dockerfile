# Switchboard's image: `docker build -t switchboard .` (see README "Deploying").
# Stage 1 builds the virtualenv; stage 2 is the slim runtime with the code and a non-root user.
FROM python:3.11-slim AS build
WORKDIR /build
COPY requirements.txt .
RUN python -m venv /venv \
 && /venv/bin/pip install --no-cache-dir --upgrade pip \
 && /venv/bin/pip install --no-cache-dir -r requirements.txt

FROM python:3.11-slim
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --shell /usr/sbin/nologin switchboard
WORKDIR /app
COPY --from=build /venv /venv
COPY app.py ./
COPY core ./core
COPY managers ./managers
COPY modules ./modules
COPY actions ./actions
COPY config ./config
RUN mkdir -p /app/var /run/secrets && chown switchboard:switchboard /app/var
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    APP_ENV=production \
    SB_HTTP__HOST=0.0.0.0 \
    SB_HTTP__PORT=8000
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2).status != 200)"]
# Secrets (jwt.private_key, api_keys.pepper, database.url, redis.url, ...) are files in
# /run/secrets named after the setting; configuration is SB_* environment or config/*.yaml.
CMD ["python", "app.py", "serve"]

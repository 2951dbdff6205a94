# Image for the `init` and `worker` services of docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir ".[processors]"
ENTRYPOINT []

# Image for the `init`, `worker` and `compensator` services of docker-compose.yml; the
# example world (examples/world) is installed for the compensator's handlers.
FROM python:3.11-slim
WORKDIR /app
COPY . /app
RUN pip install --no-cache-dir ".[processors]" ./examples/world
ENTRYPOINT []

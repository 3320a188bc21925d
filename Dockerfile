# The project image `ratequeue-testbed:local`: ratequeue API, detection (heartbeat sensors), lazarus_lite
# controllers and the chaos runner, one image for every Python service of docker-compose.yml.
#
# No image can be pulled here, so the base is made locally from the host's CPython and the
# dependencies come from a wheelhouse built on the host; `docker build` needs no network.
# Build everything with:   deploy/build-images.sh
# or by hand:              docker/python-base-image.sh
#                          python3.11 -m pip wheel -w build/wheelhouse . 'setuptools>=68'
#                          docker build -t ratequeue-testbed:local .
# No BuildKit features: the classic builder of Debian's docker.io builds it too.

# -- build stage: install into /install, so the wheels never end up in a layer of the result --
FROM ratequeue-python:local AS build
# The classic builder keeps this stage as an untagged image (it is also the layer cache of the
# next build); `docker image prune --filter label=ratequeue.stage=build` removes it.
LABEL ratequeue.stage=build
USER root
COPY build/wheelhouse /wheels
RUN ["python3", "-m", "pip", "install", "--no-index", "--find-links=/wheels", "--no-cache-dir", \
     "--root-user-action=ignore", "--disable-pip-version-check", "setuptools>=68"]
COPY pyproject.toml README.md /src/
COPY ratequeue /src/ratequeue
COPY common /src/common
COPY notifications /src/notifications
COPY detection /src/detection
COPY lazarus_lite /src/lazarus_lite
COPY chaos /src/chaos
# --no-build-isolation: the build backend (setuptools) comes from the wheelhouse, not PyPI.
RUN ["python3", "-m", "pip", "install", "--no-index", "--find-links=/wheels", "--no-cache-dir", \
     "--root-user-action=ignore", "--disable-pip-version-check", "--no-build-isolation", \
     "--prefix=/install", "/src"]
# The controller's rules, workflows and service profiles are YAML beside its code, and
# pyproject.toml does not declare them as package data yet, so the wheel lacks them: copy them.
# (Harmless once package data is declared: the same files.)
COPY lazarus_lite/definitions /install/lib/python3.11/site-packages/lazarus_lite/definitions

# -- runtime stage ----------------------------------------------------------------------------
FROM ratequeue-python:local
COPY --from=build /install /usr/local
COPY scenarios /app/scenarios
# Fail the build, not the deployment, if a module or one of its native libraries is missing.
RUN ["python3", "-c", "import ratequeue.service, detection.sensor, lazarus_lite.service, \
     chaos.runner, chaos.faults.docker, hiredis, uvloop, httptools, pydantic_core, yaml; \
     from lazarus_lite.settings import DEFINITIONS; \
     assert (DEFINITIONS / 'rules' / 'ratequeue.yaml').is_file(), DEFINITIONS"]
WORKDIR /app
# Unprivileged by default; the chaos service runs as root for the Docker socket.
USER 10001:10001
LABEL org.opencontainers.image.title="ratequeue-testbed"
CMD ["ratequeue", "--help"]

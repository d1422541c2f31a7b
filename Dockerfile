# The one image every target runs from (deploy/k8s): `cartlytics run --target <name>`.
# Not built on the project's machines (no Docker engine there); `pip wheel .` is, and it holds
# every service package and the descriptor set.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
COPY services ./services
COPY gateway ./gateway
RUN pip install --no-cache-dir . && rm -rf /app/*

# The Kubernetes manifests run it as this user, with a read-only root filesystem and the data
# dir (/var/lib/cartlytics: bootstrap key file, embedded stores when used) on a volume.
USER 10001
ENTRYPOINT ["cartlytics"]
CMD ["run", "--target", "all"]

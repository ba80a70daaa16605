# Amber's image: the agent (`amber agent`, the default command) and the CLI.
# Deployed by manifests/ as a DaemonSet; docs/deploy.md tells how.
#
# Both stages start from the official Node image, pinned by version: a
# supported LTS (Node 24; the code also runs on the developers' Node 20) on
# Debian bookworm, the release the BPF toolchain and libbpf are built and
# tested with. npm run test:image builds this file with podman against a local
# stand-in of that same image (scripts/test-image.sh).
ARG NODE_IMAGE=docker.io/library/node:24.21.0-bookworm-slim

# --- build: the BPF objects and the native addon (cmake-js), the TypeScript
FROM ${NODE_IMAGE} AS build
# cmake-js takes Node's headers from the image's own Node (/usr/local/include/node), never downloading them
ENV npm_config_nodedir=/usr/local
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      clang bpftool libbpf-dev libelf-dev zlib1g-dev pkg-config cmake make g++ protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# npm install, not npm ci, for the reason scripts/ensure.sh gives: it installs
# what the lock pins and leaves the lock as it is. No install scripts: nothing
# is downloaded from outside the npm registry. A build behind a TLS-inspecting
# proxy passes its CA bundle as the secret `ca` (podman/docker build --secret
# id=ca,src=FILE); it is mounted for this step only, never stored in a layer.
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npm install --ignore-scripts --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/ensure.sh scripts/
COPY bpf bpf/
COPY native native/
COPY src src/
# The one build recipe (BPF + addon, protoc codegen, tsc). vmlinux.h comes
# from the build host's /sys/kernel/btf/vmlinux: the programs are CO-RE and
# relocate to each node's kernel at load.
RUN bash scripts/ensure.sh --build-only

# --- production dependencies only
FROM build AS prod-deps
# (npm looks up the lock's optional packages again: the same CA secret as above)
RUN --mount=type=secret,id=ca \
    if [ -s /run/secrets/ca ]; then export NODE_EXTRA_CA_CERTS=/run/secrets/ca; fi \
 && npm prune --omit=dev --ignore-scripts --no-audit --no-fund

# --- runtime
FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.title="amber" \
      org.opencontainers.image.description="eBPF flight recorder for containers" \
      org.opencontainers.image.licenses="Apache-2.0"
# libbpf, libelf and zlib for the addon; npm, npx, corepack and yarn are not
# needed to run and are left out
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libbpf1 libelf1 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
           /usr/local/bin/yarn /usr/local/bin/yarnpkg /opt/yarn-*
WORKDIR /app
COPY --from=prod-deps /src/package.json ./
COPY --from=prod-deps /src/node_modules node_modules/
COPY rules rules/
COPY --from=build /src/build/native/Release/amber_native.node build/native/Release/
COPY --from=build /src/dist/src dist/src/
# the runtime-loaded .proto files (container runtimes' APIs) beside the code that loads them
COPY --from=build /src/src/containers/*.proto dist/src/containers/
RUN chmod 0755 dist/src/cli/main.js && ln -s /app/dist/src/cli/main.js /usr/local/bin/amber
ENV NODE_ENV=production
# root: loading BPF needs it; the DaemonSet drops every capability but those it names
USER root
ENTRYPOINT ["amber"]
CMD ["agent"]

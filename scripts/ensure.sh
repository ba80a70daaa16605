#!/usr/bin/env bash
# Brings a fresh machine to where `npm start` and `npm test` can run:
# system packages (apt-get), node modules, the BPF objects + native addon, the TypeScript.
#   scripts/ensure.sh              what the agent needs
#   scripts/ensure.sh --test       plus what the tests need (podman, runc, busybox-static, containerd, ...)
#   scripts/ensure.sh --bench      plus the peers the benchmarks compare against (bpftrace)
#   scripts/ensure.sh --build-only only build (npm's prepare step)
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'amber setup: %s\n' "$*" >&2; }

mode=${1:-}
# Debian package -> a file it installs, to see whether it is there.
declare -A need=(
  [clang]=/usr/bin/clang
  [bpftool]=/usr/sbin/bpftool
  [libbpf-dev]=/usr/include/bpf/libbpf.h
  [libelf-dev]=/usr/include/libelf.h
  [zlib1g-dev]=/usr/include/zlib.h
  [pkg-config]=/usr/bin/pkg-config
  [cmake]=/usr/bin/cmake
  [make]=/usr/bin/make
  [g++]=/usr/bin/g++
  [protobuf-compiler]=/usr/bin/protoc
)
if [[ $mode == --test || $mode == --bench ]]; then
  need+=(
    [podman]=/usr/bin/podman
    [runc]=/usr/sbin/runc
    [busybox-static]=/bin/busybox
    [iproute2]=/usr/bin/ip
    [util-linux]=/usr/bin/nsenter
    [uidmap]=/usr/bin/newuidmap
    [slirp4netns]=/usr/bin/slirp4netns
    [containerd]=/usr/bin/containerd
    [gdb]=/usr/bin/gdb
    [openssh-server]=/usr/sbin/sshd
    [python3]=/usr/bin/python3
  )
fi
if [[ $mode == --bench ]]; then
  need+=([bpftrace]=/usr/bin/bpftrace)
fi

if [[ $mode != --build-only ]]; then
  missing=()
  for pkg in "${!need[@]}"; do
    [[ -e ${need[$pkg]} ]] || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
      say "missing system packages: ${missing[*]}"
      say "run as root:  $cmd"
      exit 1
    fi
    say "installing system packages: ${missing[*]} (apt-get)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi

  if [[ ! -x node_modules/.bin/cmake-js || ! -x node_modules/.bin/tsc || package-lock.json -nt node_modules/.package-lock.json ]]; then
    # npm install, not npm ci: the lock cannot list optional binaries for other
    # platforms that the registry mirror lacks, and npm ci refuses such a lock.
    # It installs what the lock pins and leaves the lock as it is.
    say "installing node modules (npm install)"
    npm install --ignore-scripts --no-audit --no-fund >&2
  fi
fi

addon=build/native/Release/amber_native.node
if [[ ! -f $addon ]] || [[ -n $(find bpf native -newer "$addon" -type f -print -quit) ]]; then
  say "building the BPF programs and the native addon (cmake-js)"
  npx cmake-js compile --directory native --out build/native >&2 || {
    say "native build failed; the output above says why"
    exit 1
  }
fi
proto=src/api/amber.proto
gen=src/api/gen/amber.ts
if [[ ! -f $gen || $proto -nt $gen || package-lock.json -nt $gen ]]; then
  # the API's TypeScript is generated from the .proto (ts-proto), never committed
  say "generating the API's TypeScript (protoc + ts-proto)"
  mkdir -p src/api/gen
  protoc --plugin=protoc-gen-ts_proto=node_modules/.bin/protoc-gen-ts_proto --ts_proto_out=src/api/gen \
    --ts_proto_opt=outputServices=grpc-js,env=node,esModuleInterop=true,forceLong=number,oneof=unions,outputJsonMethods=false,outputPartialMethods=false \
    -I src/api "$proto"
fi
# compiled again only when a source changed: dist/ is what running tests and agents load
stamp=dist/.compiled
if [[ ! -f $stamp || -n $(find src bench tsconfig.json package-lock.json -newer "$stamp" -print -quit) ]]; then
  say "compiling TypeScript"
  npx tsc -p tsconfig.json
  touch "$stamp"
fi
# package.json's bin: `npx amber` runs it directly (tsc writes it without the executable bit)
chmod 0755 dist/src/cli/main.js

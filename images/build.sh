#!/usr/bin/env bash
# Builds the operator's and the sidecar's images without a daemon, as CI does: statically
# linked binaries (glibc, -C target-feature=+crt-static, the ci-image cargo profile: release
# without fat LTO, for CI time), then `buildah bud` FROM scratch with only the binary and
# the CA bundle, USER 65532; then runs each binary from its image (`--version`) and prints
# the image sizes. images/*.Dockerfile are the same images for users with a container
# engine (multi-stage, building inside a Rust image).
#
#   images/build.sh            build, run, print sizes, remove the images
#   KEEP=1 images/build.sh     keep them (buildah images; buildah push … to a registry)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
TAG=${TAG:-ci}
PROFILE=${PROFILE:-ci-image}
target="$(uname -m)-unknown-linux-gnu"
# Storage of our own, so that nothing else on the machine shares (or sees) these images.
store=${BUILDAH_STORE:-$(mktemp -d /tmp/portcullis-buildah.XXXXXX)}
bah() { buildah --storage-driver vfs --root "$store/root" --runroot "$store/run" "$@"; }
step() { printf '\n=== images: %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }
started=$(date +%s)

if ! command -v buildah >/dev/null 2>&1; then
  step "installing buildah"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null
fi
buildah --version

step "static binaries (cargo --profile $PROFILE --target $target, +crt-static)"
t0=$(date +%s)
RUSTFLAGS="-C target-feature=+crt-static" \
  cargo build --locked --quiet --profile "$PROFILE" --target "$target" \
  -p portcullis-operator -p portcullis-proxy --bin portcullis-operator --bin portcullis-proxy
echo "built in $(( $(date +%s) - t0 )) s"
bindir="${CARGO_TARGET_DIR:-target}/$target/$PROFILE"

status=0
declare -A ports=([operator]="8443 9443 9090" [proxy]="8080 9090")
for name in operator proxy; do
  bin="portcullis-$name"
  step "image portcullis-$name:$TAG"
  # Statically linked: no interpreter, no shared library needed.
  if readelf -lW "$bindir/$bin" | grep -q 'INTERP' || readelf -dW "$bindir/$bin" | grep -q 'NEEDED'; then
    echo "FAIL: $bin is not statically linked:"; readelf -dW "$bindir/$bin" | grep NEEDED || true
    exit 1
  fi
  echo "$bin: statically linked, $(du -h "$bindir/$bin" | cut -f1)"
  ctx=$(mktemp -d)
  cp "$bindir/$bin" "$ctx/$bin"
  strip --strip-debug "$ctx/$bin" 2>/dev/null || true
  cp /etc/ssl/certs/ca-certificates.crt "$ctx/ca-certificates.crt"
  expose=""
  for p in ${ports[$name]}; do expose+="EXPOSE $p"$'\n'; done
  cmd=""; [[ $name == operator ]] && cmd='CMD ["run"]'
  cat >"$ctx/Containerfile" <<CONTAINERFILE
FROM scratch
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY $bin /$bin
USER 65532:65532
${expose}ENTRYPOINT ["/$bin"]
$cmd
CONTAINERFILE
  bah bud --quiet --isolation chroot --layers=false -f "$ctx/Containerfile" -t "portcullis-$name:$TAG" "$ctx" >/dev/null
  rm -rf "$ctx"

  # Run the binary from its image, as the image's user.
  ctr=$(bah from --quiet "portcullis-$name:$TAG")
  user=$(bah inspect --format '{{.OCIv1.Config.User}}' "$ctr")
  if out=$(bah run --isolation chroot "$ctr" -- "/$bin" --version 2>/dev/null); then
    how="buildah run --isolation chroot"
  else
    # Where buildah run is not allowed (no mount namespaces), chroot into the mounted image.
    mnt=$(bah mount "$ctr")
    out=$(chroot --userspec="$user" "$mnt" "/$bin" --version)
    how="chroot into the mounted image, as $user"
    bah umount "$ctr" >/dev/null
  fi
  echo "ran /$bin --version from the image ($how): $out"
  if [[ $out != "$bin "* ]]; then echo "FAIL: unexpected --version output"; status=1; fi
  files=$(bah mount "$ctr" | xargs -I{} find {} -type f -printf '%P\n' | sort | tr '\n' ' ')
  bah umount "$ctr" >/dev/null
  echo "files in the image: $files; user: $user"
  [[ $user == 65532:65532 ]] || { echo "FAIL: image user is $user"; status=1; }
  bah rm "$ctr" >/dev/null
done

step "sizes"
bah images --format '{{.Name}}:{{.Tag}} {{.Size}}' | grep portcullis- | sed 's/^/IMAGE /'
if [[ -z ${KEEP:-} ]]; then
  bah rmi --all --force >/dev/null 2>&1 || true
  rm -rf "$store"
else
  echo "kept in $store (BUILDAH_STORE=$store buildah --storage-driver vfs --root $store/root --runroot $store/run images)"
fi
echo "images: done in $(( $(date +%s) - started )) s"
exit $status

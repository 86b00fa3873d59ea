#!/usr/bin/env bash
# Docker Engine helpers for the test suite.
#
# No container registry is reachable, so nothing can be pulled: the base image
# the delivery tests build on is made here from Debian's statically linked
# busybox (sh, wget, httpd and the rest of its applets, no libc needed).
#
#   docker.sh base-image [TAG]             build the base image TAG (default
#                                          leanloop/busybox:latest) unless it
#                                          exists; print TAG
#   docker.sh cleanup-label LABEL          remove every container, network and
#                                          volume carrying LABEL (key or
#                                          key=value), e.g. leanloop.test=1
#
# Environment: BUSYBOX_BIN (static busybox to use, default /bin/busybox).
set -euo pipefail

die() { echo "docker.sh: $*" >&2; exit 1; }

DEFAULT_TAG=leanloop/busybox:latest

# A dynamically linked busybox would find no libc inside the image.
is_static() {
  local bin=$1 out
  [[ -x $bin ]] || return 1
  if command -v file >/dev/null; then
    out=$(file -L "$bin" 2>/dev/null) || return 1
    [[ $out == *"statically linked"* || $out == *"static-pie linked"* ]] && return 0
    [[ $out == *"dynamically linked"* ]] && return 1
  fi
  # No `file` (or an answer it cannot classify): ldd refuses static binaries.
  out=$(ldd "$bin" 2>&1 || true)
  [[ $out == *"not a dynamic executable"* || $out == *"statically linked"* ]]
}

busybox_bin() { echo "${BUSYBOX_BIN:-/bin/busybox}"; }

install_busybox() {
  local bin; bin=$(busybox_bin)
  is_static "$bin" && return 0
  [[ -z ${BUSYBOX_BIN:-} ]] || die "$bin is not a statically linked executable"
  [[ $(id -u) -eq 0 ]] || die "installing busybox-static needs root (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # busybox-static replaces Debian's dynamic busybox package, which installs
  # the same /bin/busybox. Try without refreshing the package lists first.
  apt-get install -y -q --no-install-recommends busybox-static >/dev/null 2>&1 || {
    apt-get update -qq
    apt-get install -y -q --no-install-recommends busybox-static >/dev/null
  }
  is_static "$bin" || die "$bin is still not a static busybox after installing busybox-static"
}

docker_ok() {
  command -v docker >/dev/null || die "docker CLI not found"
  docker info >/dev/null 2>&1 || die "Docker Engine not reachable (docker info failed)"
}

cmd_base_image() {
  local tag=${1:-$DEFAULT_TAG} bin rootfs applet n=0
  docker_ok
  if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag"; return 0; fi
  install_busybox
  bin=$(busybox_bin)
  rootfs=$(mktemp -d)
  # shellcheck disable=SC2064  # expand now: rootfs is local
  trap "rm -rf '$rootfs'" EXIT
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,var/www,proc,sys,dev}
  chmod 1777 "$rootfs/tmp"
  chmod 700 "$rootfs/root"
  cp "$bin" "$rootfs/bin/busybox"
  chmod 755 "$rootfs/bin/busybox"
  # Every applet as a relative symlink in /bin (on the image's PATH); what
  # busybox --install -s would spread over /sbin and /usr/bin is found there too.
  while read -r applet; do
    [[ -n $applet && $applet != busybox && $applet != */* ]] || continue
    ln -s busybox "$rootfs/bin/$applet"
    n=$((n + 1))
  done < <("$bin" --list)
  ((n > 0)) || die "$bin --list printed no applets"
  cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
nobody:x:65534:
EOF
  # Owned by root in the image whoever runs this (docker import keeps owners).
  tar --numeric-owner --owner=0 --group=0 -C "$rootfs" -c . |
    docker import \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["/bin/sh"]' \
      - "$tag" >/dev/null || die "docker import of $tag failed"
  rm -rf "$rootfs"
  trap - EXIT
  # The tests rely on these applets: sh for steps, wget for probes, httpd to serve.
  local out
  out=$(docker run --rm "$tag" sh -c \
    'echo ok && wget --help >/dev/null 2>&1 && httpd --help 2>&1 | head -1;
     for a in sh wget httpd; do [ -x "/bin/$a" ] && echo "have /bin/$a"; done' 2>&1) || {
    docker image rm "$tag" >/dev/null 2>&1 || true
    die "image $tag does not run: $out"
  }
  # Checked as files, not with `command -v`: Debian's busybox shell runs its
  # own applets even without links, but an exec-form CMD needs the file.
  if [[ $out != ok* || $out != *"have /bin/sh"* || $out != *"have /bin/wget"* ||
        $out != *"have /bin/httpd"* ]]; then
    docker image rm "$tag" >/dev/null 2>&1 || true
    die "image $tag lacks sh, wget or httpd: $out"
  fi
  echo "$tag"
}

cmd_cleanup_label() {
  local label=${1:?usage: cleanup-label LABEL} ids nc=0 nn=0 nv=0
  docker_ok
  mapfile -t ids < <(docker ps -aq --filter "label=$label")
  if ((${#ids[@]})); then
    docker rm -f -v "${ids[@]}" >/dev/null || die "could not remove containers labelled $label"
    nc=${#ids[@]}
  fi
  # Networks after containers: a network with endpoints cannot be removed.
  mapfile -t ids < <(docker network ls -q --filter "label=$label")
  if ((${#ids[@]})); then
    docker network rm "${ids[@]}" >/dev/null || die "could not remove networks labelled $label"
    nn=${#ids[@]}
  fi
  mapfile -t ids < <(docker volume ls -q --filter "label=$label")
  if ((${#ids[@]})); then
    docker volume rm -f "${ids[@]}" >/dev/null || die "could not remove volumes labelled $label"
    nv=${#ids[@]}
  fi
  echo "removed $nc containers, $nn networks, $nv volumes labelled $label"
}

case ${1:-} in
  base-image) shift; cmd_base_image "$@" ;;
  cleanup-label) shift; cmd_cleanup_label "$@" ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac

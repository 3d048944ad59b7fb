# Sourced by bin/container-base and bin/container-smoke. On hosts where podman's defaults cannot
# start a container (crun refuses hybrid cgroups v1+v2; raising RLIMIT_NOFILE/NPROC is not
# permitted, as in some VMs and CI sandboxes), points podman at a containers.conf that uses runc
# and keeps the rlimits below the host's. Elsewhere it changes nothing.
container_compat() {
    local probe_image=$1
    podman run --rm "$probe_image" true >/dev/null 2>&1 && return 0
    command -v runc >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null
    mkdir -p target/container
    cat >target/container/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
    export CONTAINERS_CONF=$PWD/target/container/containers.conf
    podman run --rm "$probe_image" true >/dev/null || {
        echo "podman cannot start a container on this host, even with $CONTAINERS_CONF" >&2
        return 1
    }
    echo "container: using $CONTAINERS_CONF (runc, lower rlimits) on this host" >&2
}

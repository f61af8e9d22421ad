# HAProxy for docker/compose.yaml, from the same debian:bookworm base as the
# server image (docker/base-image.sh); Debian's haproxy 2.6. The
# configuration is mounted (docker/haproxy.cfg) and takes its addresses from
# the environment.
#   DOCKER_BUILDKIT=0 docker build --network host -f docker/haproxy.Dockerfile -t qlinear-haproxy:dev .
FROM debian:bookworm
RUN apt-get update -q \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
USER haproxy
STOPSIGNAL SIGUSR1
ENTRYPOINT ["haproxy", "-db", "-f", "/etc/haproxy/haproxy.cfg"]

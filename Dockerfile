# The Beep media router. Two images from this file (see README.md, "Docker"):
#
#   docker build -t beep-router .
#       the router alone: a static binary (CGO_ENABLED=0) on distroless, non-root
#   docker build --target plugins -t beep-router:plugins .
#       the router with the recorder and transcriber plugins on Debian: the
#       transcriber needs cgo with libopus and runs pocketsphinx, which a static
#       distroless image cannot hold
#
# Try it, on Linux (the -dev demo on http://localhost:8080/):
#   docker run --rm --network host beep-router -dev
# or with published ports (ICE on UDP_PORT, announced as PUBLIC_IPS):
#   docker run --rm -p 8080:8080 -p 50000:50000/udp -e PUBLIC_IPS=<this host's IP> beep-router -dev

# GO_VERSION is go.mod's go line (a test in cmd/router keeps them equal).
ARG GO_VERSION=1.26.8

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/router ./cmd/router && \
    CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/beep-recorder ./plugins/recorder

# The transcriber decodes Opus with libopus through cgo (-tags opus).
FROM build AS build-transcriber
RUN apt-get update && \
    apt-get install -y --no-install-recommends libopus-dev pkg-config && \
    rm -rf /var/lib/apt/lists/*
RUN CGO_ENABLED=1 go build -trimpath -ldflags="-s -w" -tags opus -o /out/beep-transcriber ./plugins/transcriber

# The router with its plugins, for a PIPELINE that names them (README.md's
# plugin example uses these paths): libopus0 for the transcriber,
# pocketsphinx and its US English model for its recogniser.
FROM debian:bookworm-slim AS plugins
RUN apt-get update && \
    apt-get install -y --no-install-recommends libopus0 pocketsphinx pocketsphinx-en-us && \
    rm -rf /var/lib/apt/lists/* && \
    useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin beep && \
    mkdir -p /var/lib/beep/rec && chown beep:beep /var/lib/beep/rec
COPY --from=build /out/router /router
COPY --from=build /out/beep-recorder /usr/local/bin/beep-recorder
COPY --from=build-transcriber /out/beep-transcriber /usr/local/bin/beep-transcriber
# A non-root user cannot bind :80, so the image listens on 8080; all ICE
# traffic goes through one UDP port.
ENV LISTEN=:8080 \
    UDP_PORT=50000
EXPOSE 8080/tcp 50000/udp
USER beep:beep
ENTRYPOINT ["/router"]

# The default image (last stage): the router alone.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/router /router
ENV LISTEN=:8080 \
    UDP_PORT=50000
EXPOSE 8080/tcp 50000/udp
USER nonroot:nonroot
ENTRYPOINT ["/router"]

# The Beep media router: a static binary on a distroless, non-root image.
#   docker build -t beep-router .
#   docker run -p 8080:8080 -p 50000:50000/udp -e PUBLIC_IPS=<host ip> beep-router
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/router ./cmd/router

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/router /router
# A non-root user cannot bind :80, so the image listens on 8080; all ICE
# traffic goes through one UDP port.
ENV LISTEN=:8080 \
    UDP_PORT=50000
EXPOSE 8080/tcp 50000/udp
USER nonroot:nonroot
ENTRYPOINT ["/router"]

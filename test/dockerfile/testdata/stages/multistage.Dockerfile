# syntax=docker/dockerfile:1
ARG GO=1.22
ARG BASE=alpine:3.19
FROM --platform=$BUILDPLATFORM golang:${GO} AS Builder
RUN --mount=type=cache,target=/root/.cache go build -o /app

FROM ${BASE} AS runtime-deps
RUN apk add ca-certificates

FROM builder AS test
RUN go test ./...

FROM scratch AS assets
COPY --from=node:20 /usr/lib /lib

FROM runtime-deps
COPY --from=BUILDER /app /app
COPY --from=3 /x /x
RUN --mount=from=assets,target=/assets ls /assets

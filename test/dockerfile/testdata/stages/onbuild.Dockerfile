FROM alpine AS tools
RUN touch /bin/x

FROM alpine AS base
ONBUILD COPY --from=tools /bin/x /x

FROM alpine AS unrelated

FROM base AS app
RUN true

FROM @REGISTRY@/busybox
COPY . /ctx/

FROM @REGISTRY@/busybox
ONBUILD RUN echo "onbuild ran in $(pwd)" > /onbuild-ran
ONBUILD COPY marker.txt /from-onbuild/
ONBUILD ENV FROM_TRIGGER=yes

FROM @REGISTRY@/busybox
ENV BASE_ENV=base
ONBUILD COPY trigger.txt /triggered/
ONBUILD RUN echo "onbuild ran with $BASE_ENV" > /triggered/ran
ONBUILD ENV FROM_TRIGGER=yes
ONBUILD LABEL triggered=true

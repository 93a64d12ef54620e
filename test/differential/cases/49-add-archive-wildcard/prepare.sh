for i in 1 2; do mkdir -p t$i/d$i && echo "archive $i" > t$i/d$i/f && echo "shared $i" > t$i/shared
  tar --numeric-owner --owner=0 --group=0 -C t$i -cf - . | gzip -n > arc$i.tar.gz; done
mkdir -p t3 && echo three > t3/three && tar --numeric-owner --owner=0 --group=0 -C t3 -cf arc3.tar three
rm -rf t1 t2 t3

mkdir -p t/d/e && echo f > t/d/f && echo g > t/d/e/g && chmod 0751 t/d/e && chmod 0604 t/d/f
tar --numeric-owner --owner=1000 --group=1000 -C t -cf owned.tar d
gzip -n -c owned.tar > owned.tar.gz
rm -rf t

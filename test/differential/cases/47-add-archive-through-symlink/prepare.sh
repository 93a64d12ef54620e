mkdir -p t/x/y && echo inner > t/x/y/inner && echo file > t/x/file
tar --numeric-owner --owner=0 --group=0 -C t -cf a.tar x
rm -rf t

# archives whose member list lacks the parent directories of some entries (BuildKit creates them 0755 root)
mkdir -p t/a/b t/x/y && echo c > t/a/b/c && echo top > t/top && echo deep > t/x/y/deep && chmod 0700 t/x
tar --numeric-owner --owner=0 --group=0 --no-recursion -C t -cf implied.tar a/b/c top
# here the parent x is in the archive (0700, uid 1000) but only after its child
tar --numeric-owner --owner=1000 --group=1000 --no-recursion -C t -czf nested.tar.gz x/y/deep x/y x
rm -rf t
